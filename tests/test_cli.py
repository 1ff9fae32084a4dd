"""The command line lists its subcommands and rejects bad input with a usable message."""
import subprocess
import sys

import pytest

from tbpr.cli import build_parser
from tbpr.config import parse_overrides


def _tbpr(*args):
    return subprocess.run([sys.executable, "-m", "tbpr.cli", *args], capture_output=True, text=True)


def test_help_lists_every_subcommand():
    proc = _tbpr("--help")
    out = proc.stdout + proc.stderr  # stdout is kept for the JSON answers of train / eval
    assert proc.returncode == 0
    for name in ("synth", "train", "eval", "bench", "reproduce", "summary", "params"):
        assert name in out


def test_unknown_subcommand_names_the_valid_ones():
    proc = _tbpr("fly")
    assert proc.returncode == 2 and "invalid choice: 'fly'" in proc.stderr and "train" in proc.stderr


def test_unknown_profile_is_rejected():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "ssan", "--profile", "huge"])


def test_set_parses_yaml_values():
    assert parse_overrides(["train.lr=1e-4", "use_mvnln=false", "sizes=[1, 2]"]) == {
        "train.lr": 1e-4, "use_mvnln": False, "sizes": [1, 2]}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


@pytest.mark.parametrize("command", ["synth", "bench"])
def test_pass_through_subcommands_show_their_own_help(command):
    proc = _tbpr(command, "--help")
    assert proc.returncode == 0 and "--profile" in proc.stdout + proc.stderr

"""Progress where nobody watches is one line per finished run (no bar frozen at 0 % in a saved
notebook); bars, where drawn, name the model and the overall count; a pretrained BERT loads its
unused pooler without transformers' LOAD REPORT."""
import re

import pytest

from tbpr import experiments, progress
from tbpr.data.text import minilm_path, pretrained_bert

import toymodel

ROWS = {"full": {}, "tiny": {"dim": 8}}


@pytest.fixture(autouse=True)
def _toy(monkeypatch):
    toymodel.install(monkeypatch)


def test_mode_follows_the_environment_and_refuses_unknown_values(monkeypatch):
    for value in progress.MODES:
        monkeypatch.setenv(progress.ENV, value)
        assert progress.mode() == value
    monkeypatch.setenv(progress.ENV, "loud")
    with pytest.raises(ValueError, match="TBPR_PROGRESS='loud'.*bars, lines, off"):
        progress.mode()
    monkeypatch.delenv(progress.ENV)
    assert progress.mode() == "lines"  # pytest captures stderr: not a terminal, not a kernel


def test_unwatched_batch_prints_one_line_per_finished_run_and_no_bar(smoke_root, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path))
    monkeypatch.setenv(progress.ENV, "lines")
    experiments.run_many("toy", ROWS, seeds=[0, 1], profile="paper", data_root=smoke_root, workers=1)
    err = capfd.readouterr().err
    finished = re.findall(r"^toy (\d)/4 runs: (\w+) seed (\d), R1 \d+\.\d, \d+ s$", err, re.M)
    assert finished == [("1", "full", "0"), ("2", "full", "1"), ("3", "tiny", "0"), ("4", "tiny", "1")], err
    assert "%|" not in err and "\r" not in err, "a progress bar was drawn"
    experiments.run_many("toy", ROWS, seeds=[0, 1], profile="paper", data_root=smoke_root, workers=1)
    assert capfd.readouterr().err.strip() == "toy: 4/4 runs from the cache"


def test_a_single_run_ends_with_one_line(smoke_root, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path))
    monkeypatch.setenv(progress.ENV, "lines")
    experiments.run("toy", "paper", data_root=smoke_root)
    assert re.fullmatch(r"toy paper seed 0: R1 \d+\.\d, \d+ s\n", capfd.readouterr().err)


def test_bars_name_the_model_and_the_overall_count(smoke_root, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path))
    monkeypatch.setenv(progress.ENV, "bars")
    experiments.run_many("toy", ROWS, seeds=[0], profile="paper", data_root=smoke_root, workers=1)
    err = capfd.readouterr().err
    for i in (1, 2):
        for epoch in (1, 2):  # the toy trains 2 epochs
            assert f"toy {i}/2 runs, epoch {epoch}/2" in err, err[-2000:]
    assert "toy 1/2 runs, images" in err  # the evaluation's bars too
    experiments.run("toy", "paper", {"dim": 4}, data_root=smoke_root)
    assert "toy, epoch 1/2" in capfd.readouterr().err


def test_off_prints_nothing(smoke_root, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path))
    monkeypatch.setenv(progress.ENV, "off")
    experiments.run_many("toy", ROWS, seeds=[0], profile="paper", data_root=smoke_root, workers=1)
    assert capfd.readouterr().err == ""


def test_pretrained_bert_loads_without_the_unused_pooler_report(capfd, caplog):
    # transformers writes the report through logging: to stderr, or only to the log records when an
    # earlier test in the session left its handler on another stream; both are checked
    from transformers import BertModel
    source = minilm_path()
    BertModel.from_pretrained(source, add_pooling_layer=False)  # what LGUR did: the report appears
    before = capfd.readouterr()
    shown = before.out + before.err + caplog.text
    assert "LOAD REPORT" in shown and "UNEXPECTED" in shown
    caplog.clear()
    model = pretrained_bert(source)
    after = capfd.readouterr()
    assert after.out + after.err + caplog.text == "", after.out + after.err + caplog.text
    assert model.pooler is None and not any(k.startswith("pooler.") for k in model.state_dict())
    assert pretrained_bert(source, pooler=True).pooler is not None

"""The repository's setup files agree with each other and with what the README promises."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    project = _pyproject()
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["offline"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) - {"-e ."} == wanted
    assert "python=3.11" in env["dependencies"]


def test_torch_is_pinned_to_the_releases_on_local_disk():
    deps = _pyproject()["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.14.1 torchvision==0.29.1" in makefile


def test_required_dependencies_are_declared():
    names = {re.split(r"[=<>]", d)[0] for d in _pyproject()["dependencies"]}
    required = {"torch", "torchvision", "timm", "transformers", "tokenizers", "safetensors", "nltk",
                "numpy", "matplotlib", "seaborn", "ipywidgets", "jupyterlab", "papermill", "nbval",
                "pytest", "tqdm", "pyyaml"}
    assert required <= names


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()

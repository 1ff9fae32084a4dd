"""Every notebook is in sync with its source, is committed without outputs or machine paths, starts
with the papermill parameters cell, executes headless at the smoke profile (papermill), and
re-executes under nbval with its deterministic cells (``# NBVAL_CHECK_OUTPUT``) printing the same."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
sys.path.insert(0, str(NB_DIR))
import build  # noqa: E402  (notebooks/build.py)

SOURCES = sorted((NB_DIR / "src").glob("[0-9][0-9]_*.py"))
PARAMETERS = ("profile", "dataset", "data_root", "seeds", "device", "out_dir")


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_is_built_from_its_source(src):
    ipynb = NB_DIR / f"{src.stem}.ipynb"
    assert ipynb.exists(), f"run: python notebooks/build.py {src.stem}"
    assert ipynb.read_text() == build.render(src), f"stale notebook; run: python notebooks/build.py {src.stem}"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs_or_machine_paths(src):
    text = (NB_DIR / f"{src.stem}.ipynb").read_text()
    cells = json.loads(text)["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in cells if c["cell_type"] == "code"), "committed with outputs; rebuild it"
    assert not re.search(r"(/home/|/root/|/Users/|/work/|/tmp/|[A-Z]:\\\\)", text), "absolute path"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_first_code_cell_holds_the_papermill_parameters(src):
    cells = json.loads(build.render(src))["cells"]
    first = next(c for c in cells if c["cell_type"] == "code")
    assert first["metadata"].get("tags") == ["parameters"]
    text = "".join(first["source"])
    for name in PARAMETERS:
        assert f"{name} =" in text, f"parameters cell lacks {name}"


def test_builder_round_trips_markdown_and_tags():
    nb = build.to_notebook('# %% [markdown]\n# # Title\n# text\n\n# %% tags=["parameters"]\nx = 1\n\n# %%\nprint(x)\n')
    kinds = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    assert kinds == [("markdown", "# Title\ntext"), ("code", "x = 1"), ("code", "print(x)")]
    assert nb["cells"][1]["metadata"]["tags"] == ["parameters"]


@pytest.mark.slow
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_executes_at_smoke_profile(src, tmp_path):
    import papermill
    start = time.perf_counter()
    papermill.execute_notebook(
        str(NB_DIR / f"{src.stem}.ipynb"), str(tmp_path / f"{src.stem}.ipynb"), cwd=str(NB_DIR),
        kernel_name="python3", progress_bar=False,
        parameters={"profile": "smoke", "out_dir": str(tmp_path / "figures")})
    elapsed = time.perf_counter() - start
    assert any((tmp_path / "figures").rglob("*.png")), "the notebook wrote no figure"
    print(f"{src.stem}: {elapsed:.0f} s")
    # nbval re-executes the papermill output (its training runs now come from the cache) and
    # compares the cells marked NBVAL_CHECK_OUTPUT with what papermill stored
    nbval = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         "--nbval-current-env", "--nbval-cell-timeout=600", str(tmp_path / f"{src.stem}.ipynb")],
        capture_output=True, text=True, cwd=tmp_path, env=os.environ.copy())
    assert nbval.returncode == 0, nbval.stdout[-3000:] + nbval.stderr[-2000:]

"""Every notebook is paired by jupytext with its percent-format source (``notebooks/jupytext.toml``),
is in sync with it, is committed without outputs or machine paths, starts with the papermill
parameters cell, executes headless at the smoke profile (papermill), and re-executes under nbval
with its deterministic cells (``# NBVAL_CHECK_OUTPUT``) printing the same."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.config import load_jupytext_config
from jupytext.paired_paths import paired_paths

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
SOURCES = sorted((NB_DIR / "src").glob("[0-9][0-9]_*.py"))
PARAMETERS = ("profile", "dataset", "data_root", "seeds", "device", "out_dir")
SYNC = "jupytext --sync notebooks/src/{}.py"


def cells(nb) -> list[tuple[str, str, list]]:
    """What a notebook is made of, without jupytext's or nbformat's bookkeeping (cell ids, metadata
    versions): each cell's type, source and tags."""
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]


def test_jupytext_pairs_each_notebook_with_its_source():
    for src in SOURCES:
        ipynb = NB_DIR / f"{src.stem}.ipynb"
        config = load_jupytext_config(str(ipynb))  # notebooks/jupytext.toml, found as Jupyter finds it
        assert config is not None, "no jupytext configuration beside the notebooks"
        formats = config.formats if isinstance(config.formats, str) else ",".join(config.formats)
        pairs = {Path(path).resolve(): fmt for path, fmt in paired_paths(str(ipynb), "ipynb", formats)}
        assert src.resolve() in pairs, f"{src} is not the jupytext pair of {ipynb}: {list(pairs)}"
        assert pairs[src.resolve()]["format_name"] == "percent"
    assert {p.stem for p in NB_DIR.glob("*.ipynb")} == {p.stem for p in SOURCES}, "a notebook without source"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_is_in_sync_with_its_source(src):
    ipynb = NB_DIR / f"{src.stem}.ipynb"
    assert ipynb.exists(), f"run: {SYNC.format(src.stem)}"
    committed = nbformat.read(ipynb, as_version=4)
    assert cells(committed) == cells(jupytext.read(src)), f"stale notebook; run: {SYNC.format(src.stem)}"
    # papermill starts the kernel the notebook names
    assert committed.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs_or_machine_paths(src):
    text = (NB_DIR / f"{src.stem}.ipynb").read_text()
    code = [c for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        "committed with outputs; clear them: jupyter nbconvert --clear-output --inplace notebooks/*.ipynb"
    assert not re.search(r"(/home/|/root/|/Users/|/work/|/tmp/|[A-Z]:\\\\)", text), "absolute path"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_first_code_cell_holds_the_papermill_parameters(src):
    first = next(c for c in jupytext.read(src).cells if c.cell_type == "code")
    assert first.metadata.get("tags") == ["parameters"]
    for name in PARAMETERS:
        assert f"{name} =" in first.source, f"parameters cell lacks {name}"


def test_percent_markers_read_as_markdown_and_tagged_cells():
    nb = jupytext.reads('# %% [markdown]\n# # Title\n# text\n\n# %% tags=["parameters"]\nx = 1\n\n# %%\nprint(x)\n',
                        fmt="py:percent")
    assert cells(nb) == [("markdown", "# Title\ntext", []), ("code", "x = 1", ["parameters"]),
                         ("code", "print(x)", [])]


@pytest.mark.slow
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_executes_at_smoke_profile(src, tmp_path):
    import papermill
    start = time.perf_counter()
    papermill.execute_notebook(
        str(NB_DIR / f"{src.stem}.ipynb"), str(tmp_path / f"{src.stem}.ipynb"), cwd=str(NB_DIR),
        progress_bar=False, parameters={"profile": "smoke", "out_dir": str(tmp_path / "figures")})
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

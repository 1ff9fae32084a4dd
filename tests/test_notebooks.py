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
    assert working_copy_problems(ipynb.read_text(), src) == []


MACHINE_PATH = re.compile(r"(/home/|/root/|/Users/|/work/|/tmp/|[A-Z]:\\\\)")
CLEAR = "clear them: jupyter nbconvert --clear-output --inplace notebooks/*.ipynb"


def stripped(notebook: dict) -> dict:
    """What a strip keeps: cells without outputs or execution counts, cell metadata but tags, notebook
    metadata but the kernelspec and jupytext's filter (what JupyterLab adds on save is dropped)."""
    cells = []
    for cell in notebook["cells"]:
        cell = {**cell, "metadata": {k: v for k, v in cell.get("metadata", {}).items() if k == "tags"}}
        if cell["cell_type"] == "code":
            cell.update(outputs=[], execution_count=None)
        cells.append(cell)
    meta = {k: v for k, v in notebook.get("metadata", {}).items() if k in ("kernelspec", "jupytext")}
    return {**notebook, "cells": cells, "metadata": meta}


def has_outputs(notebook: dict) -> bool:
    return any(c.get("outputs") or c.get("execution_count") is not None
               for c in notebook["cells"] if c["cell_type"] == "code")


def working_copy_problems(text: str, src: Path) -> list[str]:
    """Why the notebook ``text`` (as JupyterLab's autosave may leave it: outputs, counts, metadata)
    would not strip to the committed form of ``src``: stale cells, another kernel, machine paths."""
    clean = stripped(json.loads(text))
    problems = []
    if cells(nbformat.reads(json.dumps(clean), as_version=4)) != cells(jupytext.read(src)):
        problems.append(f"stale notebook; run: {SYNC.format(src.stem)}")
    if clean["metadata"].get("kernelspec", {}).get("name") != "python3":  # papermill starts the kernel it names
        problems.append("kernelspec is not python3")
    if MACHINE_PATH.search(json.dumps(clean)):
        problems.append("absolute path in a cell")
    return problems


def committed_text(path: Path) -> str | None:
    """The notebook as git would commit it (the index), None outside a git checkout."""
    try:
        proc = subprocess.run(["git", "show", f":{path.relative_to(ROOT).as_posix()}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_strips_to_its_source_without_machine_paths(src):
    """Outputs an interactive run saved into the working copy are tolerated (a strip removes them);
    the copy git commits has none."""
    ipynb = NB_DIR / f"{src.stem}.ipynb"
    assert working_copy_problems(ipynb.read_text(), src) == []
    committed = committed_text(ipynb)
    if committed is not None:
        assert not has_outputs(json.loads(committed)), f"staged with outputs; {CLEAR} (then git add)"
        assert not MACHINE_PATH.search(committed), "absolute path in the staged notebook"


def test_outputs_of_an_interactive_run_are_tolerated_but_stale_cells_are_not():
    src = NB_DIR / "src" / "02_ssan.py"
    notebook = json.loads((NB_DIR / "02_ssan.ipynb").read_text())
    for n, cell in enumerate(c for c in notebook["cells"] if c["cell_type"] == "code"):  # as autosave leaves it
        cell.update(execution_count=n + 1, outputs=[
            {"output_type": "stream", "name": "stderr", "text": ["synthpedes (/root/.cache/tbpr/quick)\n"]},
            {"output_type": "display_data", "data": {"text/plain": ["HBox(children=(FloatProgress(value=0.0),))"]},
             "metadata": {}}])
        cell["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    notebook["metadata"].update(widgets={"application/vnd.jupyter.widget-state+json": {"state": {}}},
                                language_info={"name": "python", "version": "3.11.9"})
    assert has_outputs(notebook)
    assert working_copy_problems(json.dumps(notebook), src) == []
    code = next(c for c in notebook["cells"] if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []))
    code["source"] = code["source"] + ["\nprint('edited in JupyterLab, not in the source')"]
    assert working_copy_problems(json.dumps(notebook), src) == [f"stale notebook; run: {SYNC.format('02_ssan')}"]
    code["source"] = ["data_root = '/root/data'\n"]
    assert "absolute path in a cell" in working_copy_problems(json.dumps(notebook), src)


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

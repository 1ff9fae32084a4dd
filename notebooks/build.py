"""Build ``notebooks/NN_name.ipynb`` from its percent-format source ``notebooks/src/NN_name.py``.

Cells start with ``# %%`` (code) or ``# %% [markdown]`` (markdown, each line prefixed ``# ``);
``# %% tags=["parameters"]`` marks the papermill parameters cell. Sources are the thing to edit and
review; ``tests/test_notebooks.py`` checks every .ipynb is in sync with its source.

    python notebooks/build.py            # rebuild all
    python notebooks/build.py 02_ssan    # rebuild one
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
CELL = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def _cell(kind: str, lines: list[str], tags: list[str], index: int) -> dict:
    while lines and not lines[-1].strip():
        lines.pop()
    if kind == "markdown":
        lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
    source = [ln + "\n" for ln in lines[:-1]] + lines[-1:]
    cell = {"cell_type": kind, "id": f"cell-{index}", "metadata": {"tags": tags} if tags else {},
            "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def to_notebook(text: str) -> dict:
    cells, kind, tags, lines = [], None, [], []
    for line in text.splitlines():
        m = CELL.match(line)
        if m:
            if kind is not None:
                cells.append(_cell(kind, lines, tags, len(cells)))
            kind = "markdown" if m["md"] else "code"
            tags = json.loads(m["tags"]) if m["tags"] else []
            lines = []
        elif kind is not None:
            lines.append(line)
    if kind is not None:
        cells.append(_cell(kind, lines, tags, len(cells)))
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(src: Path) -> str:
    return json.dumps(to_notebook(src.read_text()), indent=1) + "\n"


def build(names: list[str] | None = None) -> list[Path]:
    written = []
    for src in sorted((HERE / "src").glob("*.py")):
        if names and src.stem not in names:
            continue
        out = HERE / f"{src.stem}.ipynb"
        out.write_text(render(src))
        written.append(out)
    return written


if __name__ == "__main__":
    for path in build(sys.argv[1:] or None):
        print("wrote", path)

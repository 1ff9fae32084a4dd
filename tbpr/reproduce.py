"""Batch reproduction: execute every notebook headless with papermill at one profile.

Executed notebooks go to ``notebooks/executed/``, figures and tables to ``figures/<paper>/``.
Training runs are cached (``tbpr.experiments``), so an interrupted reproduction resumes cheaply.
"""
from __future__ import annotations

import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# DESIGN.md's notebook order: the data tour, the papers in the order they appeared, then the rest.
EXPECTED = ("00_synthpedes", "01_mia", "02_ssan", "03_lgur", "04_ivt", "05_cada",
            "06_comparison", "07_explorer")


def notebooks(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))


def missing(directory: Path) -> list[str]:
    present = {p.stem for p in notebooks(directory)}
    return [name for name in EXPECTED if name not in present]


def run_notebooks(profile: str = "quick", *, only: list[str] | None = None,
                  notebook_dir: Path | None = None, out_dir: Path | None = None,
                  figures_dir: Path | None = None, device: str = "cpu") -> dict[str, float]:
    """Execute the notebooks (all, or those whose name starts with one of ``only``)."""
    import papermill

    notebook_dir = Path(notebook_dir or REPO / "notebooks")
    out_dir = Path(out_dir or notebook_dir / "executed")
    figures_dir = Path(figures_dir or REPO / "figures").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = [p for p in notebooks(notebook_dir) if not only or any(p.stem.startswith(o) for o in only)]
    if not chosen:
        raise SystemExit(f"no notebooks matching {only or 'NN_*.ipynb'} in {notebook_dir}")
    for name in missing(notebook_dir):
        print(f"[tbpr reproduce] notebook {name}.ipynb does not exist yet: skipped")
    times = {}
    for nb in chosen:
        print(f"[tbpr reproduce] {nb.name} at profile={profile}", flush=True)
        start = time.perf_counter()
        papermill.execute_notebook(
            str(nb), str(out_dir / nb.name), cwd=str(notebook_dir), kernel_name="python3",
            parameters={"profile": profile, "out_dir": str(figures_dir), "device": device},
            progress_bar=False)
        times[nb.stem] = time.perf_counter() - start
        print(f"[tbpr reproduce] {nb.name} done in {times[nb.stem]:.0f} s", flush=True)
    return times

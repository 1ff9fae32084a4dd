"""Batch reproduction: execute every notebook headless with papermill at one profile.

Executed notebooks go to ``notebooks/executed/`` (the quick ones are committed, for reading with their
outputs; ``publish`` readies them: no widget state, PNGs at most ``MAX_IMAGE_WIDTH`` px wide, paths
relative), figures and tables to ``figures/<paper>/``. Training runs are cached
(``tbpr.experiments``), so an interrupted reproduction resumes cheaply.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import time
from pathlib import Path

from PIL import Image

from . import progress
from .cache import cache_dir, code_version
from .experiments import RUN_LOG, default_seeds, read_run_log
from .papers import MODEL_NAMES
from .summary import write_summary

REPO = Path(__file__).resolve().parents[1]
# DESIGN.md's notebook order: the data tour, the papers in the order they appeared, then the rest.
EXPECTED = ("00_synthpedes", "01_mia", "02_ssan", "03_lgur", "04_ivt", "05_cada", "06_irra",
            "07_comparison", "08_explorer")


# `large`: the GPU reproduction, paper-size models on SynthPedes at CUHK-PEDES size (experiments'
# DATA_PROFILE renders the large split for the paper profile)
PROFILE_ALIASES = {"large": "paper"}


def _profile_folder(profile: str) -> str:
    """The committed ``figures/`` (and ``notebooks/executed/``) hold the quick run; any other profile
    gets its own subfolder, so a smoke tour or a GPU run never overwrites it."""
    return "" if profile == "quick" else profile


def figures_dir_for(profile: str) -> Path:
    return REPO / "figures" / _profile_folder(profile)


def notebooks(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))


def missing(directory: Path) -> list[str]:
    present = {p.stem for p in notebooks(directory)}
    return [name for name in EXPECTED if name not in present]


def notebook_code_version(stem: str) -> str:
    """The code a notebook's numbers depend on: its paper's model for 01-05 (``code_version``), every
    model for the others (07/08 compare every model; 00 is cheap enough to share that rule)."""
    topic = stem.split("_", 1)[-1]
    if topic in MODEL_NAMES:
        return code_version(topic)
    joined = "".join(code_version(m) for m in sorted(MODEL_NAMES))
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def _already_done(nb: Path, executed: Path, profile: str, seeds=None, *, version: str) -> bool:
    """An executed copy at this profile, newer than the notebook, that finished without error on the
    library code ``version`` (a library change re-executes it even when the notebook is unchanged)."""
    if not executed.exists() or executed.stat().st_mtime < nb.stat().st_mtime:
        return False
    metadata = json.loads(executed.read_text()).get("metadata", {})
    meta = metadata.get("papermill", {})
    params = meta.get("parameters", {})
    return (params.get("profile") == profile and params.get("seeds") == (list(seeds) if seeds else None)
            and not meta.get("exception") and metadata.get("tbpr", {}).get("code_version") == version)


def _stamp_code_version(executed: Path, version: str) -> None:
    notebook = json.loads(executed.read_text())
    notebook.setdefault("metadata", {})["tbpr"] = {"code_version": version}
    executed.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "[an interactive widget: open this notebook from notebooks/ in JupyterLab and run it to use it]"
MAX_IMAGE_WIDTH = 1400  # px: a figure stays sharp on a wide screen; the inline backend's larger ones shrink
TEXT_KEYS = ("text/plain", "text/html", "text/markdown")
PROGRESS_TEXT = re.compile(r"\d+%\|")  # tqdm's text form: " 40%|####      | 4/10 [...]"


def publish(executed: Path, repo: Path = REPO) -> None:
    """Ready an executed notebook for reading in the repository: widget state dropped, each widget's
    view replaced by a note (nothing renders it without a kernel) and widget progress bars removed
    (they would show the state they were saved in), PNGs wider than ``MAX_IMAGE_WIDTH``
    scaled down, and this machine's paths written as ``.`` (the repository) and ``~`` (home)."""
    notebook = json.loads(Path(executed).read_text())
    notebook.get("metadata", {}).pop("widgets", None)
    places = _machine_places(repo)
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [_published_output(o, places) for o in cell.get("outputs", [])
                               if not _progress_bar(o)]
            if "injected-parameters" in cell.get("metadata", {}).get("tags", []):  # papermill's paths
                cell["source"] = _relative(cell["source"], places)
    papermill_meta = notebook.get("metadata", {}).get("papermill", {})
    for key in ("input_path", "output_path"):
        if isinstance(papermill_meta.get(key), str):
            papermill_meta[key] = _relative(papermill_meta[key], places)
    parameters = papermill_meta.get("parameters", {})
    for key, value in parameters.items():
        if isinstance(value, str):
            parameters[key] = _relative(value, places)
    Path(executed).write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


def _machine_places(repo: Path) -> list[tuple[str, str]]:
    """This machine's folders and how a reader sees them: the repository as ``.``, a run cache
    outside home as ``$TBPR_CACHE``, home as ``~``."""
    places = [(str(Path(repo).resolve()), ".")]
    cache, home = cache_dir().resolve(), Path.home().resolve()
    if home not in cache.parents:
        places.append((str(cache), "$TBPR_CACHE"))
    return places + [(str(home), "~")]


def _progress_bar(output: dict) -> bool:
    """A tqdm bar drawn as a widget (a library's own, not tbpr's): saved, it shows a frozen state."""
    data = output.get("data", {})
    text = data.get("text/plain", "")
    return WIDGET_VIEW in data and bool(PROGRESS_TEXT.search("".join(text) if isinstance(text, list) else text))


def _published_output(output: dict, places) -> dict:
    if "text" in output:  # a stream
        output["text"] = _relative(output["text"], places)
    if "traceback" in output:
        output["traceback"] = [_relative(line, places) for line in output["traceback"]]
    data = output.get("data")
    if not data:
        return output
    if WIDGET_VIEW in data:
        output["data"] = data = {"text/plain": WIDGET_NOTE}
        output["metadata"] = {}
    for key in TEXT_KEYS:
        if key in data:
            data[key] = _relative(data[key], places)
    if "image/png" in data:
        data["image/png"], scale = _shrunk_png(data["image/png"])
        size = output.get("metadata", {}).get("image/png", {})
        for side in ("width", "height"):
            if isinstance(size.get(side), (int, float)):
                size[side] = round(size[side] * scale)
    return output


def _relative(text, places):
    """``text`` (a string or notebook lines) with each absolute folder of ``places`` replaced."""
    if isinstance(text, list):
        return [_relative(line, places) for line in text]
    for absolute, short in places:
        text = text.replace(absolute + "/", short + "/").replace(absolute, short)
    return text


def _shrunk_png(encoded) -> tuple[str, float]:
    """A base64 PNG at most ``MAX_IMAGE_WIDTH`` wide (Lanczos), and the scale applied."""
    raw = base64.b64decode("".join(encoded) if isinstance(encoded, list) else encoded)
    with Image.open(io.BytesIO(raw)) as image:
        if image.width <= MAX_IMAGE_WIDTH:
            return ("".join(encoded) if isinstance(encoded, list) else encoded), 1.0
        scale = MAX_IMAGE_WIDTH / image.width
        small = image.resize((MAX_IMAGE_WIDTH, max(1, round(image.height * scale))), Image.LANCZOS)
        buffer = io.BytesIO()
        small.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode() + "\n", scale


@contextlib.contextmanager
def run_log(path: Path):
    """Every run started in this block (the kernel's and its workers') logs to ``path``
    (``tbpr.experiments.RUN_LOG``), emptied first; yields the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    before = os.environ.get(RUN_LOG)
    os.environ[RUN_LOG] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(RUN_LOG, None)
        else:
            os.environ[RUN_LOG] = before


def _write_provenance(figures_dir: Path, nb: Path, profile: str, seconds: float, seeds,
                      runs: dict, version: str) -> None:
    """``run.md``: when and how long, and what the runs did, apart: trained (with their training time),
    evaluated again from a cached checkpoint, read from the run cache — a re-execution that read its
    runs from the cache is minutes faster than the reproduction it re-draws."""
    folder = figures_dir / nb.stem.split("_", 1)[1]
    if folder.is_dir():
        (folder / "run.md").write_text(
            f"`{nb.name}` executed at profile `{profile}`, seeds {list(seeds or default_seeds(profile))} "
            f"(headline rows: the notebook's headline_seeds), on {time.strftime('%Y-%m-%d')} in "
            f"{seconds / 60:.1f} min wall: {runs['trained']} run(s) trained ({runs['train_seconds'] / 60:.1f} min "
            f"of training, summed over parallel workers), {runs['evaluated']} evaluated again from a cached "
            f"checkpoint, {runs['cached']} read from the run cache (2-core CPU unless stated; code version "
            f"`{version}`).\n")


@contextlib.contextmanager
def unwatched_kernel():
    """Kernels started in this block report progress in lines (``tbpr.progress``): a papermill kernel
    looks like JupyterLab's, but nobody watches its bars and they would be saved frozen at 0 %.
    A ``$TBPR_PROGRESS`` set by the caller is kept."""
    before = os.environ.get(progress.ENV)
    os.environ.setdefault(progress.ENV, "lines")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(progress.ENV, None)


def run_notebooks(profile: str = "quick", *, only: list[str] | None = None,
                  notebook_dir: Path | None = None, out_dir: Path | None = None,
                  figures_dir: Path | None = None, device: str = "cpu",
                  force: bool = False, seeds: list[int] | None = None) -> dict[str, float]:
    """Execute the notebooks (all, or those whose name starts with one of ``only``) in order.

    ``profile`` is smoke, quick, paper or large (paper-size models on the large SynthPedes; on a GPU
    pass ``device="cuda"``). Figures go to ``figures/`` at quick, ``figures/<profile>/`` otherwise
    (executed notebooks likewise under ``notebooks/executed/``).
    A notebook already executed at ``profile`` after its last change and on the current library code
    (``notebook_code_version``) is skipped unless ``force``;
    training runs are cached, so a re-executed notebook only computes what changed. ``seeds``
    overrides the notebooks' default (three at quick). Ends by rewriting ``figures/summary.md``.
    """
    import papermill  # here, not at the top: 1.2 s to import, and only a reproduction needs it

    figures_dir = Path(figures_dir or figures_dir_for(profile)).resolve()
    notebook_dir = Path(notebook_dir or REPO / "notebooks")
    out_dir = Path(out_dir or notebook_dir / "executed" / _profile_folder(profile))
    profile = PROFILE_ALIASES.get(profile, profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = [p for p in notebooks(notebook_dir) if not only or any(p.stem.startswith(o) for o in only)]
    if not chosen:
        raise SystemExit(f"no notebooks matching {only or 'NN_*.ipynb'} in {notebook_dir}")
    for name in missing(notebook_dir):
        print(f"[tbpr reproduce] notebook {name}.ipynb does not exist yet: skipped")
    times = {}
    overall = progress.bar(chosen, desc=f"reproduce ({profile})", unit="notebook")
    for nb in overall:
        overall.set_postfix_str(nb.stem)
        version = notebook_code_version(nb.stem)
        if not force and _already_done(nb, out_dir / nb.name, profile, seeds, version=version):
            overall.write(f"[tbpr reproduce] {nb.name}: already executed at {profile} on this code, "
                          "skipped (--force re-executes)")
            continue
        start = time.perf_counter()
        with unwatched_kernel(), run_log(cache_dir() / "reproduce" / f"{nb.stem}.runs.jsonl") as log:
            papermill.execute_notebook(
                str(nb), str(out_dir / nb.name), cwd=str(notebook_dir), kernel_name="python3",
                parameters={"profile": profile, "out_dir": str(figures_dir), "device": device,
                            **({"seeds": list(seeds)} if seeds else {})},
                progress_bar=False)
        _stamp_code_version(out_dir / nb.name, version)
        publish(out_dir / nb.name)
        times[nb.stem] = time.perf_counter() - start
        _write_provenance(figures_dir, nb, profile, times[nb.stem], seeds, read_run_log(log), version)
        overall.write(f"[tbpr reproduce] {nb.name} done in {times[nb.stem]:.0f} s")
    print(f"[tbpr reproduce] summary: {write_summary(figures_dir)}")
    return times

"""How work reports its progress: tqdm bars when someone watches (a terminal, a Jupyter kernel with
its frontend), one line per finished run when nobody does (papermill, a log file). A bar drawn where
nobody watches is saved frozen ("0 %" in an executed notebook, ``\\r`` soup in a log).

``$TBPR_PROGRESS`` = ``bars`` | ``lines`` | ``off`` overrides the guess; ``tbpr reproduce`` sets
``lines`` for the kernels it starts (a papermill kernel cannot tell it has no frontend).

Bars opened inside ``label("ssan 3/8 runs")`` carry that label: "ssan 3/8 runs, epoch 2/8".
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys

from tqdm.auto import tqdm

ENV = "TBPR_PROGRESS"
MODES = ("bars", "lines", "off")
_LABEL = contextvars.ContextVar("tbpr_progress_label", default="")


def mode() -> str:
    """``bars``, ``lines`` or ``off``: ``$TBPR_PROGRESS``, else bars when watched, else lines."""
    chosen = os.environ.get(ENV, "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"${ENV}={chosen!r}: choose one of {', '.join(MODES)}")
        return chosen
    return "bars" if watched() else "lines"


def watched() -> bool:
    """stderr is a terminal, or this is an IPython kernel (JupyterLab draws bars as widgets)."""
    return in_kernel() or bool(getattr(sys.stderr, "isatty", lambda: False)())


def in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel")


@contextlib.contextmanager
def label(text: str):
    """Bars opened in this block are named ``text`` first (the model and the overall count)."""
    token = _LABEL.set(text)
    try:
        yield
    finally:
        _LABEL.reset(token)


def current_label() -> str:
    return _LABEL.get()


def bar(iterable=None, *, desc: str, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar named ``<label>, <desc>``; disabled unless ``enabled`` and the mode is bars."""
    named = f"{_LABEL.get()}, {desc}" if _LABEL.get() else desc
    return tqdm(iterable, desc=named, disable=not enabled or mode() != "bars", **kwargs)


def line(text: str, enabled: bool = True) -> None:
    """One line, in lines mode only (bars say the same thing while they run): on stderr, or in a
    kernel on stdout (a notebook shows stderr as if something went wrong)."""
    if enabled and mode() == "lines":
        print(text, file=sys.stdout if in_kernel() else sys.stderr, flush=True)

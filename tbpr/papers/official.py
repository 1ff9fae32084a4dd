"""Checkpoints released with the official codes, evaluated with tbpr's metrics.

Each paper that has released weights keeps a ``convert.py`` beside its model: ``looks_official(ckpt)``
recognises the code's checkpoint by its keys, ``overrides_from(ckpt)`` reads the sizes that depend on
the training data (identity count, vocabulary rows), ``from_official(ckpt, model)`` renames (and,
where our layout differs, reshapes) its tensors onto ours, and ``BUILD_WITHOUT_INIT`` lists the
fields that would load initial weights which the checkpoint replaces anyway. The checks here are strict: every
tensor of the checkpoint is used or dropped by a named rule, every tensor of our model is filled
(except the ``optional`` ones the code never saved, such as training-only ID classifiers), and
every shape matches; any other outcome is a one-line error.
"""
from __future__ import annotations

import importlib
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ..config import apply_overrides
from . import paper_module

SHOWN = 4  # key names quoted in an error before "... (N in all)"
# numpy scalars (an epoch's score saved as np.float64) unpickle through these; no other class does
_NUMPY_NUMBERS = [(getattr(np, "_core", None) or np.core).multiarray.scalar, np.dtype,
                  *{type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)}]


def converter(name: str):
    """``tbpr.papers.<name>.convert``; a one-line error where the authors released no weights."""
    paper_module(name)  # a known paper
    try:
        return importlib.import_module(f"tbpr.papers.{name}.convert")
    except ModuleNotFoundError as err:
        if err.name != f"tbpr.papers.{name}.convert":
            raise
        raise ValueError(f"{name}: no converter for official checkpoints (its authors released no weights "
                         "tbpr can map); give a model.safetensors written by tbpr") from None


def is_pytorch_file(path) -> bool:
    """A ``torch.save`` file (zip or legacy pickle), not a tbpr ``model.safetensors``."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: an 8-byte header length (its first byte may be 0x80), then JSON
        return False
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"


def read_official(path) -> dict:
    """A PyTorch checkpoint of an official code, read without running its pickled code
    (``weights_only``): tensors, numbers, strings and containers of them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_NUMPY_NUMBERS):  # IVT saves its score as a numpy float
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {path} holds Python objects beyond tensors and numbers, which tbpr does "
                         "not unpickle; re-save its state dicts alone (torch.save({'model': sd}, path))"
                         ) from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} is a {type(ckpt).__name__}, not a dict of state dicts")
    return ckpt


def flatten(ckpt: dict, sections: tuple[str, ...]) -> tuple[dict, list[str]]:
    """``{section.key: tensor}`` of the state dicts under ``sections`` and the other top-level
    entries that are not tensors (epoch, score: metadata, reported as ignored)."""
    flat, metadata = {}, []
    for key, value in ckpt.items():
        if key in sections and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, torch.Tensor) and value.dim() > 0:
            flat[key] = value
        else:
            metadata.append(key)
    return flat, metadata


def rename(state: dict, rules: list[tuple[str, str | None]]) -> tuple[dict, list[str]]:
    """Apply the first matching ``(regex, replacement)`` rule to each key; ``None`` drops the tensor
    knowingly (momentum copies, queues, tied duplicates). Keys no rule matches are returned unused."""
    out, unused = {}, []
    for key, value in state.items():
        for pattern, repl in rules:
            if re.search(pattern, key):
                if repl is not None:
                    out[re.sub(pattern, repl, key)] = value
                break
        else:
            unused.append(key)
    return out, unused


def _names(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:SHOWN]) + (f" ... ({len(keys)} in all)" if len(keys) > SHOWN else "")


def check_complete(model: torch.nn.Module, state: dict, unused: list[str], source: str,
                   optional: tuple[str, ...] = ()) -> None:
    """One line naming what does not fit: unused official keys, our tensors left unfilled (except
    those matching ``optional`` regexes), differing shapes."""
    ours = model.state_dict()
    problems = []
    if unused:
        problems.append(f"unused official keys: {_names(unused)}")
    missing = [k for k in ours if k not in state and not any(re.search(p, k) for p in optional)]
    if missing:
        problems.append(f"tbpr tensors it does not fill: {_names(missing)}")
    extra = [k for k in state if k not in ours]
    if extra:
        problems.append(f"converted keys tbpr's model lacks: {_names(extra)}")
    shapes = [f"{k} {tuple(v.shape)} vs ours {tuple(ours[k].shape)}" for k, v in state.items()
              if k in ours and tuple(v.shape) != tuple(ours[k].shape)]
    if shapes:
        problems.append(f"shapes differ: {'; '.join(shapes[:SHOWN])}" + (f" ({len(shapes)} in all)"
                                                                        if len(shapes) > SHOWN else ""))
    if problems:
        raise ValueError(f"{source}: does not map onto tbpr's {model.name} at this profile: " + "; ".join(problems)
                         + "; evaluate it with --profile official (the code's sizes)")


def load_official(name: str, cfg, path, **options):
    """tbpr's ``name`` built from ``cfg`` (its initial weights not loaded: the checkpoint replaces
    them) holding the released checkpoint at ``path``; ``options`` go to the paper's converter
    (SSAN: ``vocab``, the code's word list)."""
    conv = converter(name)
    ckpt = read_official(path)
    if not conv.looks_official(ckpt):
        raise ValueError(f"checkpoint {path} is neither a tbpr model.safetensors nor the official {name} code's "
                         f"checkpoint (top-level keys: {_names(map(str, ckpt))})")
    cfg = apply_overrides(cfg, {**conv.BUILD_WITHOUT_INIT, **conv.overrides_from(ckpt)})
    options = {k: v for k, v in options.items() if v is not None}
    if options and not hasattr(conv, "build"):
        raise ValueError(f"{name}: a released checkpoint takes no {sorted(options)} (only SSAN's needs the "
                         "code's word list)")
    model = conv.build(cfg, **options) if hasattr(conv, "build") else paper_module(name).MODEL(cfg)
    state = conv.from_official(ckpt, model, source=str(path))
    model.load_state_dict(state, strict=False)  # check_complete has vouched for every tensor
    return model.eval()

"""The zoo: small backbones pre-trained here, offline, playing the roles ImageNet / BERT weights play
for the papers (DESIGN.md, "Warm starts"). Each member ships as ``weights/<name>.safetensors`` beside
``weights/<name>.json``, its manifest: the recipe that made it (``tbpr pretrain <name>``), the corpus
(SynthPedes profile ``pretrain``, disjoint from every benchmark split), steps, wall time, sha256.

A config field that takes a timm / transformers name or a local path also takes ``zoo:<name>``:

    state = load("zoo:vit-s")          # checksum-verified state dict (timm ViT key layout)
    resolve("zoo:vit-s")               # the verified file's path; other sources come back unchanged

This module is loading only (the backbones floor); the pre-training recipes live in
``tbpr.pretrain`` (above the papers, which they build).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

WEIGHTS = Path(__file__).parent / "weights"
PREFIX = "zoo:"


class ZooError(FileNotFoundError):
    """A zoo file that is missing or does not match its manifest (one line, naming file and fix)."""


def is_zoo(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def _name(source: str) -> str:
    return source[len(PREFIX):] if is_zoo(source) else source


def available() -> list[str]:
    """Names of the members whose manifest ships in the repository."""
    return sorted(p.stem for p in WEIGHTS.glob("*.json"))


def manifest(source: str) -> dict:
    name = _name(source)
    path = WEIGHTS / f"{name}.json"
    if not path.exists():
        known = ", ".join(available()) or "none"
        raise ZooError(f"{path}: no zoo member {name!r} (shipped: {known}); "
                       f"create it with `tbpr pretrain {name}`")
    return json.loads(path.read_text())


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def path(source: str) -> Path:
    """The member's weights file, after checking it against the sha256 in its manifest."""
    name = _name(source)
    meta = manifest(name)
    file = WEIGHTS / meta["file"]
    if not file.exists():
        raise ZooError(f"{file}: zoo weights missing; re-create them with `tbpr pretrain {name}`")
    got = sha256(file)
    if got != meta["sha256"]:
        raise ZooError(f"{file}: sha256 {got[:12]}… does not match its manifest ({meta['sha256'][:12]}…); "
                       f"re-create it with `tbpr pretrain {name}`")
    return file


def resolve(source):
    """``zoo:<name>`` -> the verified file's path (str); anything else unchanged."""
    return str(path(source)) if is_zoo(source) else source


def load(source: str, grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """The member's state dict. With ``grid`` (rows, cols) a ViT's ``pos_embed`` is resized
    bilinearly from the grid it was pre-trained at (manifest ``grid``) to ``grid``."""
    state = load_file(str(path(source)))
    own = manifest(source).get("grid")
    if grid is not None and own is not None and tuple(own) != tuple(grid) and "pos_embed" in state:
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], tuple(own), tuple(grid))
    return state


def resize_pos_embed(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """[1, 1 + h*w, D] -> [1, 1 + H*W, D]: the class row kept, the h×w grid resized bilinearly."""
    cls, grid = pos[:, :1], pos[:, 1:].reshape(1, *old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bilinear", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).flatten(1, 2)], 1)


def members(config) -> list[str]:
    """Every ``zoo:<name>`` anywhere in ``config`` (nested dicts / lists), in order of appearance."""
    found: list[str] = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif is_zoo(v) and v not in found:
            found.append(v)

    walk(config)
    return found


def fingerprints(config) -> dict[str, str]:
    """``{"zoo:<name>": sha256}`` for every zoo member in ``config``, so that a run's cache key
    changes when a member is re-created."""
    return {name: sha256(path(name)) for name in members(config)}

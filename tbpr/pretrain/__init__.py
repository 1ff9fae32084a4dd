"""Recipes of the zoo members: ``tbpr pretrain [NAME|all] [--profile smoke]`` re-creates a member
from the recipe recorded here and writes ``tbpr/zoo/weights/<name>.safetensors`` + its manifest.

A recipe is data (``MEMBERS``: name -> dict with a ``kind``, a ``role``, the corpus, steps, ...); its
``kind`` names the trainer (``TRAINERS``), a function ``(name, recipe, seed, progress) -> (state dict,
manifest fields)`` in the module of that kind of member (``vision``: image-only members), which seeds
itself (``common.seeded``). This driver times and writes: the weights as safetensors and the manifest with the recipe, the corpus,
wall time and sha256 (tbpr/zoo/__init__.py checks it on every load).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..cache import cache_dir
from ..zoo import WEIGHTS, sha256
from . import aligned, text, vision

MEMBERS = {**vision.MEMBERS, **text.MEMBERS, **aligned.MEMBERS}
TRAINERS = {**vision.TRAINERS, **text.TRAINERS, **aligned.TRAINERS}
SMOKE = dict(corpus=("pretrain-smoke", 0), steps=4, batch_size=16, warmup=1)  # seconds, for tests
RECIPE_FIELDS = ("steps", "batch_size", "lr", "weight_decay", "warmup")


def pretrain(name: str, profile: str = "full", out: Path | None = None, seed: int = 0,
             progress: bool = True) -> dict:
    """Train member ``name`` and write ``<out>/<name>.safetensors`` + ``<name>.json``; the manifest."""
    if name not in MEMBERS:
        raise ValueError(f"unknown zoo member {name!r}; choose one of {sorted(MEMBERS)} or all")
    recipe = {**MEMBERS[name], **(SMOKE if profile == "smoke" else {})}
    out = Path(out) if out else (WEIGHTS if profile == "full" else cache_dir() / "zoo-smoke")
    out.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.time(), time.process_time()
    state, fields = TRAINERS[recipe["kind"]](name, recipe, seed, progress)
    train_seconds, cpu_seconds = time.time() - t0, time.process_time() - cpu0
    file = out / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file), metadata={"name": name})
    meta = {"name": name, "file": file.name, "sha256": sha256(file), "role": recipe["role"],
            "kind": recipe["kind"], "profile": profile, **fields,
            "recipe": {k: recipe[k] for k in RECIPE_FIELDS if k in recipe}, "seed": seed,
            "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
            "threads": torch.get_num_threads(), "wall_seconds": round(time.time() - t0, 1),
            "torch": torch.__version__, "bytes": file.stat().st_size}
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tbpr pretrain", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help=f"a zoo member ({', '.join(sorted(MEMBERS))}) or all")
    ap.add_argument("--profile", default="full", choices=("full", "smoke"),
                    help="smoke: a few steps on a tiny corpus, written to --out (default: the cache)")
    ap.add_argument("--out", default=None, help="folder for the weights + manifest")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    names = sorted(MEMBERS) if args.name == "all" else [args.name]
    for name in names:
        meta = pretrain(name, args.profile, args.out, args.seed, progress=sys.stderr.isatty())
        print(json.dumps({k: meta[k] for k in ("name", "file", "sha256", "train_seconds", "wall_seconds",
                                               "final_loss", "bytes") if k in meta}))
    return 0

"""The contract every paper model fulfils, so one engine, one evaluator and one experiment runner
serve all five papers.

Training batch (built by ``tbpr.data.datasets``)::

    {"images":   FloatTensor [B, 3, H, W]  (or [B, V, 3, H, W] when cfg.data.n_views = V > 1),
     "pids":     LongTensor  [B]           training identity in 0..C-1,
     "captions": list[str]   length B      raw caption text (the model tokenizes it),
     "image_idx": LongTensor [B]           index of the image in its split,
     "caption_idx": LongTensor [B]}        index of the caption in its split

A model implements:
- ``training_step(batch) -> dict``: ``{"loss": scalar, "<name>": scalar, ...}`` (parts are logged).
- ``encode_images(images) -> features`` and ``encode_texts(captions: list[str]) -> features``:
  a tensor or a dict of tensors with the batch on dim 0 (the evaluator concatenates them).
- ``similarity(text_feats, image_feats) -> [n_text, n_image]`` similarity (higher = closer).
- optionally ``rerank(text_feats, image_feats, topk_index) -> [n_text, k]`` extra scores for the
  top-k gallery images of each query (cross-encoders: CADA, MIA).
- ``param_groups()``: parameter groups with ``lr_mult`` (the engine multiplies the base lr).
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn

_CHECKPOINT_FOLLOWS = contextvars.ContextVar("tbpr_checkpoint_follows", default=False)


@contextlib.contextmanager
def checkpoint_follows():
    """Models built inside may skip initialisation work that a checkpoint is about to replace; a
    model opts in by checking ``pretrained_init_wanted()``. Only IVT does so far (it skips its
    pre-training stage); the others still load their hub weights, which costs time, not results."""
    token = _CHECKPOINT_FOLLOWS.set(True)
    try:
        yield
    finally:
        _CHECKPOINT_FOLLOWS.reset(token)


def pretrained_init_wanted() -> bool:
    return not _CHECKPOINT_FOLLOWS.get()


class TBPRModel(nn.Module):
    """Base class: stores the config and provides default parameter groups."""

    name: str = "base"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        # DistributedDataParallel wraps forward(), so training goes through it.
        return self.training_step(batch)

    def encode_images(self, images: torch.Tensor):
        raise NotImplementedError

    def encode_texts(self, captions: list[str]):
        raise NotImplementedError

    def similarity(self, text_feats, image_feats) -> torch.Tensor:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """Groups by ``cfg.train.lr_mult`` (parameter-name prefix -> multiplier); the rest at 1×."""
        mults = dict(getattr(self.cfg.train, "lr_mult", {}) or {})
        groups: dict[float, list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            mult = next((m for prefix, m in mults.items() if name.startswith(prefix)), 1.0)
            groups.setdefault(float(mult), []).append(p)
        return [{"params": ps, "lr_mult": m} for m, ps in groups.items()]

    def extra_state(self) -> dict:
        """JSON-serialisable state saved beside the weights (e.g. a word vocabulary)."""
        return {}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_table(model: nn.Module, depth: int = 1) -> dict[str, int]:
    """Parameter count per top-level (``depth``) child module name."""
    table: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:depth])
        table[key] = table.get(key, 0) + p.numel()
    return table

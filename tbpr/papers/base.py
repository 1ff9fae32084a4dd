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
- ``rerank(text_feats, image_feats, topk_index) -> [n_text, k]`` extra scores for the top-k gallery
  images of each query, where ``reranks`` is True (cross-encoders: CADA, MIA).
- ``param_groups()``: parameter groups with ``lr_mult`` (the engine multiplies the base lr).

A model builds from its config alone. What it learns from the training data before training (a word
vocabulary) is a constructor argument named in ``data_fields``, returned by ``extra_state()``, saved
in the checkpoint and read back from it; ``Recipe`` holds everything else about how a paper trains.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data.formats import Record
from ..evaluate import evaluate


class TBPRModel(nn.Module):
    """Base class: stores the config and provides default parameter groups."""

    name: str = "base"
    data_fields: tuple[str, ...] = ()  # constructor arguments derived from the training data
    reranks: bool = False  # True where ``rerank`` re-scores a first-stage top-k
    bias_weight_decay: float | None = None  # a weight decay of the biases' own (IRRA's solver: 0)

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

    def rerank(self, text_feats, image_feats, topk_index) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not re-rank; evaluate with rerank_k=0")

    def param_groups(self) -> list[dict]:
        """Groups by ``cfg.train.lr_mult`` (parameter-name prefix -> multiplier; the rest at 1×);
        biases further at ``cfg.bias_lr_factor``× where the config has that field (IVT's and IRRA's
        official solvers), and with their own weight decay where ``bias_weight_decay`` is set."""
        mults = dict(getattr(self.cfg.train, "lr_mult", {}) or {})
        bias_factor = getattr(self.cfg, "bias_lr_factor", 1.0)
        groups: dict[tuple[float, bool], list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            mult = next((m for prefix, m in mults.items() if name.startswith(prefix)), 1.0)
            bias = name.endswith("bias")
            key = (float(mult * (bias_factor if bias else 1.0)), bias and self.bias_weight_decay is not None)
            groups.setdefault(key, []).append(p)
        return [{"params": ps, "lr_mult": m, **({"weight_decay": self.bias_weight_decay} if own_decay else {})}
                for (m, own_decay), ps in groups.items()]

    def extra_state(self) -> dict:
        """The ``data_fields`` as JSON, saved beside the weights and passed back to the constructor
        when a checkpoint is loaded (so a model never re-derives them from other data)."""
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


SENTENCE = "[sentence]"  # the token of an explanation that stands for the whole caption


class Recipe:
    """How a paper trains beyond the shared loop. The defaults are one stage with the config's
    ``train`` section, nothing derived from the data and no warm start; a paper overrides what its
    code does differently (MIA's step training, IVT's pre-training stage, SSAN's caption pool)."""

    def data_state(self, cfg, train_records: list[Record]) -> dict:
        """Constructor arguments derived from the training records (``MODEL.data_fields``)."""
        return {}

    def warm_start(self, model: TBPRModel, train_records: list[Record]) -> None:
        """Initialise ``model`` before training where its paper starts from pre-trained weights made
        by a stage of its own (IVT's ITC + ITM + MLM pre-training). Not called when a checkpoint
        replaces every weight."""

    def attach_training_data(self, model: TBPRModel, train_records: list[Record]) -> None:
        """Give ``model`` what its loss reads from the training set beyond the batch (SSAN's pool of
        an identity's other captions); not saved, rebuilt from the records for every training run."""

    def stages(self, model: TBPRModel) -> list[tuple[str, TrainConfig]]:
        """The training stages as (name, TrainConfig); ``enter_stage`` is called before each."""
        return [("train", model.cfg.train)]

    def enter_stage(self, model: TBPRModel, stage: str) -> None:
        """Switch ``model`` to ``stage`` (what it freezes, which losses it uses)."""

    def evaluate_run(self, model: TBPRModel, records: list[Record], run_dir: Path, *, device: str,
                     rerank_k: int, progress: bool, per_query: bool) -> dict:
        """The test metrics of a trained run (``tbpr.evaluate.evaluate``). A paper that re-scores one
        trained model several ways (MIA's fusions of Eq. 18) keeps in ``run_dir`` what it computes
        on the way, so that the re-scoring reads it instead of computing it again."""
        return evaluate(model, records, model.cfg.data, device=device, rerank_k=rerank_k,
                        progress=progress, per_query=per_query)

    def explain(self, model: TBPRModel, caption: str, image: torch.Tensor) -> dict | None:
        """The paper's own map of each word (or phrase) of ``caption`` over ``image``, read from the
        model's internals: ``{"tokens": [str], "maps": [n_tokens, h, w], "kind": str}``, optionally
        ``"bars"`` ([n_tokens, n_parts]) and ``"mask"`` ([h, w]). None where this configuration has
        no such module (the explorer then falls back to a model-agnostic saliency)."""
        return None

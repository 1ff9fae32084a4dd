"""A tiny dual encoder served as model "toy": the test double for runner / explorer tests.

There is no model registry: ``tbpr.papers.paper_module(name)`` imports ``tbpr.papers.<name>``. A test
module that runs the toy calls ``install(monkeypatch)`` (e.g. from an autouse fixture), which patches
``paper_module`` and ``load_presets`` to answer "toy" and delegate every other name; ``worker``
carries that patch into the processes ``experiments.run_many`` spawns."""
import types
import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import tbpr.papers
from tbpr import experiments
from tbpr.config import DataConfig, ModelConfig, TrainConfig
from tbpr.papers import Recipe, TBPRModel

NAME = "toy"


@dataclass
class ToyConfig(ModelConfig):
    dim: int = 16
    buckets: int = 64
    num_classes: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=1e-2, log_every=1))
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=(32, 16), batch_size=16))


class Toy(TBPRModel):
    """Colour statistics vs hashed bag of words, trained with a symmetric contrastive loss."""

    name = NAME

    def __init__(self, cfg):
        super().__init__(cfg)
        self.image_proj = nn.Linear(3 * 4, cfg.dim)
        self.words = nn.EmbeddingBag(cfg.buckets, cfg.dim)

    def encode_images(self, images):
        pooled = F.adaptive_avg_pool2d(images, (4, 1)).flatten(1)
        return F.normalize(self.image_proj(pooled), dim=-1)

    def encode_texts(self, captions):
        ids = [torch.tensor([zlib.crc32(w.encode()) % self.cfg.buckets for w in c.lower().split()] or [0]) for c in captions]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return F.normalize(self.words(torch.cat(ids), offsets), dim=-1)

    def similarity(self, text_feats, image_feats):
        return text_feats @ image_feats.T

    def training_step(self, batch):
        logits = self.similarity(self.encode_texts(batch["captions"]), self.encode_images(batch["images"])) / 0.1
        same = (batch["pids"][:, None] == batch["pids"][None]).float()
        loss = -(F.log_softmax(logits, 1) * same / same.sum(1, keepdim=True)).sum(1).mean()
        return {"loss": loss, "contrastive": loss.detach()}


PAPER = types.SimpleNamespace(MODEL=Toy, CONFIG=ToyConfig, RECIPE=Recipe())
_real_paper_module = tbpr.papers.paper_module
_real_load_presets = tbpr.papers.load_presets
_real_run_in_worker = experiments._run_in_worker


def paper_module(name: str):
    return PAPER if name == NAME else _real_paper_module(name)


def load_presets(name: str) -> dict:
    """The toy has no paper.yaml: every profile is its config's defaults."""
    return {} if name == NAME else _real_load_presets(name)


def install(monkeypatch) -> None:
    """Serve "toy" through ``tbpr.papers.paper_module`` (and in ``run_many``'s worker processes)."""
    monkeypatch.setattr(tbpr.papers, "paper_module", paper_module)
    monkeypatch.setattr(tbpr.papers, "load_presets", load_presets)
    monkeypatch.setattr(experiments, "_run_in_worker", worker)


def worker(*args, **kwargs):
    """``experiments._run_in_worker`` in a spawned process, which imports this module to unpickle
    it: patch ``paper_module`` and ``load_presets`` there too (for the rest of that short-lived process)."""
    tbpr.papers.paper_module = paper_module
    tbpr.papers.load_presets = load_presets
    return _real_run_in_worker(*args, **kwargs)

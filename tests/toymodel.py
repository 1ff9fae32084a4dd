"""A tiny dual encoder registered as model "toy": the test double for runner / explorer tests."""
import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tbpr.config import DataConfig, ModelConfig, TrainConfig
from tbpr.papers import TBPRModel, register_model


@dataclass
class ToyConfig(ModelConfig):
    dim: int = 16
    buckets: int = 64
    num_classes: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=1e-2, log_every=1))
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=(32, 16), batch_size=16))


@register_model("toy", ToyConfig)
class Toy(TBPRModel):
    """Colour statistics vs hashed bag of words, trained with a symmetric contrastive loss."""

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

"""experiments.run trains and evaluates once per configuration, then answers from its disk cache."""
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tbpr import experiments
from tbpr.config import DataConfig, ModelConfig, TrainConfig
from tbpr.models import TBPRModel, register_model


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
        ids = [torch.tensor([hash(w) % self.cfg.buckets for w in c.lower().split()] or [0]) for c in captions]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return F.normalize(self.words(torch.cat(ids), offsets), dim=-1)

    def similarity(self, text_feats, image_feats):
        return text_feats @ image_feats.T

    def training_step(self, batch):
        logits = self.similarity(self.encode_texts(batch["captions"]), self.encode_images(batch["images"])) / 0.1
        same = (batch["pids"][:, None] == batch["pids"][None]).float()
        loss = -(F.log_softmax(logits, 1) * same / same.sum(1, keepdim=True)).sum(1).mean()
        return {"loss": loss, "contrastive": loss.detach()}


def _run(**kw):
    return experiments.run("toy", "paper", kw.pop("overrides", None), data_root=kw.pop("root"),
                           progress=False, **kw)


def test_run_trains_evaluates_and_caches(smoke_root):
    first = _run(root=smoke_root, seed=0)
    assert set(first.metrics) >= {"R1", "R5", "R10", "mAP", "mINP"}
    assert len(first.history) == 2 and first.history[-1]["epoch"] == 2
    again = _run(root=smoke_root, seed=0)
    assert again.key == first.key and again.metrics == first.metrics
    assert again.train_seconds == first.train_seconds  # read back, not retrained


def test_cache_key_follows_config_and_seed(smoke_root):
    base = _run(root=smoke_root, seed=0)
    assert _run(root=smoke_root, seed=1).key != base.key
    assert _run(root=smoke_root, seed=0, overrides={"dim": 8}).key != base.key


def test_same_seed_same_metrics_without_cache(smoke_root):
    a = _run(root=smoke_root, seed=3, cache=False)
    b = _run(root=smoke_root, seed=3, cache=False)
    assert a.metrics == b.metrics


def test_loaded_model_reproduces_the_metrics(smoke_root):
    from tbpr.data.formats import load
    from tbpr.evaluate import evaluate
    result = _run(root=smoke_root, seed=0)
    model = result.load_model()
    test = load("synthpedes", smoke_root, verbose=False)["test"]
    assert evaluate(model, test, model.cfg.data, progress=False) == pytest.approx(result.metrics)


def test_num_classes_comes_from_the_training_identities(smoke_root):
    from tbpr.data.formats import load
    model = _run(root=smoke_root, seed=0).load_model()
    train = load("synthpedes", smoke_root, verbose=False)["train"]
    assert model.cfg.num_classes == len({r.pid for r in train})


def test_run_many_groups_results_by_row(smoke_root):
    rows = {"dim 16": {}, "dim 8": {"dim": 8}}
    out = experiments.run_many("toy", rows, seeds=[0, 1], profile="paper", data_root=smoke_root,
                               progress=False)
    assert list(out) == list(rows) and all(len(v) == 2 for v in out.values())
    assert experiments.metrics_of(out)["dim 8"][1] == out["dim 8"][1].metrics


def test_real_dataset_without_root_is_a_clear_error():
    with pytest.raises(ValueError, match="needs data_root"):
        experiments.run("toy", "paper", dataset="cuhk-pedes")

"""tbpr.bench: the eval benchmark agrees with the naive reference; the model benchmark runs the
model contract (training steps, encoders, similarity, rerank) and extrapolates honestly."""
import types

import numpy as np
import pytest
import torch

import tbpr.bench as bench
import tbpr.papers
from tbpr.config import ModelConfig
from tbpr.papers.base import Recipe, TBPRModel

from test_evaluate import reference_metrics


class TinyModel(TBPRModel):
    name = "tiny"
    reranks = True
    calls: dict = {}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.image_proj = torch.nn.Linear(3, 8)
        self.word_emb = torch.nn.EmbeddingBag(1000, 8)
        TinyModel.calls = {"train": 0, "rerank": 0}

    def encode_images(self, images):
        return self.image_proj(images.mean((-2, -1)))

    def encode_texts(self, captions):
        ids = [torch.tensor([hash(w) % 1000 for w in c.split()]) for c in captions]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return self.word_emb(torch.cat(ids), offsets)

    def similarity(self, text_feats, image_feats):
        return text_feats @ image_feats.T

    def rerank(self, text_feats, image_feats, topk_index):
        TinyModel.calls["rerank"] += 1
        return self.similarity(text_feats, image_feats).gather(1, topk_index)

    def training_step(self, batch):
        TinyModel.calls["train"] += 1
        assert batch["images"].shape[-2:] == tuple(self.cfg.data.image_size)
        logits = self.similarity(self.encode_texts(batch["captions"]), self.encode_images(batch["images"]))
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(logits)))
        return {"loss": loss, "itc": loss.detach()}


@pytest.fixture
def tiny(monkeypatch):
    """Serve model "tiny" (no registry: patch the paper lookup, delegating the real papers)."""
    paper_module, load_presets = tbpr.papers.paper_module, tbpr.papers.load_presets
    tiny_paper = types.SimpleNamespace(MODEL=TinyModel, CONFIG=ModelConfig, RECIPE=Recipe())
    monkeypatch.setattr(tbpr.papers, "paper_module",
                        lambda name: tiny_paper if name == "tiny" else paper_module(name))
    monkeypatch.setattr(tbpr.papers, "load_presets", lambda name: {
        "quick": {"data": {"image_size": [16, 8], "batch_size": 6}}} if name == "tiny" else load_presets(name))
    monkeypatch.setattr(bench, "available_models", lambda: ["tiny"])
    return "tiny"


def test_naive_reference_matches_brute_force():
    sim, qids, gids = bench.random_retrieval_problem(40, 25, 8, seed=3)
    want = reference_metrics(sim, qids, gids)
    got = bench.naive_retrieval_metrics(sim, qids, gids)
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert got[key] == pytest.approx(want[key])


def test_random_problem_gives_every_query_a_positive():
    sim, qids, gids = bench.random_retrieval_problem(500, 300, 100)
    assert sim.shape == (500, 300) and sim.dtype == np.float32
    assert set(gids) == set(range(100)) and set(qids) <= set(gids)


def test_bench_eval_times_both_and_checks_agreement(capsys):
    result = bench.bench_eval(300, 120, 40, repeats=2)
    assert result["ours_s"] > 0 and result["naive_s"] > 0
    assert result["speedup"] == pytest.approx(result["naive_s"] / result["ours_s"])
    sim, qids, gids = bench.random_retrieval_problem(300, 120, 40)
    assert result["metrics"]["mAP"] == pytest.approx(bench.naive_retrieval_metrics(sim, qids, gids)["mAP"])
    assert "| retrieval_metrics 300x120" in capsys.readouterr().out


def test_bench_eval_raises_when_implementations_disagree(monkeypatch):
    monkeypatch.setattr(bench, "naive_retrieval_metrics", lambda *a, **k: {"R1": -1.0})
    with pytest.raises(AssertionError, match="disagree on R1"):
        bench.bench_eval(50, 20, 5, repeats=1, verbose=False)


def test_peak_memory_sees_a_large_allocation():
    with bench.peak_memory() as mem:
        block = np.ones(30 * 2**20 // 8)  # 30 MiB, touched
        del block
    if mem["peak_mb"] is not None:  # Linux with /proc/self/clear_refs
        assert 25 < mem["peak_mb"] < 200


def test_bench_model_runs_contract_and_extrapolates(tiny):
    result = bench.bench_model(tiny, train_steps=3, num_images=10, num_captions=20, verbose=False)
    assert TinyModel.calls == {"train": 5, "rerank": 1}  # 2 warm-up + 3 timed steps
    assert result["image_size"] == (16, 8) and result["batch_size"] == 6
    assert result["extrapolated"] and result["measured_on"] == (10, 20)
    assert result["train_images_per_s"] > 0
    assert result["ms_per_query_all_in"] == pytest.approx(
        (1000 * result["gallery_encode_s"] + bench.CUHK_QUERIES * result["query_ms"]) / bench.CUHK_QUERIES)


def test_main_prints_markdown_tables(tiny, capsys):
    assert bench.main(["all", "--queries", "60", "--gallery", "30", "--ids", "10", "--repeats", "1",
                       "--train-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "| retrieval_metrics 60x30" in out
    assert "| tiny | quick | cpu | 16x8 | 6 |" in out and "extrapolated from 256 images" in out


def test_main_rejects_unknown_target(tiny, capsys):
    with pytest.raises(SystemExit):
        bench.main(["nosuchmodel"])
    assert "unknown target 'nosuchmodel'" in capsys.readouterr().err

"""Linear probes of the zoo's vision members (tbpr/pretrain/probe.py) and the corpus samples
notebook 00 shows (tbpr/pretrain/corpus.py), on the smoke profile."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tbpr import zoo
from tbpr.synthpedes import load_ground_truth
from tbpr.pretrain import corpus, probe


def test_identity_halves_share_no_person():
    pids = np.array([3, 3, 5, 7, 7, 7, 9, 11, 11, 2])
    fit, score = probe.identity_halves(pids, seed=1)
    assert fit.any() and score.any() and not (fit & score).any() and (fit | score).all()
    assert not set(pids[fit]) & set(pids[score])
    assert len(set(pids[fit])) == len(set(pids)) // 2


def test_attribute_targets_mark_absent_attributes(smoke_root):
    gt = load_ground_truth(smoke_root)
    files = sorted(gt.images)[:40]
    heads, labels = probe.attribute_targets(gt, files)
    assert labels.shape == (40, len(heads)) and "view" in heads
    assert set(h for g in probe.GROUPS.values() for h in g) == set(heads)
    j = list(heads).index("bag_colour")
    no_bag = np.array([gt.identities[gt.images[f].id]["bag"] == "none" for f in files])
    assert (labels[no_bag, j] == -1).all() and (labels[~no_bag, j] >= 0).all()


def test_linear_heads_read_features_that_hold_the_labels_and_not_noise():
    rng = np.random.default_rng(0)
    heads = {"a": ["x", "y", "z"], "b": ["p", "q"]}
    labels = np.stack([rng.integers(0, 3, 400), rng.integers(0, 2, 400)], 1)
    labels[::7, 1] = -1  # absent attribute
    fit, score = probe.identity_halves(np.arange(400) // 2)
    onehot = torch.from_numpy(np.concatenate([np.eye(3)[labels[:, 0]], np.eye(2)[labels[:, 1].clip(0)]], 1))
    informative = onehot + 0.1 * torch.randn(400, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    acc = probe.head_accuracies(informative, labels, heads, fit, score)
    assert acc["a"] == 1.0 and acc["b"] == 1.0
    noise = probe.head_accuracies(torch.randn(400, 5, generator=torch.Generator().manual_seed(1)), labels,
                                  heads, fit, score)
    assert noise["a"] < 0.5 and noise["b"] < 0.7
    floor = probe.majority_accuracies(labels, heads, fit, score)
    assert 0.2 < floor["a"] < 0.5


def test_probe_reads_the_member_from_the_papers_trunk(smoke_root):
    """The zoo arm's trunk holds the member's weights, the random arm does not; both give features."""
    if "vgg-s" not in zoo.available():
        pytest.skip("vgg-s not shipped")
    theirs = zoo.load("zoo:vgg-s")["features.4.weight"]
    assert torch.equal(probe.trunk_model("vgg-s", warm=True).state_dict()["cnn.4.weight"], theirs)
    assert not torch.equal(probe.trunk_model("vgg-s", warm=False).state_dict()["cnn.4.weight"], theirs)
    rows = probe.probe_members(smoke_root, members=["vgg-s"])
    assert [(r["member"], r["arm"]) for r in rows] == [("majority class", "floor"), ("vgg-s", "zoo"),
                                                       ("vgg-s", "random")]
    for r in rows:
        assert set(probe.GROUPS) | {"mean"} <= set(r) and 0.0 <= r["mean"] <= 1.0


def test_blip_s_probe_reads_cadas_image_encoder():
    if "blip-s" not in zoo.available():
        pytest.skip("blip-s not shipped")
    theirs = zoo.load("zoo:blip-s")["visual_encoder.blocks.1.attn.qkv.weight"]
    ours = probe.trunk_model("blip-s", warm=True).state_dict()["visual_encoder.blocks.1.attn.qkv.weight"]
    assert torch.equal(ours, theirs)


def test_corpus_sample_renders_the_same_people_the_full_render_writes(tmp_path, monkeypatch):
    """Without a cached render the people are rendered in memory; with one they are read from it."""
    from tbpr.synthpedes import ensure

    monkeypatch.setenv("TBPR_CACHE", str(tmp_path))  # no render of the corpus yet, whatever ran before
    people, source = corpus.sample("pretrain-smoke", n=3)
    assert source == "rendered in memory" and len(people) == 3
    assert [p["id"] for p in people] == sorted({p["id"] for p in people})
    ensure("pretrain-smoke", 0)
    cached, source = corpus.sample("pretrain-smoke", n=3)
    assert source == "cache"
    for a, b in zip(people, cached):
        assert (a["file_path"], a["caption"]) == (b["file_path"], b["caption"])
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    with pytest.raises(ValueError, match="not a pre-training corpus"):
        corpus.sample("quick")

"""IRRA: the losses against direct implementations of their formulas, IRR's masking rule, the model
at every profile (parameter counts at the paper profile beside the official structure), a smoke run."""
import math

import pytest
import torch
import torch.nn.functional as F

from tbpr import experiments
from tbpr.losses import itc_loss, mlm_loss, sdm_loss
from tbpr.papers import ablation_rows, create_model, parameter_table, recipe
from tbpr.papers.irra.model import IRRAConfig, mask_tokens


def test_sdm_equals_the_kl_of_each_row_to_its_true_match_distribution():
    torch.manual_seed(0)
    v, t, pids = torch.randn(6, 8), torch.randn(6, 8), torch.tensor([0, 0, 1, 2, 2, 2])
    scale, eps = 50.0, 1e-8
    total = 0.0
    for a, b in ((t, v), (v, t)):  # text->image rows, then image->text rows
        rows = []
        for i in range(6):
            s = [scale * F.cosine_similarity(a[i], b[j], dim=0) for j in range(6)]
            z = sum(math.exp(x) for x in s)
            p = [math.exp(x) / z for x in s]
            n = sum(1 for j in range(6) if pids[j] == pids[i])
            q = [(1.0 / n if pids[j] == pids[i] else 0.0) for j in range(6)]
            rows.append(sum(p[j] * (math.log(p[j]) - math.log(q[j] + eps)) for j in range(6)))
        total += sum(rows) / 6
    assert sdm_loss(v, t, pids, scale).item() == pytest.approx(total, rel=1e-4)


def test_sdm_is_smallest_when_each_text_matches_only_its_identity():
    pids = torch.tensor([0, 0, 1, 1])
    aligned = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    assert sdm_loss(aligned, aligned, pids, 50.0) < 1e-3 < sdm_loss(aligned, aligned.flip(0), pids, 50.0)


def test_itc_with_the_diagonal_is_clips_symmetric_infonce():
    torch.manual_seed(1)
    logits = torch.randn(5, 5)
    naive = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    assert itc_loss(logits, torch.eye(5, dtype=torch.bool)).item() == pytest.approx(naive.item(), rel=1e-6)


def test_mlm_loss_ignores_positions_labelled_zero():
    logits, labels = torch.randn(2, 4, 10), torch.tensor([[0, 3, 0, 0], [5, 0, 0, 0]])
    direct = (F.cross_entropy(logits[0, 1][None], torch.tensor([3])) + F.cross_entropy(logits[1, 0][None], torch.tensor([5]))) / 2
    assert mlm_loss(logits, labels).item() == pytest.approx(direct.item(), rel=1e-6)


def test_masking_follows_the_80_10_10_rule_and_never_touches_special_tokens():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (400, 40), generator=gen)
    ids[:, 0], ids[:, 30], ids[:, 31:] = 101, 102, 0  # [CLS] words [SEP] [PAD]...
    masked, labels = mask_tokens(ids, {0, 101, 102, 103}, 103, 30522, 0.15, generator=gen)
    chosen = labels > 0
    assert not chosen[:, [0, 30]].any() and not chosen[:, 31:].any()
    assert (labels[chosen] == ids[chosen]).all() and chosen.any(1).all()
    rate = chosen[:, 1:30].float().mean().item()
    assert 0.13 < rate < 0.17
    as_mask = (masked[chosen] == 103).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert 0.76 < as_mask < 0.84 and 0.07 < kept < 0.13
    assert (masked[~chosen] == ids[~chosen]).all()


def test_paper_profile_has_the_official_structure():
    table = parameter_table(create_model("irra", "paper", device="meta"))
    assert table["text_encoder"] == 63_428_096  # CLIP ViT-B/16's text transformer + projection
    # CLIP's visual tower at 384x128 (193 positions) + timm's head bias (512), which CLIP's proj lacks
    assert table["image_encoder"] == 86_190_080
    assert table["cross_modal"] == 512 * 512 * 4 + 4 * 512 + 3 * 1024 + 4 * (4 * 512 * 512 + 4 * 512 + 8 * 512 * 512 + 5 * 512 + 2 * 1024)
    assert table["mlm_head"] == 512 * 512 + 512 + 1024 + 512 * 49408 + 49408
    assert table["classifier"] == 512 * 11003 + 11003


@pytest.mark.parametrize("row", list(ablation_rows("irra", "losses")))
def test_every_loss_row_builds_with_its_modules_and_trains_a_step(row):
    overrides = ablation_rows("irra", "losses")[row]
    model = create_model("irra", "smoke", **overrides, num_classes=4)
    names = {n for n, _ in model.named_children()}
    assert ("cross_modal" in names) == ("mlm" in overrides["losses"])
    assert ("classifier" in names) == ("id" in overrides["losses"])
    batch = {"images": torch.randn(4, 3, 48, 16), "pids": torch.tensor([0, 0, 1, 2]),
             "captions": ["a man in a red jacket", "a man wearing a red coat", "a woman with a bag",
                          "a girl in blue jeans"]}
    out = model.training_step(batch)
    assert set(out) == {"loss", *overrides["losses"]}
    out["loss"].backward()


def test_losses_must_include_an_alignment_objective():
    with pytest.raises(ValueError, match="losses"):
        IRRAConfig(losses=("mlm", "id"))


def test_smoke_run_and_the_explorer_map(smoke_root):
    r = experiments.run("irra", "smoke", seed=0, progress=False)
    assert r.metrics["num_queries"] > 0 and r.metrics["R1"] > 0
    model = r.load_model()
    exp = recipe("irra").explain(model, "a man in a red jacket", torch.randn(3, 48, 16))
    assert exp["tokens"] == ["a", "man", "in", "a", "red", "jacket"]
    assert exp["maps"].shape == (6, 6, 2)
    mass = exp["maps"].sum((1, 2))  # attention over the patches; the rest went to [CLS]
    assert ((mass > 0) & (mass <= 1 + 1e-5)).all()

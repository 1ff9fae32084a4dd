"""IRRA: the losses against direct implementations of their formulas, IRR's masking rule, the model
at every profile (parameter counts at the paper profile beside the official structure), a smoke run."""
import math

import pytest
import torch
import torch.nn.functional as F

from tbpr import experiments
from tbpr.losses import itc_loss, mlm_loss, sdm_loss
from tbpr.papers import ablation_rows, create_model, parameter_table, recipe
from tbpr.papers.irra.model import IRRAConfig, blip_to_irra, mask_tokens


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


# --- starting from the zoo's aligned member (BLIP's layout; the CLIP stand-in at the CPU profiles)
SMALL_BLIP = dict(image_size=(48, 16), patch_size=8, width=32, depth=1, heads=2, mlp_ratio=4.0, text_width=32,
                  text_depth=1, text_heads=2, ffn=128, text_len=37, max_positions=64, embed_dim=32, init_std=0.2)


def _small_blip_member():
    """A random member of the aligned kind at the smoke sizes: (its CADA network, its BLIP-layout state)."""
    from tbpr.papers.cada.model import CADA
    from tbpr.pretrain.aligned import cada_to_blip_names, member_config

    torch.manual_seed(0)
    net = CADA(member_config(SMALL_BLIP)).eval()
    return net, cada_to_blip_names({k: v for k, v in net.state_dict().items() if not k.startswith("itm_local_head")})


def test_blip_to_irra_fills_every_encoder_tensor_and_leaves_only_blips_own_heads():
    _, blip = _small_blip_member()
    irra = create_model("irra", "smoke", encoders="blip")
    mapped = blip_to_irra(blip, irra.cfg)
    encoders = {k for k in irra.state_dict() if k.startswith(("image_encoder.", "text_encoder."))}
    assert set(mapped) == encoders
    used = {k for k in blip if not k.startswith(("itm_head.", "text_decoder.")) and ".crossattention." not in k}
    assert len(used) == len(mapped) - 1  # + BERT's segment table (zero), which BLIP's encoder lacks
    assert {k for k in blip if ".crossattention." in k} and any(k.startswith("text_decoder.cls.") for k in blip)


def test_irra_from_blip_weights_computes_the_members_features():
    """The mapping is the member's function, not only its names: IRRA's image and text features are
    the member's ITC features (same ids in, since the two tokenizers split punctuation differently)."""
    net, blip = _small_blip_member()
    irra = create_model("irra", "smoke", encoders="blip").eval()
    irra.load_state_dict(blip_to_irra(blip, irra.cfg), strict=False)
    images = torch.randn(3, 3, 48, 16)
    ids, att = net.tokenizer.batch(["a man in a red jacket", "woman, blue jeans", "a guy with a backpack"], "cpu")
    with torch.no_grad():
        V = net.encode_image_tokens(images)
        assert torch.allclose(irra.encode_images(images), net.vision_proj(V[:, 0]), atol=1e-5)
        ours = irra.text_feature(ids, irra.text_tokens(ids))
        theirs = net.text_proj(net.text_encoder(ids, att)[0][:, 0])
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_zoo_member_needs_blip_encoders():
    with pytest.raises(ValueError, match="encoders=blip"):
        IRRAConfig(vision_pretrained="zoo:blip-s")

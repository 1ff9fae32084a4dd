"""SSAN: paper-profile size, shapes, every module against a direct loop over the paper's equations,
the compound ranking loss against a naive implementation, and the ablation switches."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tbpr.losses import bidirectional_ranking_loss, compound_ranking_loss, cosine_matrix
from tbpr.papers import create_model, get_config, parameter_table, recipe
from tbpr.papers.ssan.model import SSAN

TINY = dict(backbone="strided_cnn", pretrained=None, cnn_widths=(4, 8, 8, 16, 16), vocab_size=0, embed_dim=8,
            hidden_dim=16, feat_dim=16, nln_embed_dim=8, nln_out_dim=8, num_classes=4,
            data={"image_size": (48, 16), "batch_size": 4, "max_caption_len": 12})
CAPTIONS = ["a man in a red shirt and blue jeans", "the woman wears a green dress and black shoes",
            "a man with a black bag in his right hand", "she has long black hair and a white shirt",
            "a man in a red shirt and black shoes", "the woman carries a bag across her chest"]


def records(n_ids=4, images_per_id=2):
    """Fake training records: ``images_per_id`` images per identity, two captions each."""
    out = []
    for pid in range(n_ids):
        for j in range(images_per_id):
            k = (pid * images_per_id + j) * 2
            caps = [CAPTIONS[k % 6], CAPTIONS[(k + 1) % 6] + f" number {pid} {j}"]
            out.append(SimpleNamespace(pid=pid, captions=caps, image_path=None, file_path=f"{pid}_{j}.jpg"))
    return out


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg, recs = get_config("ssan", "paper", {**TINY, **overrides}), records()
    model = SSAN(cfg, **recipe("ssan").data_state(cfg, recs))
    recipe("ssan").attach_training_data(model, recs)  # D' pool and epoch length of the ranking loss
    return model


def batch(model, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = model.cfg.data.image_size
    return {"images": torch.randn(b, 3, h, w, generator=g), "pids": torch.arange(b) % 4,
            "captions": [CAPTIONS[i % 6] for i in range(b)], "image_idx": torch.arange(b) * 2,
            "caption_idx": torch.arange(b) * 4}


# ---- size -------------------------------------------------------------------------------------
def test_paper_profile_inference_network_has_the_papers_97_858_624_parameters():
    model = create_model("ssan", "paper", device="meta")
    assert model.inference_parameters() == 97_858_624
    table = parameter_table(model)
    assert table["visual"] == 23_508_032 and table["bilstm"] == 41_943_040
    assert table["word_emb_global"] + table["word_emb_local"] == 5_120_000
    assert (table["W_g"], table["W_l"], table["wam"], table["mvnln"]) == (2_097_152, 12_582_912, 12_288, 12_595_200)
    assert table["classifier"] == (1024 + 6 * 1024 + 6 * 512) * 11_000 + 13 * 11_000  # ID heads, training only


def test_quick_and_smoke_profiles_keep_every_module():
    for profile in ("quick", "smoke"):
        cfg = get_config("ssan", profile)
        assert cfg.use_pfl and cfg.mvnln == "full" and cfg.cr_beta > 0 and cfg.separate_word_emb
        model = create_model("ssan", profile, device="meta")
        assert model.feature_types == ("g", "l", "n")


# ---- shapes and modules -----------------------------------------------------------------------
def test_features_have_the_papers_shapes_and_similarity_is_the_sum_of_three_cosines():
    model = tiny().eval()
    b = batch(model)
    with torch.no_grad():
        v, t = model.encode_images(b["images"]), model.encode_texts(CAPTIONS)
        S = model.similarity(t, v)
    assert v["g"].shape == (4, 16) and v["l"].shape == (4, 6, 16) and v["n"].shape == (4, 6, 8)
    assert t["g"].shape == (6, 16) and t["l"].shape == (6, 6, 16) and t["n"].shape == (6, 6, 8)
    naive = torch.zeros(6, 4)
    for q in range(6):
        for i in range(4):
            for f in "gln":
                naive[q, i] += F.cosine_similarity(t[f][q].flatten(), v[f][i].flatten(), dim=0)
    torch.testing.assert_close(S, naive, atol=1e-5, rtol=1e-5)


def test_image_branches_follow_eq_5_and_10():
    model = tiny().eval()
    images = batch(model)["images"]
    with torch.no_grad():
        v = model.encode_images(images)
        fmap = model.visual.forward_features(images)  # [B, C, 6, 2]: one row per stripe
        assert fmap.shape[2:] == (6, 2)
        for b in range(4):
            gmp = fmap[b].flatten(1).max(dim=1).values
            torch.testing.assert_close(v["g"][b], model.W_g.weight @ gmp)
            for k in range(6):
                stripe = fmap[b, :, k].flatten(1).max(dim=1).values
                torch.testing.assert_close(v["l"][b, k], F.leaky_relu(model.W_l.weight[k] @ stripe, 0.25))


def test_wam_part_features_follow_eq_8_9_11_and_global_rmp_sees_padding_zeros():
    model = tiny().eval()
    captions = ["a man in a red shirt", "she has long black hair and a white shirt"]
    with torch.no_grad():
        t = model.encode_texts(captions)
        ids, lengths = model.tokenize(captions)
        E_g, E_l = model.word_features(ids, lengths)
        for b, n in enumerate(lengths.tolist()):
            assert E_l[b, n:].abs().sum() == 0  # zeros after the last word
            # the official code's max also sees the padding zeros, which floor it at 0
            rmp = torch.stack([E_g[b, i] for i in range(n)]).max(dim=0).values.clamp(min=0)
            torch.testing.assert_close(t["g"][b], model.W_g.weight @ rmp)
            for k in range(6):
                s = [torch.sigmoid(model.wam.weight[k] @ E_l[b, i]) for i in range(n)]  # Eq. 8
                g = torch.stack([s[i] * E_l[b, i] for i in range(n)]).max(dim=0).values  # Eq. 9
                torch.testing.assert_close(t["l"][b, k], F.leaky_relu(model.W_l.weight[k] @ g, 0.25))


def test_paper_exact_global_rmp_ignores_padding():
    model = tiny(global_rmp_include_pad=False).eval()
    with torch.no_grad():
        ids, lengths = model.tokenize(["a man in a red shirt"])
        E_g, _ = model.word_features(ids, lengths)
        t = model.encode_texts(["a man in a red shirt"])
    torch.testing.assert_close(t["g"][0], model.W_g.weight @ E_g[0].max(dim=0).values)


def test_mvnln_follows_eq_13_to_16_with_the_codes_choices():
    model = tiny().eval()
    nln = model.mvnln
    torch.manual_seed(1)
    nln.bn.running_mean.normal_()
    nln.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 6, 16)
    with torch.no_grad():
        out = nln(x)
        for b in range(3):
            theta = [F.normalize(F.leaky_relu(nln.W_theta.weight[k] @ x[b, k], 0.25), dim=0) for k in range(6)]
            phi = [F.normalize(F.leaky_relu(nln.W_phi.weight[k] @ x[b, k], 0.25), dim=0) for k in range(6)]
            for k in range(6):
                others = [i for i in range(6) if i != k]
                e = torch.stack([torch.exp(theta[k] @ phi[i]) for i in others])  # Eq. 13, 14
                alpha = e / e.sum()
                agg = sum(a * phi[i] for a, i in zip(alpha, others))
                x_in = nln.W_gamma.weight[k] @ agg  # Eq. 15
                sl = slice(k * 16, (k + 1) * 16)
                x_in = (x_in - nln.bn.running_mean[sl]) / torch.sqrt(nln.bn.running_var[sl] + nln.bn.eps)
                x_in = F.leaky_relu(x_in * nln.bn.weight[sl] + nln.bn.bias[sl], 0.25)
                torch.testing.assert_close(out[b, k], nln.W_n.weight[k] @ (x[b, k] + x_in), atol=1e-5, rtol=1e-5)


# ---- ablation switches ------------------------------------------------------------------------
def count(model, prefix):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def test_ablation_switches_remove_their_modules():
    full = tiny()
    baseline = tiny(use_pfl=False, mvnln="none", cr_beta=0.0)
    assert baseline.feature_types == ("g",) and full.feature_types == ("g", "l", "n")
    assert baseline.wam is None and baseline.W_l is None and baseline.mvnln is None
    removed = count(full, "wam") + count(full, "W_l") + count(full, "mvnln") + count(full, "classifier.l") \
        + count(full, "classifier.n")
    assert full.inference_parameters() + count(full, "classifier") - removed == \
        baseline.inference_parameters() + count(baseline, "classifier")
    conv = tiny(mvnln="conv1x1")
    assert count(conv, "mvnln") == 6 * 8 * 16 and count(full, "mvnln") > count(conv, "mvnln")
    separate = tiny(share_global_proj=False)
    assert separate.inference_parameters() - full.inference_parameters() == 16 * 16
    one_table = tiny(separate_word_emb=False)
    assert one_table.word_emb_local is None
    assert full.inference_parameters() - one_table.inference_parameters() == count(full, "word_emb_local")


def test_switches_change_the_scores():
    images = batch(tiny())["images"]
    scores = {}
    for label, kw in {"full": {}, "conv": {"mvnln": "conv1x1"}, "no_nln": {"mvnln": "none"}}.items():
        model = tiny(**kw).eval()
        with torch.no_grad():
            scores[label] = model.similarity(model.encode_texts(CAPTIONS[:3]), model.encode_images(images))
    assert scores["no_nln"].abs().max() <= 2 + 1e-5  # two cosines
    assert not torch.allclose(scores["full"], scores["conv"])


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="mvnln='none' when use_pfl=False"):
        tiny(use_pfl=False)
    with pytest.raises(ValueError, match="mvnln="):
        tiny(mvnln="nope")
    with pytest.raises(ValueError, match="hidden_dim"):
        tiny(hidden_dim=12)


# ---- training step ----------------------------------------------------------------------------
def test_training_step_reports_every_loss_and_reaches_wam():
    model = tiny().train()
    out = model.training_step(batch(model))
    assert set(out) == {"loss", "id_g", "cr_g", "id_l", "cr_l", "id_n", "cr_n"}
    total = out["id_g"] + out["cr_g"] + 0.5 * (out["id_l"] + out["cr_l"] + out["id_n"] + out["cr_n"])
    torch.testing.assert_close(out["loss"], total)
    # at init every ID classifier is near uniform: CE ≈ ln P per modality
    assert abs(out["id_g"].item() - 2 * math.log(4)) < 0.05
    out["loss"].backward()
    assert model.wam.weight.grad.abs().sum() > 0 and model.mvnln.W_theta.weight.grad.abs().sum() > 0
    assert int(model.steps_done) == 1


def test_cross_captions_come_from_other_images_of_the_same_identity():
    model = tiny()
    recs = records()
    b = {"captions": ["x"] * 8, "image_idx": torch.arange(8)}
    for _ in range(20):
        cross, valid = model.sample_cross_captions(b)
        assert valid.all()
        for i, c in enumerate(cross):
            same_id_other_images = [c2 for r in recs if r.pid == recs[i].pid and r is not recs[i]
                                    for c2 in r.captions]
            assert c in same_id_other_images


def test_warmup_ends_after_the_configured_epochs_of_steps():
    model = tiny(cr_warmup_epochs=2)
    assert model.steps_per_epoch == 16 // 4  # 16 training captions, batch 4, drop_last
    model.steps_done.fill_(7)
    assert model.epoch == 1
    model.steps_done.fill_(8)
    assert model.epoch == 2


# ---- compound ranking loss vs the paper's formula -----------------------------------------------
def naive_cr(img, txt, weak, pids, *, alpha1, beta, margin, fixed, warmup, min_margin, variant, valid):
    """Eq. 19-21 (and the code's form) with hardest negatives, one anchor at a time."""
    def cos(a, b):
        return float(a @ b / ((a.norm() + 1e-8) * (b.norm() + 1e-8)))
    I, D, W = img.flatten(1), txt.flatten(1), weak.flatten(1)
    total = 0.0
    for p in range(len(pids)):
        negs = [n for n in range(len(pids)) if pids[n] != pids[p]]
        if not negs:
            continue
        sp = cos(I[p], D[p])
        total += max(0.0, alpha1 - sp + max(cos(I[p], D[n]) for n in negs))
        total += max(0.0, alpha1 - sp + max(cos(I[n], D[p]) for n in negs))
        sw = cos(I[p], W[p])
        if margin == "fixed":
            alpha2, active = fixed, True
        elif variant == "paper":
            alpha2, active = (min(sw / sp, 1) + 1) * alpha1 / 2, True
        elif warmup:
            alpha2, active = alpha1 / 2, True
        else:
            alpha2 = (min(abs(sw) / abs(sp), 1) + 1) * alpha1 / 2
            active = alpha2 >= min_margin
        if not (active and valid[p]):
            continue
        image_anchor_negs = [cos(I[p], D[n]) if variant == "paper" else cos(I[p], W[n]) for n in negs]
        total += beta * max(0.0, alpha2 - sw + max(image_anchor_negs))
        total += beta * max(0.0, alpha2 - sw + max(cos(I[n], W[p]) for n in negs))
    return total


@pytest.mark.parametrize("variant,margin,warmup", [
    ("official", "adaptive", False), ("official", "adaptive", True), ("official", "fixed", False),
    ("paper", "adaptive", False), ("paper", "fixed", False)])
def test_compound_ranking_loss_matches_the_formula(variant, margin, warmup):
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(8, 3, 5, generator=g), torch.randn(8, 3, 5, generator=g)
    weak = txt + 0.8 * torch.randn(8, 3, 5, generator=g)
    pids = torch.tensor([0, 0, 1, 2, 2, 3, 4, 5])
    valid = torch.tensor([1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    kw = dict(alpha1=0.2, beta=0.1, margin=margin, fixed=0.15, warmup=warmup, min_margin=0.16, variant=variant)
    ours = compound_ranking_loss(img, txt, weak, pids, alpha1=0.2, beta=0.1, margin=margin,
                                 fixed_alpha2=0.15, warmup=warmup, min_margin=0.16, variant=variant,
                                 mining="hardest", weak_valid=valid)
    assert ours.item() == pytest.approx(naive_cr(img, txt, weak, pids, valid=valid, **kw), rel=1e-5)


def test_beta_zero_is_the_ordinary_ranking_loss():
    g = torch.Generator().manual_seed(4)
    img, txt, weak = (torch.randn(6, 10, generator=g) for _ in range(3))
    pids = torch.arange(6)
    plain = naive_cr(img, txt, weak, pids, alpha1=0.2, beta=0.0, margin="adaptive", fixed=0, warmup=False,
                     min_margin=0.16, variant="official", valid=[True] * 6)
    assert compound_ranking_loss(img, txt, weak, pids, beta=0.0, mining="hardest").item() == pytest.approx(plain, rel=1e-5)


def test_semi_hard_random_mining_averages_to_the_mean_over_semi_hard_negatives():
    g = torch.Generator().manual_seed(5)
    S = cosine_matrix(torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g))
    pids = torch.tensor([0, 1, 1, 2, 3, 4, 5])
    margins = torch.full((7,), 0.6)
    expected = 0.0
    for X in (S, S.t()):
        for b in range(7):
            sh = [c for c in range(7) if pids[c] != pids[b] and X[b, b] - 0.6 < X[b, c] < X[b, b]]
            if sh:
                expected += sum(float(0.6 - X[b, b] + X[b, c]) for c in sh) / len(sh)
    draws = [bidirectional_ranking_loss(S, pids, margins, generator=g).item() for _ in range(3000)]
    assert expected > 0 and sum(draws) / len(draws) == pytest.approx(expected, rel=0.02)


# ---- on SynthPedes through the engine ------------------------------------------------------------
def test_saved_checkpoint_reloads_to_the_same_metrics(smoke_root):
    from tbpr import experiments
    from tbpr.evaluate import evaluate
    result = experiments.run("ssan", "smoke", {"train.epochs": 1}, seed=0, progress=False)
    model = result.load_model()
    records = experiments.load_records("synthpedes", smoke_root)
    one_epoch = sum(len(r.captions) for r in records["train"]) // model.cfg.data.batch_size  # drop_last
    assert int(model.steps_done) == one_epoch  # the warm-up clock travels with the weights
    again = evaluate(model, records["test"], model.cfg.data, progress=False)
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert again[key] == pytest.approx(result.metrics[key], abs=1e-6)


def test_every_synthpedes_training_image_has_a_cross_caption_of_its_identity(smoke_root):
    from tbpr.data.formats import load
    from tbpr.experiments import build_model
    train = load("synthpedes", smoke_root)["train"]
    model = build_model("ssan", get_config("ssan", "smoke"), train)
    recipe("ssan").attach_training_data(model, train)
    for i, pool in enumerate(model.cross_captions):
        same = [c for j, r in enumerate(train) if r.pid == train[i].pid and j != i for c in r.captions]
        assert pool == same and (pool or sum(r.pid == train[i].pid for r in train) == 1)


def test_wam_word_scores_are_the_scores_of_the_words_the_model_reads():
    model = tiny().eval()
    captions = ["A man in a RED shirt, zebra's bag", "she has long black hair"]
    out = model.wam_word_scores(captions)
    assert [w for w, *_ in out[0]] == ["a", "man", "in", "a", "red", "shirt", "bag"]  # OOV "zebras" dropped
    assert all(captions[0].lower()[a:b] == w for w, a, b, _ in out[0])
    with torch.no_grad():
        ids, lengths = model.tokenize(captions[1:])
        expected = model.word_part_scores(model.word_features(ids, lengths)[1])[0]
    torch.testing.assert_close(torch.stack([s for *_, s in out[1]]), expected)

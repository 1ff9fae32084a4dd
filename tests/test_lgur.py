"""LGUR: loss formulas against naive loops, the shared block, shapes, ablation switches and the
paper-profile parameter count (meta device)."""
import math

import pytest
import torch
import torch.nn.functional as F

from tbpr.losses import part_id_loss, semi_hard_ranking_loss
from tbpr.papers import ablation_rows, count_parameters, create_model, parameter_table
from tbpr.papers.lgur.model import CrossAttentionLayer

# a tiny random frozen BERT keeps these unit tests independent of the MiniLM package
TINY = dict(text_pretrained=None, text_width=32, text_layers=1, text_heads=2, text_ffn=64,
            num_classes=5, cache_text_features=False)
CAPTIONS = ["a man in a red jacket and blue jeans", "a woman wearing a long green skirt",
            "a person with a black backpack", "a man in a red jacket and blue jeans carrying a bag"]


def tiny_model(**overrides):
    torch.manual_seed(0)
    return create_model("lgur", "smoke", **{**TINY, **overrides})


def tiny_batch(model, n=4):
    H, W = model.cfg.data.image_size
    g = torch.Generator().manual_seed(1)
    return {"images": torch.randn(n, 3, H, W, generator=g), "pids": torch.tensor([0, 1, 2, 0, 3, 4][:n]),
            "captions": CAPTIONS[:n]}


# ----------------------------------------------------------------------------- losses
def test_part_id_loss_is_cross_entropy_averaged_over_parts():
    logits = torch.randn(5, 3, 7)
    pids = torch.tensor([0, 6, 2, 2, 1])
    naive = 0.0
    for k in range(3):
        for b in range(5):
            naive += -torch.log_softmax(logits[b, k], 0)[pids[b]] / 5
    assert torch.allclose(part_id_loss(logits, pids), naive / 3, atol=1e-6)


def naive_semi_hard(a, b, pids, margin, rand_rows, rand_cols):
    """Eq. 7 with loops; the uniform draw is the argmax of the same uniform scores the loss draws."""
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    S = [[float(a[i] @ b[j]) for j in range(len(b))] for i in range(len(a))]
    total = 0.0
    for sim, rand in ((S, rand_rows), ([list(r) for r in zip(*S)], rand_cols)):
        n, valid = len(sim), 0
        for i in range(n):
            semi = [j for j in range(n) if pids[j] != pids[i] and sim[i][i] - margin < sim[i][j] < sim[i][i]]
            if semi:
                valid += 1
                j = max(semi, key=lambda j: rand[i][j])
                total += max(0.0, margin - sim[i][i] + sim[i][j])
        if valid == 0:
            last = n - 1
            first_neg = next(j for j in range(n) if pids[j] != pids[last])
            total += max(0.0, margin - sim[last][last] + sim[last][first_neg])
    return total


def test_semi_hard_ranking_matches_naive_loop():
    torch.manual_seed(0)
    base = torch.randn(12, 16)
    a, b = base + 0.6 * torch.randn(12, 16), base + 0.6 * torch.randn(12, 16)
    pids = torch.tensor([0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8])
    g = torch.Generator().manual_seed(3)
    loss = semi_hard_ranking_loss(a, b, pids, margin=0.3, generator=g)
    g = torch.Generator().manual_seed(3)
    rand_rows, rand_cols = torch.rand(12, 12, generator=g).tolist(), torch.rand(12, 12, generator=g).tolist()
    expected = naive_semi_hard(a, b, pids.tolist(), 0.3, rand_rows, rand_cols)
    assert expected > 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_semi_hard_ranking_falls_back_to_one_triplet_when_no_negative_is_semi_hard():
    # perfectly separated: every negative is far below its positive, so no semi-hard set exists
    a = torch.eye(4)
    pids = torch.tensor([0, 1, 2, 3])
    loss = semi_hard_ranking_loss(a, a, pids, margin=0.3)
    assert loss.item() == pytest.approx(0.0)
    # every negative scores above the positive (hard, not semi-hard): one triplet per direction
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    a2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = semi_hard_ranking_loss(a2, b, torch.tensor([0, 1]), margin=0.3)
    assert loss.item() == pytest.approx(2 * (0.3 - 0.0 + 1.0))


def test_semi_hard_ranking_never_uses_same_identity_items_as_negatives():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.95, 0.3], [0.0, 1.0]]), dim=1)
    same = semi_hard_ranking_loss(a, a, torch.tensor([0, 0, 1]), margin=0.3)
    other = semi_hard_ranking_loss(a, a, torch.tensor([0, 1, 2]), margin=0.3)
    assert other.item() > same.item()


# ----------------------------------------------------------------------------- the shared block
def test_cross_attention_layer_matches_naive_formula_with_key_mask():
    torch.manual_seed(0)
    layer = CrossAttentionLayer(dim=8, heads=2, head_dim=3, ffn=5)
    x, y = torch.randn(2, 4, 8), torch.randn(2, 6, 8)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    with torch.no_grad():
        out, attn = layer(x, y, mask)
        _check_layer_naively(layer, x, y, mask, out, attn)


def _check_layer_naively(layer, x, y, mask, out, attn):
    for b in range(2):
        xn, yn = layer.norm1(x[b]), layer.norm1(y[b])  # one LayerNorm for queries and keys/values
        heads = []
        for h in range(2):
            sl = slice(3 * h, 3 * h + 3)
            q, k, v = (xn @ layer.q.weight.T)[:, sl], (yn @ layer.k.weight.T)[:, sl], (yn @ layer.v.weight.T)[:, sl]
            rows = []
            for i in range(4):
                scores = torch.tensor([float(q[i] @ k[j]) / math.sqrt(3) if mask[b, j] else -math.inf
                                       for j in range(6)])
                w = scores.softmax(0)
                assert torch.allclose(attn[b, h, i], w, atol=1e-6)
                rows.append(w @ v)
            heads.append(torch.stack(rows))
        x1 = x[b] + layer.out(torch.cat(heads, dim=1))
        expected = x1 + layer.ffn[2](torch.relu(layer.ffn[0](layer.norm2(x1))))
        assert torch.allclose(out[b], expected, atol=1e-5)


# ----------------------------------------------------------------------------- paper profile
def test_paper_profile_parameter_count_per_component_matches_spec():
    model = create_model("lgur", "paper", device="meta")
    table = parameter_table(model)
    D, Dp, C = 384, 512, 11000
    block = lambda inner, ffn: 4 * D + 3 * D * inner + inner * D + D + D * ffn + ffn + ffn * D + D  # noqa: E731
    deit_block = 2 * 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * 4 * D + 4 * D) + (4 * D * D + D)
    assert table["visual"] == 3 * 16 * 16 * D + D + D + 193 * D + 11 * deit_block  # ≈ 19.9 M
    assert table["bilstm"] == 2 * 4 * D * (768 + D)  # ≈ 3.54 M, bias-free
    assert table["dga"] == block(6 * 64, 768) == 1_182_720
    assert table["pgu"] == 2 * block(6 * 512, 512) == 10_229_248
    assert table["part_fcs"] == 6 * Dp * D
    assert table["classifiers"] == 6 * (Dp * C + C)  # ≈ 33.9 M
    assert table["dictionary"] == 400 * D and table["prototypes"] == 6 * D and table["mask_head"] == D + 1
    assert table["text_encoder"] == 108_891_648  # bert-base-uncased without its (unused) pooler
    assert count_parameters(model) - table["text_encoder"] == 70_033_745


# ----------------------------------------------------------------------------- shapes
def test_training_step_returns_the_six_loss_terms_of_full_lgur():
    model = tiny_model()
    out = model.training_step(tiny_batch(model))
    assert set(out) == {"loss", "id_raw", "id_recon", "rank_raw", "rank_recon", "rank_text_recon", "guidance"}
    assert torch.isclose(out["loss"], sum(v for k, v in out.items() if k != "loss"))
    out["loss"].backward()
    assert model.dictionary.grad.abs().sum() > 0 and model.mask_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.parameters())  # BERT stays frozen


def test_encoders_return_normalised_concatenated_parts():
    model = tiny_model().eval()
    cfg = model.cfg
    img = model.encode_images(tiny_batch(model)["images"])
    txt = model.encode_texts(CAPTIONS)
    assert img.shape == (4, cfg.num_prototypes * cfg.part_dim) and txt.shape == (4, img.shape[1])
    assert torch.allclose(img.norm(dim=1), torch.ones(4)) and torch.allclose(txt.norm(dim=1), torch.ones(4))
    assert model.similarity(txt, img).shape == (4, 4)


def test_text_tokens_are_the_mean_of_both_lstm_directions_and_zero_on_padding():
    model = tiny_model()
    assert not model.bilstm.bias  # what makes the padded run equal to a packed one
    T, pi = model.encode_words(CAPTIONS[:2])
    n = int(pi[1].sum())
    assert pi[0].all() and n < T.shape[1]
    assert T[1, n:].abs().sum() == 0
    E = model._frozen_features([CAPTIONS[1]])[0].float()[None]
    full, _ = model.bilstm(E)
    assert torch.allclose(T[1, :n], full[0].unflatten(-1, (2, model.cfg.dim)).mean(1), atol=1e-5)


def test_frozen_text_features_do_not_depend_on_the_captions_encoded_with_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path))
    model = create_model("lgur", "smoke", num_classes=5)  # the real MiniLM: its rounding shows the padding
    captions = ["a girl in a yellow coat", "a boy with grey shorts and white shoes", "a woman holding a blue bag"]
    long_caption = " and ".join(CAPTIONS)  # padding the others to its length used to change their rounding
    together = model._frozen_features(captions + [long_caption])
    model._text_cache.store.clear()  # the process-wide store of MiniLM outputs
    for caption, feats in zip(captions, together):
        assert torch.equal(model._frozen_features([caption])[0], feats)


def test_internals_have_the_figure_shapes():
    model = tiny_model().eval()
    cfg, images = model.cfg, tiny_batch(model, 2)["images"]
    vis = model.visual_internals(images)
    gh, gw = vis["grid"]
    N = gh * gw
    assert vis["mask"].shape == (2, N) and ((vis["mask"] > 0) & (vis["mask"] < 1)).all()
    assert vis["dga_attn"].shape == (2, cfg.dga_heads, N, cfg.num_atoms)
    assert vis["pgu_attn"].shape == (2, cfg.pgu_heads, cfg.num_prototypes, N)
    txt = model.text_internals(CAPTIONS[:2])
    assert txt["dga_attn"].shape[:2] == (2, cfg.dga_heads) and txt["dga_attn"].shape[-1] == cfg.num_atoms
    assert len(txt["offsets"][0]) == int(txt["key_mask"][0].sum())


# ----------------------------------------------------------------------------- ablation switches
def _names(model):
    return {n.split(".")[0] for n, _ in model.named_parameters()}


def test_ablation_switches_remove_their_modules():
    rows = ablation_rows("lgur", "table5")
    baseline = tiny_model(**rows["0 baseline"])
    assert not {"dictionary", "dga", "mask_head", "prototypes", "pgu"} & _names(baseline)
    assert len(baseline.part_fcs) == 1 and len(baseline.classifiers) == 1
    assert {"prototypes", "pgu"} <= _names(tiny_model(**rows["1 + PGU"]))
    assert "mask_head" not in _names(tiny_model(**rows["3 + PGU + DGA (D)"]))
    assert "mask_head" in _names(tiny_model(**rows["4 + PGU + DGA (D + M)"]))
    sa = tiny_model(**ablation_rows("lgur", "table6")["w/ SA"])
    assert "dga" in _names(sa) and "dictionary" not in _names(sa)
    assert "dictionary_visual" in _names(tiny_model(**ablation_rows("lgur", "table6")["w/ unshared"]))
    assert "prototypes_text" in _names(tiny_model(**ablation_rows("lgur", "table7")["w/ unshared"]))


def test_guidance_switch_drops_the_text_guided_branch_and_its_loss():
    rows = ablation_rows("lgur", "table5")
    no_g = tiny_model(**rows["4 + PGU + DGA (D + M)"])
    out = no_g.training_step(tiny_batch(no_g))
    assert "guidance" not in out and "rank_visual_recon" in out
    plain = tiny_model(**rows["1 + PGU"]).training_step(tiny_batch(no_g))
    assert set(plain) == {"loss", "id", "rank"}


def test_mask_switch_changes_the_image_features_but_not_the_text_features():
    with_mask = tiny_model().eval()
    without = tiny_model(use_mask=False).eval()
    without.load_state_dict({k: v for k, v in with_mask.state_dict().items() if not k.startswith("mask_head")})
    images = tiny_batch(with_mask)["images"]
    assert not torch.allclose(with_mask.encode_images(images), without.encode_images(images))
    assert torch.allclose(with_mask.encode_texts(CAPTIONS), without.encode_texts(CAPTIONS))


@pytest.mark.parametrize("table", ["table5", "table6", "table7"])
def test_every_ablation_row_trains_one_step(table):
    for label, overrides in ablation_rows("lgur", table).items():
        model = tiny_model(**overrides)
        loss = model.training_step(tiny_batch(model))["loss"]
        assert torch.isfinite(loss), label
        loss.backward()


def test_dga_switches_are_validated_with_a_clear_error():
    with pytest.raises(ValueError, match="recon_type"):
        tiny_model(recon_type="none")  # mask and guidance still on
    with pytest.raises(ValueError, match="choose one of"):
        tiny_model(recon_type="dictionary")


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_reloads_to_the_same_metrics_without_storing_the_frozen_encoder(tmp_path, monkeypatch):
    from safetensors import safe_open

    from tbpr.engine import load_checkpoint, save_checkpoint
    from tbpr.evaluate import retrieval_metrics

    monkeypatch.setenv("TBPR_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = create_model("lgur", "smoke", num_classes=5)  # the real frozen MiniLM
    model.training_step(tiny_batch(model))["loss"].backward()  # any non-initial weights will do
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    with safe_open(str(path), "pt") as f:
        assert not any(k.startswith("text_encoder.") for k in f.keys())  # reloaded from MiniLM

    torch.manual_seed(1)
    reloaded = create_model("lgur", "smoke", num_classes=5)
    load_checkpoint(reloaded, path)
    images, pids = tiny_batch(model)["images"], torch.tensor([0, 1, 2, 0])

    def metrics(m):
        m.eval()
        with torch.no_grad():
            return retrieval_metrics(m.similarity(m.encode_texts(CAPTIONS), m.encode_images(images)), pids, pids)

    assert metrics(reloaded) == metrics(model)
    assert torch.equal(reloaded.encode_images(images), model.encode_images(images))
    assert any((tmp_path / "cache" / "features" / "lgur_text").rglob("*.pt"))  # MiniLM outputs cached on disk

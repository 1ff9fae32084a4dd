"""CADA: shapes, shared encoder/decoder, hard negatives, attribute masking, losses against naive loops,
ablation switches, re-ranking and the paper-profile parameter count."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tbpr.losses import atp_loss, cmpm_loss, mam_loss, ndf_loss
from tbpr.papers import ablation_rows, count_parameters, create_model, parameter_table
from tbpr.papers.cada import model as cada_mod

LEXICON = {"red": "JJ", "blue": "JJ", "white": "JJ", "black": "JJ", "long": "JJ", "and": "CC", "man": "NN",
           "woman": "NN", "shirt": "NN", "hair": "NN", "bag": "NN", "pants": "NNS", "shoes": "NNS"}
CAPTIONS = ["A man in a red shirt and blue pants.", "the woman has long black hair , white shoes",
            "a man carrying a black bag", "woman wearing white and blue shirt ; red shoes"]
WORDS = sorted({w for c in CAPTIONS for w, _, _ in cada_mod.caption_words(c)})


@pytest.fixture(autouse=True)
def lexicon_tagger(monkeypatch):
    monkeypatch.setattr(cada_mod, "_pos_tag", lambda words: [LEXICON.get(w, "DT") for w in words])


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("cada", "smoke", vocab=WORDS, **overrides)


def batch(model, n=4, pids=(0, 0, 1, 2)):
    h, w = model.cfg.data.image_size
    g = torch.Generator().manual_seed(1)
    return {"images": torch.randn(n, 3, h, w, generator=g), "pids": torch.tensor(pids[:n]),
            "captions": CAPTIONS[:n]}


# ----------------------------------------------------------------------------- text processing
def test_caption_words_follow_the_official_preprocessing():
    words = cada_mod.caption_words('A man: (red) "shirt", pants!')
    assert [w for w, _, _ in words] == ["a", "man", "red", "shirt", ",", "pants"]
    caption = 'A man: (red) "shirt", pants!'
    assert all(caption[a:b].lower() == w for w, a, b in words)
    assert len(cada_mod.caption_words(" ".join(["w"] * 100), max_words=72)) == 72


def test_attribute_chunks_use_the_adj_cc_noun_grammar():
    tags = ["DT", "JJ", "NN", "VBG", "JJ", "CC", "JJ", "NN", "NNS", "NN", "IN", "JJ"]
    assert cada_mod.attribute_chunks(tags) == [[1, 2], [4, 5, 6, 7, 8], [9], [11]]


def test_tokenizer_maps_chunks_to_token_positions_after_cls():
    model = tiny()
    enc = model.tokenizer.encode(CAPTIONS[0])  # a man in a red shirt and blue pants
    words = [w for w, _, _ in enc.words]
    assert enc.ids[0] == model.tokenizer.cls_id and enc.ids[enc.n_tokens - 1] == model.tokenizer.sep_id
    red = words.index("red") + 1
    # "red shirt and blue pants" -> "red shirt" then "blue pants" ("shirt" ends the first chunk)
    assert enc.chunks == [[2], [red, red + 1], [red + 3, red + 4]]  # "man" alone is a chunk too


# ----------------------------------------------------------------------------- shapes and sharing
def test_image_tokens_and_decoder_outputs_have_the_paper_shapes():
    model = tiny().eval()
    b = batch(model)
    V = model.encode_image_tokens(b["images"])
    gh, gw = model.visual_encoder.grid
    assert V.shape == (4, 1 + gh * gw, model.cfg.vision.width)
    ids, att = model.tokenizer.batch(b["captions"], "cpu")
    D, maps = model.decode(ids, att, V, return_probs=True)
    assert D.shape == (4, model.cfg.text.text_len, model.cfg.text.width)
    assert maps[0].shape == (4, model.cfg.text.heads, model.cfg.text.text_len, 1 + gh * gw)
    assert torch.allclose(maps[0].sum(-1), torch.ones(()))


@pytest.mark.parametrize("table", ["table5", "table5_cpu"])
def test_number_of_groups_matches_table5(table):
    expected = {"36/36": 2, "36/18": 3, "24/24": 3, "48/24": 2, "72/72": 1}
    for label, overrides in ablation_rows("cada", table).items():
        profile = "paper" if table == "table5" else "quick"
        cfg = cada_mod.CADAConfig() if profile == "paper" else create_model("cada", "smoke", vocab=WORDS).cfg
        from tbpr.config import apply_overrides
        cfg = apply_overrides(cfg, overrides)
        assert cada_mod.CADA.num_groups(cfg) == expected[label]
        model = create_model("cada", config=cfg, vocab=WORDS) if profile != "paper" else None
        if model is not None:
            d = torch.randn(3, cfg.text.text_len, cfg.text.width)
            assert model.group_features(d, torch.ones(3, cfg.text.text_len)).shape == (3, expected[label], cfg.text.width)


def test_group_features_are_window_means():
    model = tiny(**{"atp.group_size": 16, "atp.group_stride": 8})
    d = torch.randn(2, model.cfg.text.text_len, model.cfg.text.width)
    g = model.group_features(d, torch.ones(2, model.cfg.text.text_len))
    for m in range(g.shape[1]):
        assert torch.allclose(g[:, m], d[:, 1 + 8 * m:1 + 8 * m + 16].mean(1))


def test_decoder_is_the_text_encoder_with_cross_attention():
    model = tiny().eval()
    b = batch(model)
    ids, att = model.tokenizer.batch(b["captions"], "cpu")
    enc_ids = ids.clone()
    enc_ids[:, 0] = model.tokenizer.enc_id
    before = model.text_encoder(ids, att)[0]
    V = model.encode_image_tokens(b["images"])
    with_image = model.decode(ids, att, V)[0]
    assert torch.equal(model.text_encoder(ids, att)[0], before)  # decoding leaves the encoder untouched
    for layer in model.text_encoder.layers:  # silence the CA sub-layers: only SA/FFN remain, shared
        torch.nn.init.zeros_(layer.cross_attn.out.weight)
        torch.nn.init.zeros_(layer.cross_attn.out.bias)
    silenced = model.decode(ids, att, V)[0]
    assert not torch.allclose(with_image, silenced, atol=1e-3)
    assert torch.allclose(silenced, model.text_encoder(enc_ids, att)[0], atol=1e-4)


def test_separate_ara_decoder_is_causal_cls_first_with_its_own_weights():
    """ara.decoder=separate (official code): BLIP's text decoder, its own layers and word embeddings
    (tied to the MLM head), causal self-attention, the tokenizer's [CLS] first; the encoder keeps the
    cross-attention ATP needs."""
    model = tiny(**{"ara.decoder": "separate"}).eval()
    assert model.text_decoder.causal and not model.text_encoder.causal
    assert hasattr(model.text_encoder.layers[0], "cross_attn") and hasattr(model.text_decoder.layers[0], "cross_attn")
    assert model.mlm_head.word_embeddings[0] is model.text_decoder.word is not model.text_encoder.word
    b = batch(model)
    ids, att = model.tokenizer.batch(b["captions"], "cpu")
    V = model.encode_image_tokens(b["images"])
    d = model.decode_masked(ids, att, V)[0]
    assert (ids[:, 0] == model.tokenizer.cls_id).all()
    assert torch.equal(d, model.text_decoder(ids, att, V)[0])
    changed = ids.clone()
    changed[:, 5] = model.tokenizer.mask_id  # a later token changes nothing before it
    d2 = model.decode_masked(changed, att, V)[0]
    assert torch.allclose(d[:, :5], d2[:, :5], atol=1e-6) and not torch.allclose(d[:, 5:], d2[:, 5:], atol=1e-3)
    shared = tiny().eval()
    shared_d = shared.decode_masked(ids, att, V)[0]
    shared_d2 = shared.decode_masked(changed, att, V)[0]
    assert not torch.allclose(shared_d[:, :5], shared_d2[:, :5], atol=1e-3)  # the paper's is bidirectional


def test_separate_ara_decoder_trains_every_parameter_and_drops_unused_cross_attention():
    model = tiny(**{"ara.decoder": "separate", "ara.mask_rate": 1.0})
    out = model.training_step(batch(model))
    assert set(out) == {"loss", "global", "atp", "ara"}
    out["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    no_atp = tiny(**{"ara.decoder": "separate", "atp.enabled": False})  # Table IV row 2, the code's way
    assert not hasattr(no_atp.text_encoder.layers[0], "cross_attn")
    assert set(no_atp.training_step(batch(no_atp))) == {"loss", "global", "ara"}
    assert not hasattr(tiny(**{"ara.decoder": "separate", "ara.enabled": False}), "text_decoder")
    with pytest.raises(ValueError, match="ara.decoder"):
        tiny(**{"ara.decoder": "own"})


# ----------------------------------------------------------------------------- hard negatives, masking
def test_hard_negatives_are_the_most_similar_other_identity():
    model = tiny()
    torch.manual_seed(3)
    f_v, f_t = torch.randn(8, 5), torch.randn(8, 5)
    pids = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4])
    neg_img, neg_txt = model.hard_negatives(f_v, f_t, pids)
    cos = F.normalize(f_t, dim=-1) @ F.normalize(f_v, dim=-1).T
    for i in range(8):
        others = [j for j in range(8) if pids[j] != pids[i]]
        assert neg_img[i] == max(others, key=lambda j: cos[i, j])
        assert neg_txt[i] == max(others, key=lambda j: cos[j, i])
        assert pids[neg_img[i]] != pids[i] and pids[neg_txt[i]] != pids[i]


def test_masking_covers_whole_chunks_and_never_special_tokens():
    model = tiny(**{"ara.mask_rate": 0.5})
    ids, _ = model.tokenizer.batch(CAPTIONS, "cpu")
    torch.manual_seed(0)
    for _ in range(20):
        masked_ids, masked = model.mask_attributes(CAPTIONS, ids)
        for b, c in enumerate(CAPTIONS):
            enc = model.tokenizer.encode(c)
            chunk_pos = {p for ch in enc.chunks for p in ch}
            assert set(masked[b].nonzero().flatten().tolist()) <= chunk_pos
            for ch in enc.chunks:
                assert masked[b, ch].all() or not masked[b, ch].any()
        assert (masked_ids[masked] == model.tokenizer.mask_id).all()
        assert torch.equal(masked_ids[~masked], ids[~masked])
    full = tiny(**{"ara.mask_rate": 1.0})
    _, masked = full.mask_attributes(CAPTIONS, ids)
    for b, c in enumerate(CAPTIONS):
        assert set(masked[b].nonzero().flatten().tolist()) == {p for ch in full.tokenizer.encode(c).chunks for p in ch}


def test_mask_rate_zero_gives_zero_ara_loss():
    model = tiny(**{"ara.mask_rate": 0.0})
    out = model.training_step(batch(model))
    assert out["ara"].item() == 0.0


# ----------------------------------------------------------------------------- losses vs naive loops
def _naive_q(pids):
    n = len(pids)
    return [[float(pids[i] == pids[j]) / sum(float(pids[i] == pids[k]) for k in range(n)) for j in range(n)]
            for i in range(n)]


def _naive_softmax_row(values):
    m = max(values)
    e = [math.exp(v - m) for v in values]
    return [x / sum(e) for x in e]


def _cos(a, b):
    return float(a @ b) / float(a.norm() * b.norm())


def test_ndf_loss_matches_the_forward_plus_backward_kl_formula():
    torch.manual_seed(0)
    fv, ft, pids = torch.randn(6, 4).double(), torch.randn(6, 4).double(), torch.tensor([0, 0, 1, 2, 2, 2])
    tau, eps, n = 0.5, 1e-8, 6
    q = _naive_q(pids.tolist())
    dirs = {}
    for name, (a, b) in {"i2t": (fv, ft), "t2i": (ft, fv)}.items():
        paper, off_kl, off_ce = 0.0, 0.0, 0.0
        for i in range(n):
            p = _naive_softmax_row([_cos(a[i], b[j]) / tau for j in range(n)])
            fwd = sum(p[j] * math.log(p[j] / (q[i][j] + eps)) for j in range(n))
            bwd = sum(q[i][j] * math.log((q[i][j] + eps) / p[j]) for j in range(n))
            paper += (fwd + bwd) / n
            off_kl += (fwd + bwd) / n / n
            off_ce += -sum(q[i][j] * math.log(p[j]) for j in range(n)) / n
        dirs[name] = (paper, off_kl + off_ce)
    expected_paper = (dirs["i2t"][0] + dirs["t2i"][0]) / 2
    expected_official = (dirs["i2t"][1] + dirs["t2i"][1]) / 2
    assert ndf_loss(fv, ft, pids, tau).item() == pytest.approx(expected_paper, rel=1e-6)
    assert ndf_loss(fv, ft, pids, tau, variant="official").item() == pytest.approx(expected_official, rel=1e-6)


def test_ndf_loss_is_near_zero_when_p_equals_q():
    pids = torch.arange(5)
    f = torch.eye(5).double()
    assert abs(ndf_loss(f, f, pids, 0.02).item()) < 1e-6
    torch.manual_seed(0)
    assert ndf_loss(torch.randn(5, 3), torch.randn(5, 3), pids, 0.02).item() > 0


def test_cmpm_loss_matches_the_original_formula():
    torch.manual_seed(1)
    fv, ft, pids = torch.randn(5, 3).double(), torch.randn(5, 3).double(), torch.tensor([0, 1, 1, 2, 0])
    q, eps, n = _naive_q(pids.tolist()), 1e-8, 5
    total = 0.0
    for a, b in ((fv, ft), (ft, fv)):
        for i in range(n):
            p = _naive_softmax_row([float(a[i] @ (b[j] / b[j].norm())) for j in range(n)])
            total += sum(p[j] * math.log(p[j] / (q[i][j] + eps)) for j in range(n)) / n
    assert cmpm_loss(fv, ft, pids).item() == pytest.approx(total, rel=1e-6)


def test_atp_loss_averages_enc_and_group_cross_entropies_separately():
    torch.manual_seed(2)
    enc, groups = torch.randn(6, 2).double(), torch.randn(6, 3, 2).double()
    labels = torch.tensor([1, 1, 0, 0, 0, 0])
    nll = lambda z, y: -math.log(_naive_softmax_row(z.tolist())[y])  # noqa: E731
    expected = sum(nll(enc[i], labels[i]) for i in range(6)) / 6
    expected += sum(nll(groups[i, m], labels[i]) for i in range(6) for m in range(3)) / 18
    assert atp_loss(enc, groups, labels).item() == pytest.approx(expected, rel=1e-9)


def test_mam_loss_is_cross_entropy_over_all_masked_tokens():
    torch.manual_seed(3)
    logits, targets = torch.randn(7, 11).double(), torch.randint(0, 11, (7,))
    expected = sum(-math.log(_naive_softmax_row(logits[i].tolist())[targets[i]]) for i in range(7)) / 7
    assert mam_loss(logits, targets).item() == pytest.approx(expected, rel=1e-9)
    empty = torch.zeros(0, 11, requires_grad=True)
    assert mam_loss(empty, torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_training_step_total_is_eq8_and_reaches_every_parameter():
    model = tiny(**{"ara.mask_rate": 1.0})
    out = model.training_step(batch(model))
    assert set(out) == {"loss", "global", "atp", "ara"}
    assert out["loss"].item() == pytest.approx((out["global"] + out["atp"] + 0.1 * out["ara"]).item(), rel=1e-6)
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


# ----------------------------------------------------------------------------- ablation switches
def test_table4_rows_remove_the_modules_they_switch_off():
    rows = ablation_rows("cada", "table4")
    # by the paper's row number; rows 3 and 4 (5 and 6) are one model evaluated as G and L, listed
    # as one row ("3/4 ...") or as two rows with the same overrides ("3 ... (G)", "4 ... (L)")
    numbers = {label: label.split()[0].split("/") for label in rows}
    assert sorted(n for ns in numbers.values() for n in ns) == list("0123456")
    counts, parts = {}, {}
    for label, overrides in rows.items():
        model = tiny(**overrides)
        for n in numbers[label]:
            counts[n] = count_parameters(model)
            parts[n] = set(model.training_step(batch(model)))
    full = tiny()
    assert parts["0"] == parts["1"] == {"loss", "global"}
    assert parts["2"] == {"loss", "global", "ara"}
    assert parts["3"] == parts["4"] == {"loss", "global", "atp"}
    assert parts["5"] == parts["6"] == {"loss", "global", "atp", "ara"}
    ca = sum(p.numel() for layer in full.text_encoder.layers for n, p in layer.named_parameters() if "cross" in n)
    heads = sum(p.numel() for p in (*full.itm_head.parameters(), *full.itm_local_head.parameters()))
    mlm = count_parameters(full.mlm_head)  # dense + LN + bias; the tied word matrix belongs to the encoder
    assert counts["5"] == counts["6"] == count_parameters(full)
    assert counts["1"] == counts["5"] - ca - heads - mlm
    assert counts["3"] == counts["4"] == counts["5"] - mlm
    assert counts["2"] == counts["5"] - heads
    assert counts["0"] == counts["1"]


def test_baseline_uses_cmpm_and_row1_uses_ndf():
    tau = tiny().cfg.temperature  # the smoke profile's tau
    for label, loss_fn in (("0 Baseline (CMPM)", cmpm_loss), ("1 +NDF", lambda v, t, y: ndf_loss(v, t, y, tau))):
        model = tiny(**ablation_rows("cada", "table4")[label]).eval()  # eval: no dropout, same features twice
        b = batch(model)
        V = model.encode_image_tokens(b["images"])
        f_v, f_t = model.global_features(V, *model.tokenizer.batch(b["captions"], "cpu"))
        assert model.training_step(b)["global"].item() == pytest.approx(loss_fn(f_v, f_t, b["pids"]).item(), rel=1e-5)


# ----------------------------------------------------------------------------- re-ranking
def test_rerank_adds_the_enc_match_logit_to_the_cosine():
    model = tiny().eval()
    b = batch(model)
    with torch.no_grad():
        t, v = model.encode_texts(b["captions"]), model.encode_images(b["images"])
        topk = torch.tensor([[2, 0], [1, 3], [0, 1], [3, 2]])
        scores = model.rerank(t, v, topk, batch_pairs=3)
        for i in range(4):
            for r, j in enumerate(topk[i].tolist()):
                d, _ = model.decode(t["ids"][i:i + 1], t["mask"][i:i + 1], v["tokens"][j:j + 1])
                expected = model.itm_head(d[:, 0])[0, 1] + t["global"][i] @ v["global"][j]
                assert scores[i, r].item() == pytest.approx(expected.item(), abs=1e-5)


def test_rerank_through_retrieval_metrics_orders_candidates_by_global_plus_local():
    from tbpr.evaluate import retrieval_metrics
    model = tiny().eval()
    b = batch(model)
    pids = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        t, v = model.encode_texts(b["captions"]), model.encode_images(b["images"])
        sim = model.similarity(t, v)
        rerank = lambda qi, topk: model.rerank({k: x[qi] for k, x in t.items()}, v, topk)  # noqa: E731
        dense = model.rerank(t, v, torch.arange(4).repeat(4, 1))  # S for every pair
        one = retrieval_metrics(sim, pids, pids, rerank=rerank, rerank_k=1)
        everything = retrieval_metrics(sim, pids, pids, rerank=rerank, rerank_k=4)
    assert one == retrieval_metrics(sim, pids, pids)  # one candidate: nothing to re-order
    assert everything == retrieval_metrics(dense, pids, pids)


def test_rerank_without_atp_is_refused():
    model = tiny(**{"atp.enabled": False}).eval()
    b = batch(model)
    t, v = model.encode_texts(b["captions"]), model.encode_images(b["images"])
    with pytest.raises(ValueError, match="atp.enabled"):
        model.rerank(t, v, torch.zeros(4, 1, dtype=torch.long))


# ----------------------------------------------------------------------------- figures' internals
def test_word_patch_attention_is_a_distribution_over_patches():
    model = tiny().eval()
    b = batch(model)
    maps = model.word_patch_attention(b["images"], b["captions"])
    assert maps.shape == (4, model.cfg.text.text_len, *model.visual_encoder.grid)
    assert torch.allclose(maps.sum((-1, -2)), torch.ones(()), atol=1e-5)


def test_predict_masked_returns_topk_sorted_probabilities():
    """Per masked position, in the order asked (here reversed): the top-k of the MLM head, which runs
    at the masked positions only; pinned to the head run at every position."""
    model = tiny().eval()
    b = batch(model)
    chunks = [model.tokenizer.encode(c).chunks[0][::-1] for c in b["captions"]]
    preds = model.predict_masked(b["images"], b["captions"], chunks, topk=3)
    ids, att = model.tokenizer.batch(b["captions"], "cpu")
    masked = torch.zeros_like(ids, dtype=torch.bool)
    for b_i, pos in enumerate(chunks):
        masked[b_i, pos] = True
    with torch.no_grad():
        d, _ = model.decode_masked(ids.masked_fill(masked, model.tokenizer.mask_id), att,
                                   model.encode_image_tokens(b["images"]))
        every = model.mlm_head(d).softmax(-1)
    for b_i, per_caption in enumerate(preds):
        assert [p for p, *_ in per_caption] == chunks[b_i]
        for pos, true_id, top_ids, top_p in per_caption:
            assert true_id == ids[b_i, pos] and len(top_ids) == 3 and top_p == sorted(top_p, reverse=True)
            assert top_ids == every[b_i, pos].topk(3).indices.tolist()
            assert np.allclose(top_p, every[b_i, pos].topk(3).values.tolist(), atol=1e-6)


# ----------------------------------------------------------------------------- paper profile
def test_paper_profile_parameter_count_on_meta_device():
    model = create_model("cada", "paper", device="meta")
    table = parameter_table(model)
    assert table["visual_encoder"] == 85_798_656  # ViT-B/16 at 224x224
    # BERT-base with CA in all 12 layers and a 30,524-id vocabulary, no pooler, no token types
    assert table["text_encoder"] == 30524 * 768 + 512 * 768 + 2 * 768 + 12 * (
        3 * (768 * 768 + 768) + (768 * 768 + 768) + 2 * 768  # SA + its LN
        + 4 * (768 * 768 + 768) + 2 * 768  # CA (keys/values from the 768-d ViT) + its LN
        + 768 * 3072 + 3072 + 3072 * 768 + 768 + 2 * 768)  # FFN + its LN
    assert count_parameters(model) == 224_076_608  # the paper's "≈225M"
    assert sum(p.numel() for p in model.parameters() if p.is_meta) == count_parameters(model)


def test_official_profile_parameter_count_is_the_codes_with_its_separate_decoder():
    paper = parameter_table(create_model("cada", "paper", device="meta"))
    model = create_model("cada", "official", device="meta")
    table = parameter_table(model)
    assert table["text_decoder"] == table["text_encoder"] == paper["text_encoder"]  # BERT-base with CA
    assert table["mlm_head"] == paper["mlm_head"] == 768 * 768 + 768 + 2 * 768 + 30524
    assert count_parameters(model) == 361_335_104  # the official code's ~361 M



def test_cpu_profiles_deviate_only_in_documented_hyperparameters_and_the_paper_keeps_tau():
    from tbpr.experiments import get_config
    paper = get_config("cada", "paper")
    assert (paper.temperature, paper.init_std) == (0.02, 0.02)  # the paper's tau; BERT/ViT init
    quick = get_config("cada", "quick")  # from the zoo's aligned member: the paper's tau and init again
    assert (quick.temperature, quick.init_std, quick.pretrained) == (0.02, 0.02, "zoo:blip-s")
    assert quick.text.tokenizer == "bert" and quick.text.vocab_size == 30524  # BLIP's WordPiece ids
    smoke = get_config("cada", "smoke")  # random weights: tau = 0.02 collapses (paper.yaml header)
    assert smoke.temperature == 0.5 and smoke.init_std == pytest.approx(32 ** -0.5, abs=1e-3)
    for cfg, width in ((quick, 64), (smoke, 32)):
        assert cfg.text.width == cfg.vision.width == width
        assert cfg.global_loss == "ndf" and cfg.atp.enabled and cfg.ara.enabled  # every module and loss stays


def test_words_tokenizer_without_vocab_uses_every_whole_wordpiece_word():
    from tbpr.data.text import wordpiece_words
    words = list(wordpiece_words())
    model = create_model("cada", "smoke")  # no training captions
    assert model.vocab == words and model.extra_state() == {"vocab": words}
    assert model.cfg.text.vocab_size == len(cada_mod.SPECIALS) + len(words) == len(model.tokenizer)
    tok = model.tokenizer
    assert tok.unk_id not in tok.encode("A man in a red jacket and black shoes.").ids
    assert tok.encode("a qzxv bag").ids[2] == tok.unk_id  # a word outside the WordPiece words
    feats = model.encode_texts(["a man in a red jacket", "a woman with a blue bag"])
    assert feats["global"].shape == (2, model.cfg.embed_dim) and torch.isfinite(feats["global"]).all()
    with pytest.raises(ValueError, match="needs vocab"):  # the tokenizer itself still needs its words
        cada_mod.CaptionTokenizer("words", text_len=16, max_words=14)


@pytest.mark.parametrize("decoder", ["shared", "separate"])
def test_blip_checkpoint_names_load_into_the_model(tmp_path, decoder):
    model = tiny(**{"pretrained": None, "ara.decoder": decoder})
    ours_to_blip = [  # BLIP model_base.pth naming of each of our tensors (the inverse of load_blip's table)
        (r"^text_encoder\.word\.", "text_encoder.embeddings.word_embeddings."),
        (r"^text_encoder\.position\.", "text_encoder.embeddings.position_embeddings."),
        (r"^text_encoder\.norm\.", "text_encoder.embeddings.LayerNorm."),
        (r"^text_encoder\.layers\.(\d+)\.self_attn\.out\.", r"text_encoder.encoder.layer.\1.attention.output.dense."),
        (r"^text_encoder\.layers\.(\d+)\.self_attn\.", r"text_encoder.encoder.layer.\1.attention.self."),
        (r"^text_encoder\.layers\.(\d+)\.self_norm\.", r"text_encoder.encoder.layer.\1.attention.output.LayerNorm."),
        (r"^text_encoder\.layers\.(\d+)\.cross_attn\.out\.", r"text_encoder.encoder.layer.\1.crossattention.output.dense."),
        (r"^text_encoder\.layers\.(\d+)\.cross_attn\.", r"text_encoder.encoder.layer.\1.crossattention.self."),
        (r"^text_encoder\.layers\.(\d+)\.cross_norm\.", r"text_encoder.encoder.layer.\1.crossattention.output.LayerNorm."),
        (r"^text_encoder\.layers\.(\d+)\.fc1\.", r"text_encoder.encoder.layer.\1.intermediate.dense."),
        (r"^text_encoder\.layers\.(\d+)\.fc2\.", r"text_encoder.encoder.layer.\1.output.dense."),
        (r"^text_encoder\.layers\.(\d+)\.ffn_norm\.", r"text_encoder.encoder.layer.\1.output.LayerNorm."),
        (r"^mlm_head\.dense\.", "text_decoder.cls.predictions.transform.dense."),
        (r"^mlm_head\.norm\.", "text_decoder.cls.predictions.transform.LayerNorm."),
        (r"^mlm_head\.bias$", "text_decoder.cls.predictions.bias"),
    ]
    import re
    blip = {}
    for key, value in model.state_dict().items():
        if key.startswith("itm_local_head"):
            continue  # not in BLIP: stays random
        # the separate decoder is named as BLIP's text_decoder.bert, renamed as the encoder's BERT
        prefix = "text_decoder.bert." if key.startswith("text_decoder.") else "text_encoder."
        key = re.sub(r"^text_decoder\.", "text_encoder.", key)
        for pattern, repl in ours_to_blip:
            if re.search(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        blip[re.sub(r"^text_encoder\.", prefix, key) if key.startswith("text_encoder.") else key] = value.clone()
    blip["visual_encoder_m.cls_token"] = torch.zeros(1)  # momentum encoder: dropped
    blip.setdefault("text_decoder.bert.embeddings.LayerNorm.bias", torch.zeros(1))  # the shared model drops it
    torch.save({"model": blip}, tmp_path / "model_base.pth")
    torch.manual_seed(123)
    loaded = create_model("cada", "smoke", vocab=WORDS, pretrained=str(tmp_path / "model_base.pth"),
                          **{"ara.decoder": decoder})
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value) != (key == "itm_local_head.weight"), key
    with pytest.raises(FileNotFoundError, match="pretrained"):
        create_model("cada", "smoke", vocab=WORDS, pretrained=str(tmp_path / "missing.pth"))


def test_cada_wordpiece_specials_do_not_leak_into_the_shared_bert_tokenizer():
    from tbpr.data.text import bert_tokenizer
    shared = len(bert_tokenizer())
    tok = cada_mod.CaptionTokenizer("bert", text_len=16, max_words=14)
    assert len(tok.wordpiece) == shared + 2 and len(bert_tokenizer()) == shared

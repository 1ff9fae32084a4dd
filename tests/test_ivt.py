"""IVT: parameter count, shapes, losses against the paper's formulas, the ablation switches,
MLA texts, BMM token dropping, ViT/BERT initialisation and the pre-training stage."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tbpr.losses import cmpm_loss, itc_loss, itm_loss
from tbpr.papers import count_parameters, create_model, get_config, recipe
from tbpr.papers.ivt import model as ivt_module
from tbpr.papers.ivt.model import (IVT, bmm_keep_index, load_vit_bert, phrase_candidates,
                             word_level_text)


def tiny(**overrides):
    """Smoke-sized IVT without the pre-training stage (random init)."""
    return create_model("ivt", "smoke", **{"pretrain": False, **overrides})


def batch(model, n=8, views=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = model.cfg.data.image_size
    shape = (n, views, 3, h, w) if views > 1 else (n, 3, h, w)
    captions = [f"a man in a {c} shirt, blue jeans and white shoes. he carries a black backpack."
                for c in ("red", "green", "yellow", "grey") * (n // 4)]
    return {"images": torch.randn(shape, generator=g), "pids": torch.arange(n) // 2,
            "captions": captions, "image_idx": torch.arange(n), "caption_idx": torch.arange(n)}


# --- parameter count (Table 5) -----------------------------------------------------------------
def test_paper_profile_has_exactly_the_papers_166_45_million_parameters():
    assert count_parameters(create_model("ivt", "paper", device="meta")) == 166_450_176


def test_overlapping_stride_12_of_the_official_scripts_gives_a_different_count():
    model = create_model("ivt", "paper", device="meta", patch_stride=12)
    assert model.cfg.patch_grid == (31, 10)
    assert count_parameters(model) == 166_631_424


def test_quick_and_smoke_keep_every_module_and_loss():
    paper = get_config("ivt", "paper")
    for profile in ("quick", "smoke"):
        cfg = get_config("ivt", profile)
        assert (cfg.mla, cfg.bmm, cfg.pretrain) == (paper.mla, paper.bmm, paper.pretrain) == (True,) * 3
        assert cfg.mask_ratio == paper.mask_ratio and cfg.data.n_views == 3
        assert cfg.pretrain_corpus  # the Pre stage runs on a disjoint synthetic corpus


# --- losses against naive loops of the paper's formulas ----------------------------------------
def naive_cmpm(fv, ft, pids, q_norm):
    n, total = len(pids), 0.0
    for a, b in ((fv, ft), (ft, fv)):
        for i in range(n):
            logits = [float(a[i] @ (b[j] / b[j].norm())) for j in range(n)]
            z = sum(math.exp(x) for x in logits)
            n_pos = sum(int(pids[i] == pids[k]) for k in range(n))
            for j in range(n):
                p = math.exp(logits[j]) / z
                q = float(pids[i] == pids[j]) / (n_pos if q_norm == "l1" else math.sqrt(n_pos))
                total += p * (math.log(p) - math.log(q + 1e-8)) / n
    return total


@pytest.mark.parametrize("q_norm", ["l1", "l2"])
def test_cmpm_on_mla_batches_matches_the_naive_formula(q_norm):
    g = torch.Generator().manual_seed(1)
    pids = torch.tensor([0, 0, 1, 2]).repeat(3)  # 3B rows: cross-level pairs are positives too
    fv, ft = torch.randn(12, 6, generator=g, dtype=torch.float64), torch.randn(12, 6, generator=g, dtype=torch.float64)
    assert float(cmpm_loss(fv, ft, pids, q_norm=q_norm)) == pytest.approx(naive_cmpm(fv, ft, pids, q_norm), rel=1e-6)


def test_itc_loss_matches_the_naive_soft_target_formula():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 5, generator=g, dtype=torch.float64)
    ids = torch.tensor([0, 1, 1, 2, 3])
    same = ids[:, None] == ids[None, :]
    total = 0.0
    for m in (logits, logits.T):
        for i in range(5):
            z = sum(math.exp(float(m[i, k])) for k in range(5))
            n_pos = int(same[i].sum())
            for j in range(5):
                if same[i, j]:
                    total -= (1 / n_pos) * (float(m[i, j]) - math.log(z)) / 5
    assert float(itc_loss(logits, same)) == pytest.approx(total / 2, rel=1e-9)


def test_itm_loss_is_the_mean_negative_log_likelihood_of_the_match_label():
    logits = [[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]]
    labels = [1, 0, 1]
    naive = -sum(math.log(math.exp(row[y]) / sum(math.exp(x) for x in row))
                 for row, y in zip(logits, labels)) / 3
    assert float(itm_loss(torch.tensor(logits), torch.tensor(labels))) == pytest.approx(naive, rel=1e-6)


# --- BMM ------------------------------------------------------------------------------------------
def test_bmm_keeps_cls_and_order_and_drops_at_most_floor_r_n_tokens():
    torch.manual_seed(0)
    counts = set()
    for _ in range(300):
        keep = bmm_keep_index(193, 0.3)
        assert keep[0] == 0 and bool((keep[1:] > keep[:-1]).all())
        counts.add(193 - len(keep))
    assert counts == set(range(0, 58))  # k ~ U{0..⌊0.3·193⌋ = 57}
    assert len(bmm_keep_index(193, 0.3, "fixed")) == 193 - 57


def test_bmm_drops_tokens_only_in_training_and_only_when_switched_on():
    model = tiny(drop_path=0.0)
    z = model.visual_embed(torch.randn(2, 3, *model.cfg.data.image_size))
    n = z.shape[1]
    model.train()
    lengths = {model.encode_tokens(z, "img").shape[1] for _ in range(30)}
    assert max(lengths) == n and min(lengths) < n and min(lengths) >= n - math.floor(0.3 * n)
    model.cfg.bmm = False
    assert {model.encode_tokens(z, "img").shape[1] for _ in range(10)} == {n}
    model.cfg.bmm = True
    model.eval()
    assert model.encode_tokens(z, "img").shape[1] == n


# --- the unified encoder ------------------------------------------------------------------------
def test_blocks_share_attention_and_layernorms_but_route_the_mlp_by_modality():
    model = tiny().eval()
    block = model.blocks[0]
    x = torch.randn(2, 5, model.cfg.embed_dim)
    img, txt = block(x, "img"), block(x, "txt")
    with torch.no_grad():
        block.mlp_txt.fc2.weight.mul_(0)
        block.mlp_txt.fc2.bias.mul_(0)
    assert torch.equal(block(x, "img"), img)
    assert not torch.allclose(block(x, "txt"), txt)
    # the text branch without its MLP is exactly the shared attention residual
    attn_only = x + block.attn(block.norm1(x))
    assert torch.allclose(block(x, "txt"), attn_only, atol=1e-6)


def test_padding_keys_do_not_change_the_text_cls_output():
    model = tiny().eval()
    ids = torch.tensor([[101, 2000, 2001, 102]])
    padded = torch.tensor([[101, 2000, 2001, 102, 0, 0]])
    a = model.encode_tokens(model.text_embed(ids), "txt", torch.ones(1, 4))
    b = model.encode_tokens(model.text_embed(padded), "txt", torch.tensor([[1, 1, 1, 1, 0, 0]]))
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-5)


@pytest.mark.parametrize("bmm_keep", [None, [0, 2, 3, 5, 8, 9, 13]])
def test_length_buckets_give_the_text_cls_of_one_joint_padding(bmm_keep, monkeypatch):
    model = tiny().eval()  # no dropout; BMM's kept positions are fixed by hand instead
    keep = None if bmm_keep is None else torch.tensor(bmm_keep)
    monkeypatch.setattr(model, "_bmm_keep", lambda n, device: keep)
    texts = ["black pants", "a red jacket, blue jeans", "shoes",
             "a man in a red jacket, blue jeans and white shoes. he carries a black backpack."] * 2
    ids, mask = model.tokenize(texts)
    joint = model._encode(model.text_embed(ids), "txt", mask, keep)[:, 0]
    for bucket_size in (1, 3, len(texts)):
        assert torch.allclose(model.text_cls_by_length(ids, mask, bucket_size), joint, atol=1e-5)


def test_shapes_of_features_similarity_and_alignment_maps():
    model = tiny().eval()
    cfg = model.cfg
    images = torch.randn(3, 3, *cfg.data.image_size)
    captions = ["a woman in a red coat", "black pants", "a man with a blue backpack and grey shoes"]
    f_img, f_txt = model.encode_images(images), model.encode_texts(captions)
    assert f_img.shape == f_txt.shape == (3, cfg.embed_dim)
    sim = model.similarity(f_txt[:2], f_img)
    assert sim.shape == (2, 3) and float(sim.detach().abs().max()) <= 1 + 1e-6
    assert model.alignment_maps(images, captions).shape == (3, *cfg.patch_grid)
    head = torch.nn.Linear(cfg.embed_dim, 2)
    assert model.cross_encoder_scores(images, captions, head).shape == (3,)


def test_biases_get_twice_the_learning_rate():
    model = tiny()
    groups = {g["lr_mult"]: g["params"] for g in model.param_groups()}
    assert set(groups) == {1.0, 2.0}
    biases = {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
    assert {id(p) for p in groups[2.0]} == biases


# --- MLA ------------------------------------------------------------------------------------------
def test_phrase_level_candidates_are_longest_clause_and_rest_per_sentence():
    caption = "A man wears a red shirt, blue jeans, and shoes. He carries a bag."
    assert phrase_candidates(caption) == ("a man wears a red shirt", "blue jeans, and shoes",
                                          "he carries a bag")
    assert phrase_candidates("tall.") == ("tall.",)  # nothing longer than 5 characters: the caption


def test_word_level_text_is_a_random_nonempty_subset_of_attribute_chunks(monkeypatch):
    chunks = ("red shirt", "blue jeans", "black backpack")
    monkeypatch.setattr(ivt_module, "attribute_phrases", lambda caption: chunks)
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        parts = word_level_text("any caption").split(", ")
        assert 1 <= len(parts) == len(set(parts)) and set(parts) <= set(chunks)
        seen.add(len(parts))
    assert seen == {1, 2, 3}


def _write_word_dictionary(path, entries):
    """A file in the official code's format (cuhk_pedes_att.json): one item per caption."""
    items = [{"captions": c, "att": att, "id": i, "file_path": f"{i}.jpg", "processed_tokens": []}
             for i, (c, att) in enumerate(entries.items())]
    path.write_text(json.dumps({"train": items, "val": [], "test": []}))
    return str(path)


def test_word_dictionary_gives_subsets_of_the_captions_attributes_as_the_code(tmp_path):
    """word_level=dictionary (official): 1..all of the caption's dictionary entries, in random order;
    a caption with no entries takes a phrase-level clause, as datasets/bases.py does."""
    b = batch(tiny(), n=4)
    captions = list(dict.fromkeys(b["captions"]))
    entries = {c: {"upper": f"{c.split()[4]} shirt", "lower": "blue jeans", "bag": "black backpack"}
               for c in captions[:-1]}
    entries[captions[-1].upper()] = {}  # looked up as the readers clean captions, lower-cased
    path = _write_word_dictionary(tmp_path / "cuhk_pedes_att.json", entries)
    model = tiny(word_level="dictionary", word_dictionary=path)
    with pytest.raises(ValueError, match="no word dictionary attached"):
        model.training_step(b)
    records = [SimpleNamespace(captions=captions)]
    recipe("ivt").attach_training_data(model, records)
    torch.manual_seed(0)
    seen = set()
    for _ in range(100):
        parts = word_level_text(captions[0], "dictionary", model.word_dictionary).split(", ")
        assert 1 <= len(parts) == len(set(parts)) and set(parts) <= set(entries[captions[0]].values())
        seen.add(len(parts))
    assert seen == {1, 2, 3}
    assert word_level_text(captions[-1], "dictionary", model.word_dictionary) in phrase_candidates(captions[-1])
    assert torch.isfinite(model.training_step(b)["loss"])
    with pytest.raises(ValueError, match="lacks 1 of the training captions"):
        recipe("ivt").attach_training_data(model, [SimpleNamespace(captions=["a woman in a long coat"])])
    with pytest.raises(FileNotFoundError, match="word_dictionary='missing.json' not found.*word_level=nltk"):
        recipe("ivt").attach_training_data(tiny(word_level="dictionary", word_dictionary="missing.json"), records)
    plain = tiny()
    recipe("ivt").attach_training_data(plain, records)
    assert plain.word_dictionary is None  # word_level=nltk reads nothing


def test_attribute_chunks_are_adjective_noun_runs_without_person_words():
    chunks = ivt_module.attribute_phrases(
        "The man wears a red shirt and black pants. He carries a small backpack.")
    assert "red shirt" in chunks and "black pants" in chunks and "small backpack" in chunks
    assert not any(c.split()[-1] in ivt_module.PERSON_WORDS for c in chunks)


def test_mla_feeds_three_levels_of_3b_pairs_and_the_switch_removes_it(monkeypatch):
    seen = {}

    def spy(fv, ft, pids, q_norm):
        seen.update(n_img=len(fv), n_txt=len(ft), pids=pids.clone())
        return (fv.sum() + ft.sum()) * 0.0

    monkeypatch.setattr(ivt_module, "cmpm_loss", spy)
    model = tiny()
    b = batch(model)
    model.training_step(b)
    assert seen["n_img"] == seen["n_txt"] == 24
    assert torch.equal(seen["pids"], b["pids"].repeat(3))
    with pytest.raises(ValueError, match="n_views=3"):
        model.training_step(batch(model, views=1))
    no_mla = tiny(mla=False, data={"n_views": 1})
    no_mla.training_step(batch(no_mla, views=1))
    assert seen["n_img"] == seen["n_txt"] == 8


def test_training_step_returns_a_finite_loss_with_gradients_on_both_experts():
    model = tiny()
    out = model.training_step(batch(model))
    assert torch.isfinite(out["loss"]) and out.keys() >= {"loss", "cmpm"}
    out["loss"].backward()
    for name in ("blocks.0.mlp_img.fc1.weight", "blocks.0.mlp_txt.fc1.weight",
                 "blocks.0.attn.qkv.weight", "visual_embed.type_embed", "text_embed.word_embeddings.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


# --- initialisation and the "Pre" stage ------------------------------------------------------------
def test_vit_and_bert_weights_are_mapped_by_name(tmp_path):
    timm = pytest.importorskip("timm")
    from transformers import BertConfig, BertModel
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=8,
                            embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64))
    bert.save_pretrained(tmp_path / "bert")
    model = tiny(embed_dim=32, depth=2, mlp_ratio=2.0, vocab_size=100, patch_size=8, patch_stride=8,
                 pretrained_vit=str(tmp_path / "vit.pth"), pretrained_bert=str(tmp_path / "bert"))
    v, b = vit.state_dict(), bert.state_dict()
    assert torch.equal(model.blocks[1].attn.qkv.weight, v["blocks.1.attn.qkv.weight"])
    assert torch.equal(model.blocks[1].mlp_img.fc2.weight, v["blocks.1.mlp.fc2.weight"])
    assert torch.equal(model.blocks[1].mlp_txt.fc1.weight, b["encoder.layer.1.intermediate.dense.weight"])
    assert torch.equal(model.blocks[0].mlp_txt.fc2.bias, b["encoder.layer.0.output.dense.bias"])
    assert torch.equal(model.text_embed.word_embeddings.weight, b["embeddings.word_embeddings.weight"])
    assert torch.equal(model.visual_embed.cls_token, v["cls_token"])
    pos = model.visual_embed.pos_embed
    assert pos.shape[1] == 1 + 4 * 2 and torch.equal(pos[:, 0], v["pos_embed"][:, 0])
    resized = F.interpolate(v["pos_embed"][:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(4, 2),
                            mode="bilinear", align_corners=False)
    assert torch.allclose(pos[0, 1:], resized[0].permute(1, 2, 0).reshape(8, 32))


def test_pretrain_switch_starts_from_the_pretrained_encoder(tmp_path):
    from safetensors.torch import save_file
    source = tiny()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "enc.safetensors"))
    with_pre = tiny(pretrain=True, pretrain_checkpoint=str(tmp_path / "enc.safetensors"))
    assert not torch.equal(with_pre.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)  # built only
    recipe("ivt").warm_start(with_pre, [])  # what experiments.build_model does before training
    without = tiny()
    recipe("ivt").warm_start(without, [])  # pretrain=False: nothing to start from
    for k, v in source.state_dict().items():
        assert torch.equal(with_pre.state_dict()[k], v), k
    assert not torch.equal(without.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="pretrain_checkpoint"):
        recipe("ivt").warm_start(tiny(pretrain=True, pretrain_corpus=None), [])


def test_pretrainer_computes_itc_itm_mlm_and_trains_the_fusion_encoder():
    cfg = ivt_module.pretrain_stage_config(get_config("ivt", "smoke", {"pretrain": False}))
    model = ivt_module.IVTPretrainer(cfg)
    assert not model.encoder.cfg.bmm
    out = model.training_step(batch(model.encoder, views=1))
    assert all(torch.isfinite(out[k]) for k in ("itc", "itm", "mlm"))
    assert float(out["loss"].detach()) == pytest.approx(float(out["itc"] + out["itm"] + out["mlm"]), rel=1e-5)
    out["loss"].backward()
    assert model.fusion[0].cross_attn.in_proj_weight.grad.abs().sum() > 0
    assert model.temp.grad is not None


def test_mlm_masks_whole_words_never_special_tokens():
    tok = ivt_module._tokenizer(None)
    enc = tok(["a man in a red shirt and blue jeans carrying a backpack"] * 20, return_tensors="pt")
    torch.manual_seed(0)
    masked, labels = ivt_module.mask_words(enc["input_ids"], enc["attention_mask"], 0.25, tok)
    chosen = labels != -100
    assert chosen.any(1).all() and chosen.sum(1).max() <= 8
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # [CLS], [SEP]
    assert torch.equal(labels[chosen], enc["input_ids"][chosen])
    assert torch.equal(masked[~chosen], enc["input_ids"][~chosen])
    assert (masked[chosen] == tok.mask_token_id).float().mean() > 0.5

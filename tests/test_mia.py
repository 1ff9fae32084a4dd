"""MIA model: shapes, ablation switches, the paper-profile size, the step-training recipe."""
import dataclasses

import pytest
import torch

from tbpr.data.text import HashVocabulary, Vocabulary
from tbpr.papers import count_parameters, create_model, get_config, recipe
from tbpr.papers.mia.model import MIA, attended_cosine, fine_grained_scores, pad_phrases

CAPTIONS = ["A woman wearing a red jacket and black and white shoes, carrying her phone.",
            "The man has dark slacks and a yellow short sleeve shirt.",
            "a person in a blue coat", "A girl with a pink bag and grey pants"]
TINY = dict(cnn="vgg_mini", cnn_channels=(4, 8, 8, 8), part_dim=4, embed_dim=8, word_dim=4,
            gru_hidden=6, mlp_hidden=8, num_classes=5, pretrained=None)


def tiny(**overrides):
    torch.manual_seed(0)
    vocab = Vocabulary.build(CAPTIONS, min_count=1, unknown="token")
    return create_model("mia", "smoke", vocab=vocab, **{**TINY, **overrides})


def batch(n=4):
    g = torch.Generator().manual_seed(1)
    return {"images": torch.randn(n, 3, 48, 16, generator=g), "pids": torch.tensor([0, 1, 2, 2])[:n],
            "captions": CAPTIONS[:n], "image_idx": torch.tensor([0, 1, 2, 3])[:n],
            "caption_idx": torch.arange(n)}


def test_paper_profile_parameter_count_follows_the_papers_dimensions():
    model = create_model("mia", "paper", device="meta")
    D, d_p, E, H, V, K, C_f = 1024, 256, 300, 1024, 9410, 11003, 512
    linear = lambda i, o: i * o + o  # noqa: E731
    gru_direction = 3 * (E * H + H * H + 2 * H)
    expected = {
        "cnn": 14_714_688,  # VGG-16 conv trunk (13 conv layers)
        "global_vis_fc": linear(C_f, D), "part_conv": linear(C_f, d_p), "text_embed": V * E,
        "bigru": 2 * gru_direction, "sent_fc": linear(2 * H, D), "phrase_fc": linear(2 * H, D),
        "id_cls": linear(D, K), "mlp_v_rga": linear(d_p, D) + linear(D, D),
        "mlp_t_rga": 2 * linear(D, D), "mlp_v_bfm": linear(d_p, D) + linear(D, D),
        "mlp_t_bfm": 2 * linear(D, D)}
    got = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    assert got == expected
    assert count_parameters(model) == sum(expected.values()) == 48_639_635
    assert next(model.parameters()).device.type == "meta"


def test_cpu_profiles_keep_every_module_of_the_paper():
    paper = {n for n, _ in create_model("mia", "paper", device="meta").named_children()}
    for profile in ("quick", "smoke"):
        cfg = get_config("mia", profile)
        assert cfg.gc and cfg.rga and cfg.bfm == "step3" and cfg.num_parts == 6
        assert cfg.step1_objective == "id" and cfg.step2_id and cfg.recipe == "step"
        names = {n for n, _ in create_model("mia", profile, device="meta").named_children()}
        assert names == paper


@pytest.mark.parametrize("overrides, removed", [
    ({"rga": False, "bfm": "off"}, {"part_conv", "phrase_fc", "mlp_v_rga", "mlp_t_rga", "mlp_v_bfm", "mlp_t_bfm"}),
    ({"bfm": "off"}, {"mlp_v_bfm", "mlp_t_bfm"}),
    ({"rga": False}, {"mlp_v_rga", "mlp_t_rga"}),
    ({"gc": False, "rga": False, "bfm": "joint", "recipe": "combined"}, {"global_vis_fc", "sent_fc", "id_cls", "mlp_v_rga", "mlp_t_rga"}),
])
def test_turning_a_granularity_off_removes_its_modules(overrides, removed):
    full, ablated = tiny(), tiny(**overrides)
    full_names = dict(full.named_children())
    assert set(full_names) - {n for n, _ in ablated.named_children()} == removed
    removed_params = sum(count_parameters(full_names[n]) for n in removed)
    assert count_parameters(full) - count_parameters(ablated) == removed_params
    assert set(ablated.encode_texts(CAPTIONS)) < set(full.encode_texts(CAPTIONS)) or "T" not in ablated.encode_texts(CAPTIONS)


def test_encoders_give_the_shapes_of_the_spec():
    model = tiny().eval()
    with torch.no_grad():
        img, txt = model.encode_images(batch()["images"]), model.encode_texts(CAPTIONS)
    assert img["I"].shape == (4, 8) and img["P_rga"].shape == img["P_bfm"].shape == (4, 6, 8)
    assert txt["T"].shape == (4, 8)
    phrases = [[t for _, _, t in model.phrases_of(c)] for c in CAPTIONS]
    assert phrases[0] == ["woman", "red jacket", "black and white shoes", "phone"]  # determiners dropped
    assert phrases[1] == ["man", "dark slacks", "yellow short sleeve shirt"]
    assert [len(n) for n in txt["N_bfm"]] == [len(p) for p in phrases]
    assert all(n.shape[1] == 8 for n in txt["N_rga"])
    all_words = tiny(phrases="all_words")
    assert [t for _, _, t in all_words.phrases_of(CAPTIONS[2])] == ["a", "person", "in", "a", "blue", "coat"]


def test_similarity_is_the_fused_pairwise_score_and_chunking_changes_nothing():
    model = tiny().eval()
    with torch.no_grad():
        img, txt = model.encode_images(batch()["images"]), model.encode_texts(CAPTIONS)
        whole = model.pairwise_scores(txt, img)
        chunked = model.pairwise_scores(txt, img, chunk_elements=1)  # one text per chunk
        for key in "GITPN":
            assert torch.allclose(whole[key], chunked[key], atol=1e-6)
        phrases, mask = pad_phrases(txt["N_bfm"])
        s_p, s_n = fine_grained_scores(phrases, mask, img["P_bfm"])
        rga_phrases, rga_mask = pad_phrases(txt["N_rga"])
        s_t = attended_cosine(img["I"], rga_phrases, rga_mask).T
        s_i = attended_cosine(txt["T"], img["P_rga"])
        s_g = torch.nn.functional.cosine_similarity(txt["T"][:, None], img["I"][None], dim=-1)
        want = s_g + 1.0 * (s_i + s_t) / 2 + 0.5 * (s_p + s_n) / 2
        assert torch.allclose(model.similarity(txt, img), want, atol=1e-6)
        model.cfg = dataclasses.replace(model.cfg, lambda1=0.0, lambda2=0.0)
        assert torch.allclose(model.similarity(txt, img), s_g, atol=1e-6)
        v = model.relation_attention(txt, img)
        assert v.shape == (4, 4, 6) and torch.allclose(v.sum(-1), torch.ones(4, 4))
        alpha = model.phrase_part_attention(txt, img, 0)
        assert alpha.shape == (4, 4, 6) and torch.allclose(alpha.sum(-1), torch.ones(4, 4))


def test_paper_recipe_is_three_steps_with_the_papers_epochs_and_rates():
    model = create_model("mia", "paper", device="meta")
    plan = [(name, c.epochs, c.lr, c.schedule, c.milestones) for name, c in recipe("mia").stages(model)]
    assert plan == [("step1", 10, 1e-3, "constant", ()), ("step2", 15, 2e-4, "multistep", (10,)),
                    ("step3", 5, 2e-4, "constant", ())]
    assert all(c.optimizer == "adam" and c.weight_decay == 0 for _, c in recipe("mia").stages(model))
    combined = create_model("mia", "paper", device="meta", bfm="off", recipe="combined")
    assert [(n, c.epochs, c.lr, c.milestones) for n, c in recipe("mia").stages(combined)] == [
        ("combined", 25, 2e-4, (10, 20))]


def _one_update(model, stage):
    recipe("mia").enter_stage(model, stage)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model.training_step(batch())
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    return out, changed


def test_each_step_trains_only_its_modules_with_its_losses():
    model = tiny()
    out, changed = _one_update(model, "step1")
    assert set(out) == {"loss", "id_image", "id_text"}
    assert changed == {"text_embed", "bigru", "sent_fc", "global_vis_fc", "id_cls"}  # CNN and its BN stats fixed
    out, changed = _one_update(model, "step2")
    assert set(out) == {"loss", "id_image", "id_text", "match_global", "match_i2t", "match_t2i"}
    assert changed == {"cnn", "global_vis_fc", "part_conv", "text_embed", "bigru", "sent_fc", "phrase_fc",
                       "id_cls", "mlp_v_rga", "mlp_t_rga"}
    out, changed = _one_update(model, "step3")
    assert set(out) == {"loss", "match_p2n", "match_n2p"} and changed == {"mlp_v_bfm", "mlp_t_bfm"}
    assert out["loss"].item() == pytest.approx((out["match_p2n"] + out["match_n2p"]).item())


def test_ablation_losses_follow_tables_i_and_iv():
    out, _ = _one_update(tiny(bfm="joint"), "step2")
    assert {"match_p2n", "match_n2p", "match_i2t", "id_image"} <= set(out)
    out, _ = _one_update(tiny(bfm="off", step1_objective="mat", step2_id=False), "step1")
    assert set(out) == {"loss", "match_global"}
    out, _ = _one_update(tiny(bfm="off", step1_objective="mat", step2_id=False), "step2")
    assert set(out) == {"loss", "match_global", "match_i2t", "match_t2i"}
    out, changed = _one_update(tiny(gc=False, rga=False, bfm="joint", recipe="combined"), "combined")
    assert set(out) == {"loss", "match_p2n", "match_n2p"}
    assert changed == {"cnn", "part_conv", "text_embed", "bigru", "phrase_fc", "mlp_v_bfm", "mlp_t_bfm"}


def test_step3_leaves_the_global_and_relation_scores_bit_identical():
    model = tiny()
    recipe("mia").enter_stage(model, "step2")
    model.eval()
    with torch.no_grad():
        img, txt = model.encode_images(batch()["images"]), model.encode_texts(CAPTIONS)
        before = model.pairwise_scores(txt, img)
    _one_update(model, "step3")
    model.eval()
    with torch.no_grad():
        img, txt = model.encode_images(batch()["images"]), model.encode_texts(CAPTIONS)
        after = model.pairwise_scores(txt, img)
    for key in "GIT":
        assert torch.equal(before[key], after[key])
    assert not torch.equal(before["P"], after["P"])


def test_bad_config_values_name_the_field():
    with pytest.raises(ValueError, match="MIAConfig.bfm"):
        get_config("mia", "smoke", {"bfm": "later"})
    with pytest.raises(ValueError, match="rga=True needs gc=True"):
        get_config("mia", "smoke", {"gc": False})


def test_without_a_vocabulary_words_hash_into_vocab_size_rows():
    cfg = get_config("mia", "smoke")
    model = MIA(cfg).eval()  # no training captions: a benchmark, a parameter count, a first look
    assert isinstance(model.vocab, HashVocabulary) and len(model.vocab) == cfg.vocab_size
    assert model.text_embed.num_embeddings == cfg.vocab_size and model.extra_state() == {}
    ids = model.vocab.encode("A man in a red jacket", cfg.data.max_caption_len)
    assert len(ids) == 6 and all(2 <= i < cfg.vocab_size for i in ids) and ids[0] == ids[3]  # "a" twice
    with torch.no_grad():
        feats = model.encode_texts(["a man in a red jacket", "a woman with a blue bag"])
    assert feats["T"].shape == (2, cfg.embed_dim) and torch.isfinite(feats["T"]).all()
    assert len(feats["N_bfm"]) == 2 and all(torch.isfinite(n).all() for n in feats["N_bfm"])

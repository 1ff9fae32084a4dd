"""The zoo (tbpr/zoo): shipped weights match their manifests, load by ``zoo:<name>`` offline into
the quick models, refuse a corrupted or missing file by name, re-create at the smoke profile in
seconds, and come from a corpus that shares no identity, family or image with any benchmark split."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch

from tbpr import pretrain as P
from tbpr import zoo
from tbpr.papers import create_model, get_config
from tbpr.synthpedes import render as R


def test_shipped_members_match_their_manifests_and_recipes():
    names = zoo.available()
    assert names, "no zoo member ships in tbpr/zoo/weights"
    total = 0
    for name in names:
        meta = zoo.manifest(name)
        file = zoo.WEIGHTS / meta["file"]
        assert zoo.sha256(file) == meta["sha256"], file
        assert name in P.MEMBERS and meta["profile"] == "full"
        assert meta["recipe"]["steps"] == P.MEMBERS[name]["steps"]
        assert tuple(meta["corpus"].values())[:2] == P.MEMBERS[name]["corpus"]
        total += file.stat().st_size
    assert total <= 40 * 2 ** 20


# (paper, config field, member, our parameter, the member's key): the quick profile loads the member
QUICK_MEMBERS = [
    ("ivt", "pretrained_vit", "vit-s", "blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.weight"),
    ("ivt", "pretrained_bert", "bert-s", "blocks.1.mlp_txt.fc1.weight", "encoder.layer.1.intermediate.dense.weight"),
    ("ssan", "pretrained", "resnet-s", "visual.layer3.0.conv1.weight", "layer3.0.conv1.weight"),
    ("mia", "pretrained", "vgg-s", "cnn.4.weight", "features.4.weight"),
    ("lgur", "vision_pretrained", "deit-s", "visual.vit.blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.weight"),
]


@pytest.mark.parametrize("model, field, member, ours, theirs", QUICK_MEMBERS)
def test_quick_profile_builds_offline_from_its_zoo_member(model, field, member, ours, theirs):
    """The quick profile itself names the member (no override), and the parameter is the member's
    whatever the seed."""
    if member not in zoo.available():
        pytest.skip(f"{member} not shipped")
    assert getattr(get_config(model, "quick"), field) == f"zoo:{member}"
    expected = zoo.load(f"zoo:{member}")[theirs]
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert torch.equal(create_model(model, "quick").state_dict()[ours], expected), (model, seed)


def test_cada_quick_builds_offline_with_its_zoo_vit():
    member = "vit-s-mlp4"
    if member not in zoo.available():
        pytest.skip(f"{member} not shipped")
    theirs = zoo.load(f"zoo:{member}")["blocks.1.attn.qkv.weight"]
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = create_model("cada", "quick", pretrained=f"zoo:{member}")
        assert torch.equal(net.state_dict()["visual_encoder.blocks.1.attn.qkv.weight"], theirs)


def _copy_zoo(tmp_path, monkeypatch, name):
    for suffix in (".json", ".safetensors"):
        shutil.copy(zoo.WEIGHTS / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    monkeypatch.setattr(zoo, "WEIGHTS", tmp_path)
    return tmp_path / f"{name}.safetensors"


def test_a_corrupted_or_missing_zoo_file_is_refused_by_name(tmp_path, monkeypatch):
    name = zoo.available()[0]
    file = _copy_zoo(tmp_path, monkeypatch, name)
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match=rf"{file.name}.*sha256.*tbpr pretrain {name}") as err:
        zoo.load(f"zoo:{name}")
    assert "\n" not in str(err.value)
    file.unlink()
    with pytest.raises(zoo.ZooError, match=rf"{file.name}.*missing.*tbpr pretrain {name}"):
        zoo.resolve(f"zoo:{name}")
    with pytest.raises(zoo.ZooError, match="tbpr pretrain nope"):
        zoo.load("zoo:nope")


def test_run_cache_key_includes_the_zoo_sha256(smoke_root):
    from tbpr.experiments import run_spec

    name = zoo.available()[0]
    assert zoo.fingerprints({"a": {"b": [f"zoo:{name}"]}, "c": "vit_base"}) == {
        f"zoo:{name}": zoo.manifest(name)["sha256"]}
    _, spec, key = run_spec("ivt", "smoke", {"pretrained_vit": f"zoo:{name}"}, "synthpedes", smoke_root,
                            0, "cpu")
    _, plain, plain_key = run_spec("ivt", "smoke", None, "synthpedes", smoke_root, 0, "cpu")
    assert spec["zoo"] == {f"zoo:{name}": zoo.manifest(name)["sha256"]} and "zoo" not in plain
    assert key != plain_key


@pytest.mark.parametrize("name", sorted({r["kind"]: n for n, r in P.MEMBERS.items()}.values()))
def test_pretrain_smoke_runs_in_seconds_for_every_kind(tmp_path, name):
    from tbpr.cli import main

    start = time.time()
    main(["pretrain", name, "--profile", "smoke", "--out", str(tmp_path)])
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    assert meta["profile"] == "smoke" and zoo.sha256(tmp_path / f"{name}.safetensors") == meta["sha256"]
    assert meta["kind"] == P.MEMBERS[name]["kind"]
    assert time.time() - start < 60


@pytest.mark.parametrize("profile", ["pretrain", "pretrain-smoke", "pretrain-shifted"])
def test_corpus_shares_no_identity_family_or_image_with_the_benchmarks(profile):
    corpus = R.build_identities(profile, 0)
    assert len(corpus) == R.PROFILES[profile]["ids"][0]
    assert {R.identity_key(p["attrs"]) for p in corpus}.isdisjoint(R.benchmark_identity_keys())
    # ids and families above every benchmark's: file names and per-image random streams
    # ([seed, 1, id, k]) differ from any benchmark image's
    largest = sum(R.PROFILES["large"]["ids"])
    assert min(p["id"] for p in corpus) > R.CORPUS_ID_BASE > largest
    assert min(p["family"] for p in corpus) >= R.CORPUS_ID_BASE > largest
    assert {p["split"] for p in corpus} == {"train"}


def test_the_shifted_corpus_captions_and_renders_unlike_the_benchmark():
    """The aligned member's corpus: shorter web-style captions with words no benchmark caption uses,
    and its own look (the benchmark's draws are untouched: the same person renders as before)."""
    FACTS = {"view": "front", "bag_side": "left", "held_side": "right"}
    people = R.build_identities("pretrain-shifted", 0)[:60]
    assert len({p["family"] for p in people}) == len(people)  # no families of near-identical people
    web = [R.make_web_caption(p["attrs"], FACTS, np.random.default_rng([0, i]))[0]
           for i, p in enumerate(people)]
    bench = [R.make_caption(p["attrs"], FACTS, np.random.default_rng([0, i]))[0]
             for i, p in enumerate(people)]
    words = lambda caps: {w for c in caps for w in c.lower().replace(",", " ").replace(".", " ").split()}
    assert np.mean([len(c.split()) for c in web]) < 0.5 * np.mean([len(c.split()) for c in bench])
    assert len(words(web) - words(bench)) > 20
    person = people[0]["attrs"]
    plain = R.render_image(person, np.random.default_rng(1))[0]
    assert np.array_equal(plain, R.render_image(person, np.random.default_rng(1), R.LOOKS["benchmark"])[0])
    assert not np.array_equal(plain, R.render_image(person, np.random.default_rng(1), R.LOOKS["web"])[0])


# the aligned member (BLIP's layout): CADA's quick loads it whole, IRRA's quick its encoders
ALIGNED = [("cada", {"pretrained": "zoo:blip-s"}, "text_encoder.layers.1.fc1.weight",
            "text_encoder.encoder.layer.1.intermediate.dense.weight"),
           ("cada", {"pretrained": "zoo:blip-s"}, "itm_head.weight", "itm_head.weight"),
           ("irra", {"vision_pretrained": "zoo:blip-s", "text_pretrained": "zoo:blip-s"},
            "image_encoder.blocks.1.attn.qkv.weight", "visual_encoder.blocks.1.attn.qkv.weight"),
           ("irra", {"vision_pretrained": "zoo:blip-s", "text_pretrained": "zoo:blip-s"},
            "text_encoder.bert.encoder.layer.1.intermediate.dense.weight",
            "text_encoder.encoder.layer.1.intermediate.dense.weight")]


@pytest.mark.parametrize("model, fields, ours, theirs", ALIGNED)
def test_cada_and_irra_quick_start_from_the_aligned_member(model, fields, ours, theirs):
    if "blip-s" not in zoo.available():
        pytest.skip("blip-s not shipped")
    cfg = get_config(model, "quick")
    assert all(getattr(cfg, k) == v for k, v in fields.items())  # the quick profile names it itself
    expected = zoo.load("zoo:blip-s")[theirs]
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert torch.equal(create_model(model, "quick").state_dict()[ours], expected), (model, seed)


def test_the_aligned_member_is_refused_by_a_model_of_other_sizes():
    if "blip-s" not in zoo.available():
        pytest.skip("blip-s not shipped")
    with pytest.raises(ValueError, match="text.tokenizer=bert"):
        create_model("cada", "quick", pretrained="zoo:blip-s", text={"tokenizer": "words", "vocab_size": 0})
    with pytest.raises(ValueError, match="vision_pretrained"):
        create_model("irra", "quick", vision_pretrained="zoo:blip-s", vision_width=32, vision_heads=2)


def test_cadas_dual_encoder_row_loads_the_aligned_member_without_its_heads():
    """Table IV's baseline has no decoder: BLIP's ITM / MLM heads and cross-attention stay behind."""
    if "blip-s" not in zoo.available():
        pytest.skip("blip-s not shipped")
    from tbpr.papers import ablation_rows

    net = create_model("cada", "quick", **ablation_rows("cada", "table4")["0 Baseline (CMPM)"])
    assert not hasattr(net, "itm_head") and not hasattr(net.text_encoder.layers[0], "cross_attn")
    assert torch.equal(net.state_dict()["text_proj.weight"], zoo.load("zoo:blip-s")["text_proj.weight"])


@pytest.mark.parametrize("depth", [1, 3])
def test_table7s_depth_rows_start_from_the_members_first_layers(depth):
    """Table VII at CPU scale: a shallower CADA than blip-s (depth 2) loads its first layers (it was
    refused: 'unexpected BLIP entries'), a deeper one starts its extra layers at random."""
    if "blip-s" not in zoo.available():
        pytest.skip("blip-s not shipped")
    from tbpr.papers import ablation_rows

    row = next(o for o in ablation_rows("cada", "table7_cpu").values() if o.get("vision.depth") == depth)
    torch.manual_seed(0)
    net, member = create_model("cada", "quick", **row), zoo.load("zoo:blip-s")
    ours = net.state_dict()
    assert len(net.visual_encoder.blocks) == len(net.text_encoder.layers) == depth
    assert torch.equal(ours["visual_encoder.blocks.0.attn.qkv.weight"], member["visual_encoder.blocks.0.attn.qkv.weight"])
    assert torch.equal(ours["text_encoder.layers.0.fc1.weight"],
                       member["text_encoder.encoder.layer.0.intermediate.dense.weight"])
    if depth == 3:
        assert torch.equal(ours["visual_encoder.blocks.1.mlp.fc1.weight"], member["visual_encoder.blocks.1.mlp.fc1.weight"])
        assert not any(torch.equal(ours["visual_encoder.blocks.2.mlp.fc1.weight"], member[f"visual_encoder.blocks.{i}.mlp.fc1.weight"])
                       for i in (0, 1))


def test_recipes_draw_whole_batches_from_a_fresh_permutation_each_pass_and_log_a_curve():
    from tbpr.pretrain.common import batch_indices, loss_history

    g = torch.Generator().manual_seed(0)
    batches = batch_indices(10, 4, g)
    first_pass = [next(batches) for _ in range(2)]  # 10 // 4: the last two examples wait for the next pass
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat(first_pass), expected[:8])
    assert len(set(next(batches).tolist())) == 4
    assert loss_history([1.0, 3.0, 5.0, 7.0, 9.0], every=2) == [
        {"step": 2, "loss": 2.0}, {"step": 4, "loss": 6.0}, {"step": 5, "loss": 9.0}]

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

from tbpr import zoo
from tbpr.papers import create_model
from tbpr.synthpedes import render as R
from tbpr.zoo import pretrain as P


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


@pytest.mark.parametrize("model, field, member, ours", [
    ("ivt", "pretrained_vit", "vit-s", "blocks.1.attn.qkv.weight"),
    ("cada", "pretrained", "vit-s-mlp4", "visual_encoder.blocks.1.attn.qkv.weight"),
])
def test_quick_model_builds_offline_with_its_zoo_weights(model, field, member, ours):
    if member not in zoo.available():
        pytest.skip(f"{member} not shipped")
    theirs = zoo.load(f"zoo:{member}")["blocks.1.attn.qkv.weight"]
    params = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = create_model(model, "quick", **{field: f"zoo:{member}"})
        params.append(net.state_dict()[ours])
    assert torch.equal(params[0], theirs) and torch.equal(params[1], theirs)


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


def test_pretrain_smoke_runs_in_seconds(tmp_path):
    from tbpr.cli import main

    start = time.time()
    main(["pretrain", "vit-s", "--profile", "smoke", "--out", str(tmp_path)])
    meta = json.loads((tmp_path / "vit-s.json").read_text())
    assert meta["profile"] == "smoke" and zoo.sha256(tmp_path / "vit-s.safetensors") == meta["sha256"]
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

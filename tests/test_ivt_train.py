"""IVT through the shared engine and experiment runner: a smoke run trains, its checkpoint reloads
to the same metrics, and the pre-training stage is cached and really used by the Pre rows."""
import shutil

import pytest
import torch

from tbpr import experiments
from tbpr.evaluate import evaluate
from tbpr.papers import create_model, get_config
from tbpr.papers.ivt import recipe as ivt_recipe
from tbpr.synthpedes import render


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch, smoke_root):
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path))
    # rendered SynthPedes is shared with the other tests: point the data at the session's cache
    session_cache = smoke_root.parents[1]  # <cache>/synthpedes/<profile>-seed<s>-v<version>
    monkeypatch.setattr(render, "cache_dir", lambda: session_cache)
    return tmp_path


def test_smoke_run_reloads_from_its_checkpoint_to_the_same_metrics(isolated_cache):
    torch.set_num_threads(1)
    result = experiments.run("ivt", "smoke", {"pretrain": False}, seed=0, progress=False)
    assert result.history and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    model = result.load_model()
    records = experiments.load_records("synthpedes", result.spec["data_root"])
    again = evaluate(model, records["test"], model.cfg.data, progress=False)
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert again[key] == pytest.approx(result.metrics[key], abs=1e-6), key


def test_a_pre_run_reloads_from_its_checkpoint_without_pretraining_again(isolated_cache):
    torch.set_num_threads(1)
    result = experiments.run("ivt", "smoke", {"pretrain": True, "pretrain_epochs": 1}, seed=0,
                             progress=False)
    shutil.rmtree(isolated_cache / "pretrain" / "ivt")
    model = result.load_model()
    assert not (isolated_cache / "pretrain" / "ivt").exists()
    assert model.cfg.pretrain  # the config is the trained one; only its initialisation was skipped


def test_pretraining_runs_once_and_the_pre_model_starts_from_its_encoder(isolated_cache, smoke_root):
    torch.set_num_threads(1)
    train = experiments.load_records("synthpedes", smoke_root)["train"]
    cfg_over = {"pretrain": True, "pretrain_epochs": 1}
    path = ivt_recipe.ensure_pretrained(get_config("ivt", "smoke", cfg_over))
    assert path.exists() and path.is_relative_to(isolated_cache / "pretrain" / "ivt")
    stamp = path.stat().st_mtime_ns
    first = experiments.build_model("ivt", get_config("ivt", "smoke", cfg_over), train)  # the warm start
    second = experiments.build_model("ivt", get_config("ivt", "smoke", {**cfg_over, "mla": False, "bmm": False}),
                                     train)  # switches share it
    assert ivt_recipe.ensure_pretrained(second.cfg).stat().st_mtime_ns == stamp
    assert ivt_recipe.ensure_pretrained(first.cfg).stat().st_mtime_ns == stamp
    from safetensors.torch import load_file
    weights = load_file(str(path))
    for model in (first, second):
        assert torch.equal(model.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])
    built = create_model("ivt", "smoke", **cfg_over)  # the constructor alone never pre-trains
    assert not torch.equal(built.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])
    fresh = experiments.build_model("ivt", get_config("ivt", "smoke", {"pretrain": False}), train)
    assert not torch.equal(fresh.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])
    assert path.stat().st_mtime_ns == stamp

"""CADA end to end at the smoke size: train through the engine on SynthPedes, reload the checkpoint,
get the same global (CADA-G) and re-ranked (CADA-L) metrics."""
import pytest
import torch

from tbpr import experiments
from tbpr.engine import load_checkpoint
from tbpr.evaluate import evaluate


@pytest.mark.parametrize("decoder", ["shared", "separate"])  # separate: the official code's ARA decoder
def test_saved_checkpoint_reloads_to_the_same_metrics(smoke_root, tmp_path, decoder):
    overrides = {"train.epochs": 1, "ara.decoder": decoder}
    result = experiments.run("cada", "smoke", overrides, data_root=smoke_root, progress=False, rerank_k=4)
    assert set(result.history[-1]) >= {"loss", "global", "atp", "ara"}
    reloaded = result.load_model()
    records = experiments.load_records("synthpedes", smoke_root)
    data_cfg = reloaded.cfg.data
    assert evaluate(reloaded, records["test"], data_cfg, rerank_k=4, progress=False) == result.metrics
    glob = evaluate(reloaded, records["test"], data_cfg, rerank_k=0, progress=False)
    # a fresh model of the same config is a different function until the checkpoint is loaded
    fresh = experiments.build_model("cada", reloaded.cfg, records["train"])
    assert evaluate(fresh, records["test"], data_cfg, progress=False) != glob
    load_checkpoint(fresh, f"{result.run_dir}/model.safetensors")
    assert evaluate(fresh, records["test"], data_cfg, progress=False) == glob
    assert reloaded.extra_state()["vocab"] == fresh.vocab
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), fresh.state_dict().values()))

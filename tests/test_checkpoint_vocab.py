"""A trained word-vocabulary model (SSAN, MIA) reloads from its checkpoint alone: the vocabulary is
saved with the weights, so ``experiments.load_trained`` gives the run's metrics even when the
training records have changed since (here one caption added, with a word new to the data)."""
import dataclasses

import pytest
import torch

from tbpr import experiments
from tbpr.engine import read_checkpoint
from tbpr.evaluate import evaluate
from tbpr.papers import get_config, recipe

# small smoke runs (a few seconds each); every module of the model stays
RUNS = {
    "ssan": {"train.epochs": 1, "backbone": "strided_cnn", "cnn_widths": [4, 8, 8, 16, 16], "embed_dim": 8,
             "hidden_dim": 16, "feat_dim": 16, "nln_embed_dim": 8, "nln_out_dim": 8},
    "mia": {"cnn_init": "random"},  # the smoke steps 1-3 from a random CNN
}
NEW_CAPTION = "A zorblat carries another zorblat."  # twice: enough for SSAN's min_word_count


@pytest.mark.parametrize("name", sorted(RUNS))
def test_checkpoint_carries_its_vocabulary_and_reloads_to_the_same_metrics(name, smoke_root):
    torch.set_num_threads(1)
    result = experiments.run(name, "smoke", RUNS[name], data_root=smoke_root, seed=0, progress=False)
    path = f"{result.run_dir}/model.safetensors"
    records = experiments.load_records("synthpedes", smoke_root)
    saved = read_checkpoint(path)["extra_state"]["vocab"]
    cfg = get_config(name, "paper", result.spec["config"])

    # the training data changes after training: its vocabulary is no longer the trained one
    first = records["train"][0]
    changed = [dataclasses.replace(first, captions=[*first.captions, NEW_CAPTION]), *records["train"][1:]]
    assert "zorblat" in recipe(name).data_state(cfg, changed)["vocab"].to_json()["words"]
    assert "zorblat" not in saved["words"]

    model = experiments.load_trained(name, cfg, path).eval()  # no records: nothing to re-derive from
    assert model.extra_state() == {"vocab": saved}
    assert model.vocab.encode("zorblat", 5) == [model.vocab.UNK]
    again = evaluate(model, records["test"], model.cfg.data, progress=False)
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert again[key] == pytest.approx(result.metrics[key], abs=1e-6), key

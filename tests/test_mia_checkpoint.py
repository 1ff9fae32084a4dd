"""A trained MIA checkpoint reloads to the same test metrics (smoke size, three-step recipe), and the
component scores its evaluation keeps are what re-scoring it computes afresh, bit for bit."""
from pathlib import Path

import numpy as np
import pytest
import torch

from tbpr import experiments
from tbpr.evaluate import evaluate
from tbpr.papers.mia import recipe as mia_recipe
from tbpr.papers.mia.recipe import SCORES_FILE, run_scores, scoring_metrics, split_scores

SMOKE = {"step_epochs": [1, 1, 1]}
# the fusions the notebook re-scores one trained model under (Tables II, III, VIII, IX)
SCORINGS = [{}, {"score": "G"}, {"score": "R"}, {"score": "L"}, {"lambda1": 1.5, "lambda2": 0.0},
            {"lambda1": 0.0, "lambda2": 0.7}, {"lambda1": 0.0, "lambda2": 0.0}]


@pytest.mark.slow
def test_saved_checkpoint_reloads_to_the_same_metrics():
    torch.set_num_threads(1)
    result = experiments.run("mia", "smoke", SMOKE, cache=False, progress=False)
    assert [h["stage"] for h in result.history] == ["step1", "step2", "step3"]
    model = result.load_model()
    records = experiments.load_records(result.spec["dataset"], result.spec["data_root"])
    again = evaluate(model, records["test"], model.cfg.data, progress=False)
    for key in ("R1", "R5", "R10", "mAP", "mINP", "HMR1"):
        assert again[key] == result.metrics[key]


def _same(a: dict, b: dict) -> bool:
    """Equal metrics, per-query values included (exactly: no tolerance)."""
    pa, pb = a.pop("per_query"), b.pop("per_query")
    return a == b and np.array_equal(pa.query, pb.query) and pa.values.keys() == pb.values.keys() \
        and all(np.array_equal(pa.values[k], pb.values[k]) for k in pa.values)


@pytest.mark.slow
def test_rescoring_reads_the_runs_own_scores_and_they_equal_a_fresh_computation(monkeypatch):
    torch.set_num_threads(1)
    result = experiments.run("mia", "smoke", SMOKE, seed=1, progress=False)
    model = result.load_model()
    test = experiments.load_records(result.spec["dataset"], result.spec["data_root"])["test"]
    fresh, _, _, eval_set = split_scores(model, test)
    computed = []
    monkeypatch.setattr(mia_recipe, "split_scores", lambda *a, **k: computed.append(1) or split_scores(*a, **k))
    stored, stored_set = run_scores(model, test, result.run_dir)
    assert not computed, "the run's evaluation kept its scores: re-scoring must read them"
    assert sorted(stored) == sorted(fresh) == ["G", "I", "N", "P", "T"]
    assert all(stored[k].dtype == torch.float32 and torch.equal(stored[k], fresh[k]) for k in fresh)
    for scoring in SCORINGS:
        assert _same(scoring_metrics(model, stored, stored_set, per_query=True, **scoring),
                     scoring_metrics(model, fresh, eval_set, per_query=True, **scoring)), scoring
    # the run's own metrics are the same computation (Eq. 18 at its settings, with HMR1)
    own = scoring_metrics(model, fresh, eval_set, per_query=True, source_index=eval_set.caption_image_idx)
    assert {k: v for k, v in own.items() if k != "per_query"} == result.metrics
    assert all(np.array_equal(result.per_query().values[k], v.astype(np.float32 if k[0] != "R" else np.uint8))
               for k, v in own["per_query"].values.items())
    # other weights are not given these scores: computed afresh, then kept in their place
    with torch.no_grad():
        model.sent_fc.bias.add_(1.0)
    changed, _ = run_scores(model, test, result.run_dir)
    assert computed == [1] and not torch.equal(changed["G"], fresh["G"])
    assert torch.equal(run_scores(model, test, result.run_dir)[0]["G"], changed["G"]) and computed == [1]
    assert (Path(result.run_dir) / SCORES_FILE).exists()

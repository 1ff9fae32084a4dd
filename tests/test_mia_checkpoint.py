"""A trained MIA checkpoint reloads to the same test metrics (smoke size, three-step recipe)."""
import pytest
import torch

from tbpr import experiments
from tbpr.evaluate import evaluate


@pytest.mark.slow
def test_saved_checkpoint_reloads_to_the_same_metrics():
    torch.set_num_threads(1)
    result = experiments.run("mia", "smoke", {"surrogate_epochs": 1, "step_epochs": [1, 1, 1]},
                             cache=False, progress=False)
    assert [h["stage"] for h in result.history] == ["step0_surrogate", "step1", "step2", "step3"]
    model = result.load_model()
    records = experiments.load_records(result.spec["dataset"], result.spec["data_root"])
    again = evaluate(model, records["test"], model.cfg.data, progress=False)
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert again[key] == result.metrics[key]

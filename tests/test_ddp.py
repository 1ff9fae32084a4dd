"""fit under torchrun: 2 CPU processes (gloo) train like one process over the union of their batches."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tbpr.engine import fit, read_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_engine import make_model  # noqa: E402

OVERRIDES = {"dropout": 0.0, "train.optimizer": "sgd", "train.lr": 0.05, "train.momentum": 0.9,
             "train.epochs": 1, "train.milestones": ()}
BATCH, STEPS = 4, 2


def rank_batches(rank: int, world_size: int) -> list[dict]:
    """Step s of rank r gets rows [s, r] of a fixed [STEPS, world, BATCH] grid of samples."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(STEPS, world_size, BATCH, 8, generator=g)
    y = x.sum(-1)
    if rank < 0:  # the union of all ranks' batches, step by step
        return [{"images": x[s].flatten(0, 1), "targets": y[s].flatten()} for s in range(STEPS)]
    return [{"images": x[s, rank], "targets": y[s, rank]} for s in range(STEPS)]


WORKER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from test_ddp import OVERRIDES, rank_batches
    from test_engine import NoisyPoints, make_model
    from tbpr.engine import distributed_env, fit

    rank, world_size = distributed_env()
    out = {out!r}
    model = make_model(seed=rank, **OVERRIDES)  # different inits: DDP must broadcast rank 0's
    history = fit(model, rank_batches(rank, world_size), model.cfg.train, out_dir=out + "/step",
                  progress=False)
    torch.save({{"weights": model.state_dict(),
                 "grads": {{n: p.grad for n, p in model.named_parameters()}},
                 "history": history}}, out + f"/step/rank{{rank}}.pt")

    # dropout differs per rank (seed + rank): resume must restore every rank's RNG
    points = NoisyPoints(n=32)
    for name, max_steps in (("full", None), ("killed", 3), ("killed", None)):
        sampler = DistributedSampler(points, world_size, rank, seed=0)
        loader = DataLoader(points, batch_size=4, sampler=sampler, drop_last=True)
        model = make_model(**{{"train.ckpt_every_steps": 2, "train.epochs": 2}})
        history = fit(model, loader, model.cfg.train, out_dir=f"{{out}}/{{name}}", progress=False,
                      max_steps=max_steps)
        torch.save({{"weights": model.state_dict(), "history": history}}, f"{{out}}/{{name}}/rank{{rank}}.pt")
""")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One torchrun launch of 2 gloo processes: a 2-step run, then a full, a killed and a resumed run."""
    out = tmp_path_factory.mktemp("ddp")
    script = out / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def load_ranks(folder: Path) -> list[dict]:
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_over_the_union_of_their_batches(ddp_run):
    ranks = load_ranks(ddp_run / "step")
    reference = make_model(seed=0, **OVERRIDES)
    ref_history = fit(reference, rank_batches(-1, 2), reference.cfg.train, progress=False)

    for name, param in reference.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], param.grad, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(r["weights"][name], param.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name])
    # the logged loss is averaged over ranks: equal halves make it the union's loss
    for r in ranks:
        assert r["history"][0]["loss"] == pytest.approx(ref_history[0]["loss"], rel=1e-5)
    # rank 0 alone writes the log and the checkpoint, with every rank's RNG state
    logged = [json.loads(line) for line in (ddp_run / "step" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in logged] == [1]
    assert read_checkpoint(ddp_run / "step" / "model.safetensors")["extra"] == {"global_step": STEPS}
    assert len(torch.load(ddp_run / "step" / "state.pt", weights_only=True)["ranks"]) == 2


@pytest.mark.slow
def test_ddp_run_killed_mid_epoch_resumes_to_exactly_the_uninterrupted_result(ddp_run):
    full, resumed = load_ranks(ddp_run / "full"), load_ranks(ddp_run / "killed")
    for f, r in zip(full, resumed):
        assert [row["loss"] for row in r["history"]] == [row["loss"] for row in f["history"]]
        for name, value in f["weights"].items():
            assert torch.equal(value, r["weights"][name]), name

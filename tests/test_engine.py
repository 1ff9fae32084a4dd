"""tbpr.engine: repeatable training, exact resume, schedules, optimizer groups, checkpoints."""
import dataclasses
import json
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tbpr.config import ModelConfig, TrainConfig, apply_overrides
from tbpr.engine import (STATE_FILE, WEIGHTS_FILE, build_optimizer, build_scheduler, fit,
                         load_checkpoint, read_checkpoint, save_checkpoint, scheduled_lr,
                         seed_everything)
from tbpr.papers.base import TBPRModel


@dataclass
class TinyConfig(ModelConfig):
    dim: int = 8
    hidden: int = 16
    dropout: float = 0.2
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=2, optimizer="adam", lr=1e-2, schedule="multistep", milestones=(1,), log_every=1))


class TinyRegressor(TBPRModel):
    """A two-layer regressor with dropout: training consumes the global torch RNG like real models."""
    name = "tiny"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.encoder = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.head = nn.Linear(cfg.hidden, 1)

    def training_step(self, batch):
        pred = self.head(self.encoder(batch["images"])).squeeze(1)
        mse = (pred - batch["targets"]).pow(2).mean()
        return {"loss": mse, "mse": mse, "target_mean": batch["targets"].mean()}

    def extra_state(self):
        return {"vocab": ["a", "b"]}


class NoisyPoints(Dataset):
    """Random points whose 'augmentation' draws from the global torch RNG (as image transforms do)."""

    def __init__(self, n=24, dim=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x.sum(1) + 0.1 * torch.randn(n, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"images": self.x[i] + 0.05 * torch.randn_like(self.x[i]), "targets": self.y[i]}


def make_loader(seed=0, shuffle=True, batch_size=4):
    return DataLoader(NoisyPoints(), batch_size=batch_size, shuffle=shuffle, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return TinyRegressor(apply_overrides(TinyConfig(), overrides))


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def without_timing(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in history]


def run(tmp_path, name, seed=0, max_steps=None, **overrides):
    model = make_model(**overrides)
    history = fit(model, make_loader(), model.cfg.train, out_dir=tmp_path / name, seed=seed,
                  progress=False, max_steps=max_steps)
    return model, history


# ----------------------------------------------------------------------------- repeatability

def test_same_seed_and_config_give_identical_weights_and_logs(tmp_path):
    model_a, hist_a = run(tmp_path, "a", seed=3)
    model_b, hist_b = run(tmp_path, "b", seed=3)
    _, hist_c = run(tmp_path, "c", seed=4)
    assert without_timing(hist_a) == without_timing(hist_b)
    assert all(torch.equal(v, weights(model_b)[k]) for k, v in weights(model_a).items())
    assert hist_a[-1]["loss"] != hist_c[-1]["loss"]  # the seed really drives dropout / shuffling
    assert hist_a[-1]["loss"] < hist_a[0]["loss"]  # and training learns


# 6 steps per epoch, a checkpoint every 2 steps: the kill at global step 3 resumes from step 2 of
# epoch 1, the one at 8 from the end of epoch 1, the one at 11 from step 4 of epoch 2
@pytest.mark.parametrize("kill_at", [3, 8, 11])
def test_run_killed_mid_epoch_resumes_to_exactly_the_uninterrupted_result(tmp_path, kill_at):
    over = {"train.ckpt_every_steps": 2, "train.epochs": 3}
    full_model, full_hist = run(tmp_path, "full", **over)

    partial_model, partial_hist = run(tmp_path, "killed", max_steps=kill_at, **over)
    assert len(partial_hist) == kill_at // 6  # nothing of the killed epoch is logged
    resumed_model, resumed_hist = run(tmp_path, "killed", **over)  # fresh process state, same out_dir

    assert without_timing(resumed_hist) == without_timing(full_hist)
    for name, value in weights(full_model).items():
        assert torch.equal(value, weights(resumed_model)[name]), name
    logged = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert without_timing(logged) == without_timing(full_hist)


def test_resuming_a_finished_run_returns_its_history_without_training(tmp_path):
    model, history = run(tmp_path, "done")
    again, history_again = run(tmp_path, "done")
    assert history_again == history
    assert all(torch.equal(v, weights(again)[k]) for k, v in weights(model).items())


def test_resume_false_starts_over(tmp_path):
    _, first = run(tmp_path, "x", seed=1)
    model = make_model()
    second = fit(model, make_loader(), model.cfg.train, out_dir=tmp_path / "x", seed=2, resume=False,
                 progress=False)
    assert len(second) == 2 and second[-1]["loss"] != first[-1]["loss"]


def test_training_state_is_readable_without_unpickling_code(tmp_path):
    run(tmp_path, "s", **{"train.ckpt_every_steps": 2})
    state = torch.load(tmp_path / "s" / STATE_FILE, weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 0, 12)
    assert {"optimizer", "scheduler", "scaler", "ranks"} <= set(state)
    assert {"rng", "rng_epoch_start", "loader_epoch_start"} <= set(state["ranks"][0])
    assert "loader.generator" in state["ranks"][0]["loader_epoch_start"]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    run(tmp_path, "r")
    with pytest.raises(ValueError, match=r"cannot resume.*train\.lr: checkpoint 0\.01, model 0\.5"):
        run(tmp_path, "r", **{"train.lr": 0.5})


def test_resume_refuses_another_train_config_than_the_models(tmp_path):
    model = make_model()
    fit(model, make_loader(), model.cfg.train, out_dir=tmp_path, progress=False, max_steps=7)
    stage_cfg = dataclasses.replace(model.cfg.train, epochs=4)  # e.g. a stage of a staged recipe
    with pytest.raises(ValueError, match=r"another TrainConfig.*epochs: checkpoint 2, this run 4"):
        fit(make_model(), make_loader(), stage_cfg, out_dir=tmp_path, progress=False)


# ----------------------------------------------------------------------------- epoch logs

def test_epoch_log_holds_mean_of_each_loss_part_lr_throughput_and_eval(tmp_path):
    model = make_model(**{"train.eval_every": 1, "train.lr": 0.1, "train.gamma": 0.5})
    loader = make_loader(shuffle=False)
    evals = []

    def eval_fn(m):
        evals.append(m.training)
        return {"R1": 10.0 * len(evals)}

    history = fit(model, loader, model.cfg.train, out_dir=tmp_path, eval_fn=eval_fn, progress=False)
    batch_means = [b["targets"].mean().item() for b in loader]
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert row["target_mean"] == pytest.approx(sum(batch_means) / len(batch_means), abs=1e-6)
        assert row["images_per_s"] > 0 and row["seconds"] > 0
        assert {"loss", "mse"} <= set(row)
    assert [row["lr"] for row in history] == pytest.approx([0.1, 0.05])  # milestone at epoch 1
    assert [row["R1"] for row in history] == [10.0, 20.0] and evals == [False, False]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == history


def test_eval_runs_only_every_eval_every_epochs_and_at_the_end():
    model = make_model(**{"train.epochs": 5, "train.eval_every": 2})
    history = fit(model, make_loader(), model.cfg.train, eval_fn=lambda m: {"R1": 1.0}, progress=False)
    assert ["R1" in row for row in history] == [False, True, False, True, True]


def test_non_finite_loss_stops_with_an_actionable_error():
    model = make_model(**{"train.lr": 1e30, "train.optimizer": "sgd"})
    with pytest.raises(FloatingPointError, match="lower train.lr"):
        fit(model, make_loader(), model.cfg.train, progress=False)


def test_amp_on_cpu_is_ignored_with_a_one_line_notice(capsys):
    model = make_model(**{"train.amp": "bf16", "train.epochs": 1})
    history = fit(model, make_loader(), model.cfg.train, progress=False)
    assert capsys.readouterr().out.count("train.amp='bf16' ignored on cpu") == 1
    assert math.isfinite(history[0]["loss"])


# ----------------------------------------------------------------------------- optimizer, clipping

def test_optimizer_groups_use_lr_mult_and_skip_frozen_parameters():
    model = make_model(**{"train.lr_mult": {"encoder.": 0.1}, "train.optimizer": "sgd",
                          "train.lr": 0.5, "train.momentum": 0.8})
    model.head.bias.requires_grad_(False)
    opt = build_optimizer(model, model.cfg.train)
    groups = {g["lr_mult"]: (g["lr"], {id(p) for p in g["params"]}) for g in opt.param_groups}
    assert groups == {0.1: (pytest.approx(0.05), {id(p) for p in model.encoder.parameters()}),
                      1.0: (0.5, {id(model.head.weight)})}
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.8


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizer_kind_betas_and_weight_decay_follow_the_config(name, cls):
    model = make_model(**{"train.optimizer": name, "train.betas": (0.8, 0.9), "train.weight_decay": 0.05})
    opt = build_optimizer(model, model.cfg.train)
    assert type(opt) is cls and opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["weight_decay"] == 0.05


def test_unknown_optimizer_and_fully_frozen_model_are_refused():
    model = make_model(**{"train.optimizer": "lamb"})
    with pytest.raises(ValueError, match="train.optimizer='lamb'.*adam"):
        build_optimizer(model, model.cfg.train)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer(model, dataclasses.replace(model.cfg.train, optimizer="adam"))


def test_gradient_clipping_bounds_the_global_gradient_norm():
    clip, lr = 0.01, 1.0
    over = {"train.optimizer": "sgd", "train.momentum": 0.0, "train.weight_decay": 0.0,
            "train.lr": lr, "train.epochs": 1, "train.grad_clip": clip, "dropout": 0.0}
    model = make_model(**over)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    batch = next(iter(make_loader(shuffle=False)))
    reference = make_model(**over)
    seed_everything(0)
    reference(batch)["loss"].backward()
    grad = torch.cat([p.grad.flatten() for p in reference.parameters()])
    assert grad.norm() > 10 * clip  # the clip really bites
    fit(model, [batch], model.cfg.train, progress=False, seed=0)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(before - after, lr * grad * clip / grad.norm(), rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- schedules

def lrs_per_epoch(epochs=6, steps_per_epoch=1, **train):
    cfg = TrainConfig(**{"epochs": epochs, "lr": 1.0, **train})
    model = make_model()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    ticks = epochs * (steps_per_epoch if cfg.step_per == "step" else 1)
    lrs = []
    for _ in range(ticks):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_multistep_per_epoch_decays_at_the_milestones_ssan():
    assert lrs_per_epoch(60, milestones=(20, 40)) == pytest.approx([1.0] * 20 + [0.1] * 20 + [0.01] * 20)


def test_epoch_offset_reproduces_schedulers_stepped_at_epoch_start_lgur():
    lrs = lrs_per_epoch(60, milestones=(20, 40, 50), lr_epoch_offset=1)
    assert lrs == pytest.approx([1.0] * 19 + [0.1] * 20 + [0.01] * 10 + [0.001] * 11)


def test_cosine_per_epoch_without_warmup_cada():
    E = 40
    assert lrs_per_epoch(E, schedule="cosine") == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * e / E)) for e in range(E)])


def test_cosine_with_absolute_warmup_and_floor_ivt():
    base, E = 5e-3, 120
    cfg = dict(schedule="cosine", warmup_epochs=5, warmup_factor=0.01, min_lr=0.002 * base,
               lr_epoch_offset=1)
    eta_w, eta_min = 0.01 * base, 0.002 * base

    def ivt(e):  # the spec's formula, e = 1..120
        if e < 5:
            return eta_w + e * (base - eta_w) / 5
        return eta_min + 0.5 * (base - eta_min) * (1 + math.cos(math.pi * e / 120))
    got = [lr * base for lr in lrs_per_epoch(E, **{**cfg, "min_lr": eta_min / base})]
    assert got == pytest.approx([ivt(e) for e in range(1, E + 1)])
    assert got[-1] == pytest.approx(eta_min)


def test_per_step_schedule_with_fractional_warmup():
    lrs = lrs_per_epoch(3, steps_per_epoch=4, step_per="step", schedule="multistep", milestones=(2,),
                        warmup_epochs=0.5, warmup_factor=0.2)
    expected = [0.2, 0.6] + [1.0] * 6 + [0.1] * 4  # warm-up over 2 steps, decay at epoch 2 (step 8)
    assert lrs == pytest.approx(expected)


def test_warmup_start_and_floor_are_the_same_absolute_rates_for_every_group():
    cfg = TrainConfig(lr=1.0, epochs=10, schedule="cosine", warmup_epochs=2, warmup_factor=0.1,
                      min_lr=0.05)
    assert scheduled_lr(0, 2.0, cfg) == pytest.approx(0.1) == scheduled_lr(0, 0.5, cfg)
    assert scheduled_lr(1, 2.0, cfg) == pytest.approx(1.05)
    assert scheduled_lr(10, 2.0, cfg) == pytest.approx(0.05) == scheduled_lr(10, 0.5, cfg)


def test_unknown_schedule_is_refused():
    model = make_model()
    opt = build_optimizer(model, model.cfg.train)
    with pytest.raises(ValueError, match="train.schedule='poly'"):
        build_scheduler(opt, dataclasses.replace(model.cfg.train, schedule="poly"), 10)
    with pytest.raises(ValueError, match="train.step_per='batch'"):
        build_scheduler(opt, dataclasses.replace(model.cfg.train, step_per="batch"), 10)


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_restores_weights_and_metadata(tmp_path):
    model = make_model(seed=1)
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"epoch": 3})
    other = make_model(seed=2)
    meta = load_checkpoint(other, path)
    assert all(torch.equal(v, weights(other)[k]) for k, v in weights(model).items())
    assert meta["model"] == "tiny" and meta["extra"] == {"epoch": 3}
    assert meta["extra_state"] == {"vocab": ["a", "b"]} and meta["config"]["hidden"] == 16
    assert read_checkpoint(path)["config_hash"] == meta["config_hash"]


def test_checkpoint_of_another_model_is_refused_naming_both(tmp_path):
    path = save_checkpoint(make_model(), tmp_path / "m.safetensors")

    class Other(TinyRegressor):
        name = "other"
    with pytest.raises(ValueError, match=r"m\.safetensors holds model 'tiny'.*into 'other'"):
        load_checkpoint(Other(TinyConfig()), path)


def test_checkpoint_of_another_config_is_refused_unless_overridden(tmp_path):
    path = save_checkpoint(make_model(), tmp_path / "m.safetensors")
    model = make_model(**{"train.lr": 0.5})
    expected = r"config hash.*train\.lr: checkpoint 0\.01, model 0\.5.*check_config=False"
    with pytest.raises(ValueError, match=expected):
        load_checkpoint(model, path)
    load_checkpoint(model, path, check_config=False)


def test_checkpoint_with_other_tensors_is_refused_when_strict(tmp_path):
    path = save_checkpoint(make_model(), tmp_path / "m.safetensors")
    model = make_model()
    model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"missing tensors \['extra.bias', 'extra.weight'\]"):
        load_checkpoint(model, path)
    load_checkpoint(model, path, strict=False)
    wrong_shape = make_model(hidden=4)
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(wrong_shape, path, check_config=False)


def test_missing_and_corrupt_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"):
        load_checkpoint(make_model(), tmp_path / "nope.safetensors")
    path = save_checkpoint(make_model(), tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="m.safetensors is not a readable safetensors file"):
        load_checkpoint(make_model(), path)
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="no tbpr metadata"):
        load_checkpoint(make_model(), tmp_path / "foreign.safetensors")


def test_checkpoint_files_are_written_into_out_dir_each_epoch(tmp_path):
    model, _ = run(tmp_path, "w")
    assert (tmp_path / "w" / WEIGHTS_FILE).exists() and (tmp_path / "w" / STATE_FILE).exists()
    assert read_checkpoint(tmp_path / "w" / WEIGHTS_FILE)["extra"] == {"global_step": 12}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP runs on CUDA only")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cuda_trains_and_resumes_to_the_same_weights(tmp_path, amp):
    over = {"train.amp": amp, "train.ckpt_every_steps": 2, "train.epochs": 3}

    def cuda_run(name, max_steps=None):
        model = make_model(**over)
        history = fit(model, make_loader(), model.cfg.train, out_dir=tmp_path / name, device="cuda",
                      progress=False, max_steps=max_steps)
        return model, history
    full, history = cuda_run("full")
    assert history[-1]["loss"] < history[0]["loss"]
    cuda_run("killed", max_steps=9)
    resumed, resumed_history = cuda_run("killed")
    for name, value in weights(full).items():
        torch.testing.assert_close(weights(resumed)[name], value)
    assert resumed_history[-1]["loss"] == pytest.approx(history[-1]["loss"])
    scaler = torch.load(tmp_path / "full" / STATE_FILE, weights_only=True)["scaler"]
    assert (scaler["scale"] > 0) if amp == "fp16" else scaler == {}

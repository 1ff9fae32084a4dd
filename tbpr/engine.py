"""Training engine shared by every paper: seeds, optimizer and schedules from ``TrainConfig``, AMP,
safetensors checkpoints with exact resume, and DistributedDataParallel under ``torchrun``.

``fit(model, train_loader, train_cfg, out_dir=...)`` writes into ``out_dir``:

- ``metrics.jsonl``: one line per epoch (``epoch`` counted from 1, the mean of every loss part,
  ``lr``, ``images_per_s``, ``seconds`` and the metrics of ``eval_fn``);
- ``model.safetensors``: the weights, with the model name, config, config hash and ``extra_state()``
  as metadata (``save_checkpoint`` / ``load_checkpoint``), and the file's own sha256, which
  ``read_checkpoint`` / ``load_checkpoint`` verify (a damaged file is an error, not lower scores);
- ``state.pt``: optimizer, scheduler, grad scaler, position (epoch, step in epoch), the running loss
  sums, and per rank the RNG states of python / numpy / torch and of the loader's generators. It is
  plain tensors and containers, so ``torch.load(weights_only=True)`` reads it without running code.

The pair is replaced without a moment where no consistent pair is on disk: the new weights and state
are written whole as ``model.safetensors.next`` / ``state.pt.next``, then renamed over the current
pair, weights first. A kill at any point leaves a pair that agrees on the step among the current and
``.next`` files; resume takes the newest one, finishes the interrupted renames and says so on stderr.

Resume (the default) continues from the checkpoint in ``out_dir``. The loader is created once by the
caller and re-iterated every epoch (``set_epoch(epoch)`` is called on its sampler when it has one);
the checkpoint keeps the RNG states of the start of the current epoch, so a mid-epoch resume restores
them, re-iterates the first ``k`` batches of the epoch (data loading only, no forward pass) and then
restores the RNG states saved at step ``k``. The resumed run then ends with exactly the weights and
logs of an uninterrupted one, as long as the loader's randomness comes from its sampler epoch, its
generators or per-sample seeds (as ``build_train_loader``'s does); persistent workers that draw from
their own RNG across epochs are the exception.

Learning-rate schedules are functions of the schedule clock ``t`` in epochs (``t`` = epoch index +
``lr_epoch_offset``, plus the fraction of the epoch when ``step_per="step"``):

- warm-up, ``t < warmup_epochs``: linear from ``warmup_factor * lr`` to the group's rate;
- ``constant``: the group's rate ``lr * lr_mult``;
- ``multistep``: the group's rate times ``gamma`` per milestone ``m <= t``;
- ``cosine``: ``min_lr + (rate - min_lr) * (1 + cos(pi * t / epochs)) / 2`` over the whole run,
  warm-up included (timm-style, no warm-up shift; IVT's recipe).
The warm-up start ``warmup_factor * lr`` and ``min_lr`` are absolute and the same for every group.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import config_hash, to_dict
from .progress import bar as progress_bar

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
NEXT = ".next"  # suffix of a checkpoint pair being written, renamed over the current one when whole
SELECTED_FILE = "selected.safetensors"  # train.select="val": the weights of the best validation epoch
SELECTS = ("last", "val")
SHA256_KEY = "sha256"  # metadata entry: the sha256 of the file with this entry's value zeroed
_SHA256_PENDING = "0" * 64
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("multistep", "cosine", "constant")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- seeds

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); make cuDNN pick deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


# ----------------------------------------------------------------------------- optimizer, schedules

def build_optimizer(model: nn.Module, train_cfg) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over ``model.param_groups()``; each group runs at ``lr * lr_mult``.

    Frozen parameters (``requires_grad=False``) are left out, so a staged recipe freezes a module,
    then builds a fresh optimizer.
    """
    groups = model.param_groups() if hasattr(model, "param_groups") else [
        {"params": list(model.parameters()), "lr_mult": 1.0}]
    param_groups = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            mult = float(group.get("lr_mult", 1.0))
            param_groups.append({**group, "params": params, "lr_mult": mult, "lr": train_cfg.lr * mult})
    if not param_groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameter (every requires_grad "
                         "is False); unfreeze at least one module before training")
    name = train_cfg.optimizer.lower()
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas),
                                weight_decay=train_cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas),
                                 weight_decay=train_cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=train_cfg.lr, momentum=train_cfg.momentum,
                               weight_decay=train_cfg.weight_decay)
    raise ValueError(f"train.optimizer={train_cfg.optimizer!r} is unknown; choose one of {OPTIMIZERS}")


def scheduled_lr(t: float, group_lr: float, train_cfg) -> float:
    """The learning rate of a group whose full rate is ``group_lr`` at schedule clock ``t`` (epochs)."""
    c = train_cfg
    if t < c.warmup_epochs:
        start = c.warmup_factor * c.lr
        return start + (group_lr - start) * t / c.warmup_epochs
    if c.schedule == "constant":
        return group_lr
    if c.schedule == "multistep":
        return group_lr * c.gamma ** sum(t >= m for m in c.milestones)
    if c.schedule == "cosine":
        progress = min(t / c.epochs, 1.0)
        return c.min_lr + 0.5 * (group_lr - c.min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"train.schedule={c.schedule!r} is unknown; choose one of {SCHEDULES}")


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``TrainConfig`` schedule as a ``LambdaLR``; call ``.step()`` after every optimizer step
    when ``train_cfg.step_per == "step"``, after every epoch when it is ``"epoch"``."""
    if train_cfg.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule={train_cfg.schedule!r} is unknown; choose one of {SCHEDULES}")
    if train_cfg.step_per not in ("epoch", "step"):
        raise ValueError(f"train.step_per={train_cfg.step_per!r} is unknown; choose 'epoch' or 'step'")
    ticks_per_epoch = steps_per_epoch if train_cfg.step_per == "step" else 1

    def factor_for(group_lr):
        def factor(tick):
            if group_lr == 0:
                return 0.0
            t = train_cfg.lr_epoch_offset + tick / ticks_per_epoch
            return scheduled_lr(t, group_lr, train_cfg) / group_lr
        return factor

    lambdas = [factor_for(group["lr"]) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


# ----------------------------------------------------------------------------- checkpoints

def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _model_name(model: nn.Module) -> str:
    return getattr(model, "name", type(model).__name__)


def _config_dict(model: nn.Module) -> dict:
    cfg = getattr(model, "cfg", None)
    return to_dict(cfg) if dataclasses.is_dataclass(cfg) else {}


def _sha256_field(value: str) -> bytes:
    return f'"{SHA256_KEY}":"{value}"'.encode()


def _safetensors_header(f) -> tuple[bytes, bytes]:
    """The 8-byte length prefix and the JSON header of a safetensors file open at its start."""
    prefix = f.read(8)
    return prefix, f.read(int.from_bytes(prefix, "little"))


def _seal(path: Path) -> None:
    """Record the sha256 of ``path`` in its own metadata: the file is hashed as written, with the
    entry's value all zeros, and the digest is then patched over those zeros (same length, in place)."""
    with open(path, "r+b") as f:
        prefix, header = _safetensors_header(f)
        field = _sha256_field(_SHA256_PENDING)
        at = header.find(field)
        if at < 0 or header.find(field, at + 1) >= 0:
            raise RuntimeError(f"{path}: the safetensors header holds no single {SHA256_KEY!r} entry "
                               "to record the checksum in (has the safetensors format changed?)")
        f.seek(0)
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        f.seek(len(prefix) + at + len(field) - len(_SHA256_PENDING) - 1)
        f.write(digest.encode())


_VERIFIED: set = set()  # (path, inode, size, mtime) of files whose sha256 already matched


def _verify_sha256(path: Path, recorded: str | None) -> None:
    """Refuse a checkpoint whose bytes differ from the sha256 recorded when it was written; one
    without a recorded sha256 (older, or written by other tools) is not checked."""
    if recorded is None:
        return
    stat = path.stat()
    identity = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if identity in _VERIFIED:  # read_checkpoint then load_checkpoint hash the file once
        return
    with open(path, "rb") as f:
        prefix, header = _safetensors_header(f)
        field = _sha256_field(recorded)
        ok = re.fullmatch(r"[0-9a-f]{64}", recorded) is not None and header.count(field) == 1
        if ok:
            digest = hashlib.sha256(prefix + header.replace(field, _sha256_field(_SHA256_PENDING)))
            ok = hashlib.file_digest(f, lambda: digest).hexdigest() == recorded
    if not ok:
        raise ValueError(f"{path} does not match its recorded sha256: the file is damaged; delete the "
                         "run folder and train again")
    _VERIFIED.add(identity)


def save_checkpoint(model: nn.Module, path, extra: dict | None = None) -> Path:
    """Write the weights to ``path`` (safetensors) with the model name, config, config hash,
    ``extra_state()`` and ``extra`` (JSON) as metadata, and the sha256 of the file itself (verified
    by ``read_checkpoint`` / ``load_checkpoint``). The write is atomic (temp file + rename)."""
    model = _unwrap(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = _config_dict(model)
    metadata = {
        "format": "tbpr",
        "model": _model_name(model),
        "config": json.dumps(cfg),
        "config_hash": config_hash(cfg),
        "extra_state": json.dumps(model.extra_state() if hasattr(model, "extra_state") else {}),
        "extra": json.dumps(extra or {}),
        SHA256_KEY: _SHA256_PENDING,
    }
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp), metadata=metadata, force_contiguous=True)
    _seal(tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path) -> dict:
    """The metadata of a tbpr checkpoint: ``model``, ``config`` (dict), ``config_hash``,
    ``extra_state`` (dict), ``extra`` (dict). Enough to rebuild the model before loading weights.
    Refuses a file that does not match its recorded sha256 (hashed once per file version)."""
    path = Path(path)
    metadata = _tbpr_metadata(path)
    _verify_sha256(path, metadata.get(SHA256_KEY))
    return {"model": metadata["model"], "config": json.loads(metadata["config"]),
            "config_hash": metadata["config_hash"], "extra_state": json.loads(metadata["extra_state"]),
            "extra": json.loads(metadata["extra"])}


def _tbpr_metadata(path: Path) -> dict:
    """The raw safetensors metadata of a tbpr checkpoint (the header only: no checksum, no tensor)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train a model first or pass the "
                                "path of an existing model.safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for truncated / foreign files
        raise ValueError(f"checkpoint {path} is not a readable safetensors file ({err}); it is corrupt "
                         "or truncated (an interrupted write?): delete it and train again") from err
    if metadata.get("format") != "tbpr":
        raise ValueError(f"checkpoint {path} has no tbpr metadata (found keys {sorted(metadata)}); "
                         "write it with tbpr.engine.save_checkpoint")
    return metadata


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_differences(found: dict, expected: dict, limit: int = 6, here: str = "model") -> str:
    a, b = _flatten(found), _flatten(expected)
    diffs = [f"{k}: checkpoint {a.get(k, '<absent>')!r}, {here} {b.get(k, '<absent>')!r}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def load_checkpoint(model: nn.Module, path, strict: bool = True, check_config: bool = True) -> dict:
    """Load weights from ``path`` into ``model`` and return the checkpoint metadata.

    Refuses a checkpoint of another model, or (unless ``check_config=False``) of another config,
    and (when ``strict``) one whose tensor names differ from the model's.
    """
    target = _unwrap(model)
    meta = read_checkpoint(path)
    name = _model_name(target)
    if meta["model"] != name:
        raise ValueError(f"checkpoint {path} holds model {meta['model']!r}, but it is being loaded into "
                         f"{name!r}; create a {meta['model']!r} model or use a {name!r} checkpoint")
    expected = _config_dict(target)
    if check_config and meta["config_hash"] != config_hash(expected):
        raise ValueError(
            f"checkpoint {path} was trained with config hash {meta['config_hash']}, the model has "
            f"{config_hash(expected)}; differences: {_config_differences(meta['config'], expected)}. "
            "Build the model from read_checkpoint(path)['config'], or pass check_config=False")
    try:
        missing, unexpected = load_model(target, str(path), strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"checkpoint {path} does not fit {name!r}: {err}") from err
    if strict and (missing or unexpected):
        raise ValueError(f"checkpoint {path} does not match {name!r}: missing tensors {sorted(missing)}, "
                         f"unexpected tensors {sorted(unexpected)}; pass strict=False to load the rest")
    return meta


# ----------------------------------------------------------------------------- RNG and loader state

def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loader_generators(loader) -> dict:
    """The random generators a loader and its (batch) sampler hold, by attribute path."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    owners = {"loader": loader, "sampler": getattr(loader, "sampler", None),
              "batch_sampler": batch_sampler,
              "batch_sampler.sampler": getattr(batch_sampler, "sampler", None)}
    found = {}
    for owner_name, owner in owners.items():
        for attr in ("generator", "rng"):
            gen = getattr(owner, attr, None)
            if isinstance(gen, (torch.Generator, np.random.Generator, random.Random)):
                found[f"{owner_name}.{attr}"] = gen
    return found


def _loader_state(loader) -> dict:
    state = {}
    for key, gen in _loader_generators(loader).items():
        if isinstance(gen, torch.Generator):
            state[key] = gen.get_state()
        elif isinstance(gen, np.random.Generator):
            state[key] = json.dumps(gen.bit_generator.state)
        else:
            state[key] = gen.getstate()
    return state


def _set_loader_state(loader, state: dict) -> None:
    for key, gen in _loader_generators(loader).items():
        if key not in state:
            raise ValueError(f"cannot resume: the loader now has a generator at {key!r} that the "
                             "checkpoint did not record; build the loader as in the original run")
        if isinstance(gen, torch.Generator):
            gen.set_state(state[key])
        elif isinstance(gen, np.random.Generator):
            gen.bit_generator.state = json.loads(state[key])
        else:
            gen.setstate(state[key])


def _set_epoch(loader, epoch: int) -> None:
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(epoch)


# ----------------------------------------------------------------------------- distributed

@dataclasses.dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_env() -> tuple[int, int]:
    """``(rank, world_size)`` of this process as torchrun sets them (``(0, 1)`` without torchrun);
    pass them to ``build_train_loader`` so each rank reads its own share."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_distributed(device: torch.device) -> tuple[_Dist, torch.device]:
    rank, world_size = distributed_env()
    if world_size <= 1:
        return _Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # Kept for the life of the process: a staged recipe calls fit() several times, and a group
        # destroyed and re-created under torchrun hangs in its rendezvous.
        atexit.register(_shutdown_distributed)
    return _Dist(dist.get_rank(), dist.get_world_size()), device


def _shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()  # without it gloo aborts rank 0 in destroy_process_group (NOTES.md)
        dist.destroy_process_group()


def _gather(obj, ctx: _Dist) -> list:
    if ctx.world_size == 1:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj, ctx: _Dist):
    if ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(ctx: _Dist) -> None:
    if ctx.world_size > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- training loop

def _to_device(batch, device: torch.device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and any(torch.is_tensor(v) for v in batch):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        if torch.is_tensor(batch.get("images")):
            return batch["images"].shape[0]
        batch = list(batch.values())
    return next((len(v) for v in batch if torch.is_tensor(v) or isinstance(v, list)), 0)


def _amp_dtype(amp: str, device: torch.device, ctx: _Dist):
    if amp == "none":
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"train.amp={amp!r} is unknown; choose 'none', 'bf16' or 'fp16'")
    if device.type != "cuda":
        if ctx.main:
            print(f"tbpr.engine: train.amp={amp!r} ignored on {device.type} (AMP runs on CUDA only)")
        return None
    return AMP_DTYPES[amp]


def _logged_lr(optimizer) -> float:
    groups = optimizer.param_groups
    return next((g["lr"] for g in groups if g.get("lr_mult", 1.0) == 1.0), groups[0]["lr"])


def _read_history(out: Path, epochs_done: int) -> list[dict]:
    path = out / METRICS_FILE
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["epoch"] <= epochs_done]


def _write_history(out: Path, history: list[dict]) -> None:
    tmp = out / (METRICS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    os.replace(tmp, out / METRICS_FILE)


def _unreadable_state_reason(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words (torch's own message
    advises ``weights_only=False``, i.e. running whatever code the file holds: not repeated here)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it pickles a {found.group(1)} object, not only tensors and containers"
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if found:
        return f"its pickle is refused: {found.group(1).strip()[:120]}"
    if isinstance(err, EOFError) or "zip archive" in text or "central directory" in text:
        return "it is truncated or not written by torch.save"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first and "weights_only" not in first:
        return f"{type(err).__name__}: {first[:120]}"
    return type(err).__name__


def _read_state(path: Path, out: Path) -> dict:
    """A training state file, loaded without running code; any other file is a one-line error."""
    weights = WEIGHTS_FILE + path.name[len(STATE_FILE):]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        reason = None if isinstance(state, dict) and "global_step" in state else (
            f"it holds a {type(state).__name__} without a global_step")
    except Exception as err:  # noqa: BLE001 - unpickling / zip / EOF errors: all one answer
        reason = _unreadable_state_reason(err)
    if reason is not None:
        raise ValueError(f"cannot resume from {out}: {path} is not a plain-tensor training state "
                         f"({reason}); delete it (and {weights}) to start over")
    return state


def _checkpoint_step(path: Path, out: Path):
    try:
        return json.loads(_tbpr_metadata(path)["extra"]).get("global_step")
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"cannot resume from {out}: {err}. Use another out_dir, or resume=False to "
                         "start over there") from err


def _load_training_state(out: Path, model: nn.Module, train_cfg, ctx: _Dist) -> dict | None:
    """The newest training state in ``out`` whose weights (loaded into ``model``) agree with it on
    the step, among the current and ``.next`` files (see ``_save_training_state``); an interrupted
    write's renames are finished, or its lone ``.next`` file deleted, with one line on stderr."""
    state_paths = [p for p in (out / (STATE_FILE + NEXT), out / STATE_FILE) if p.exists()]
    if not state_paths:
        return None
    weights_steps = {p: _checkpoint_step(p, out)
                     for p in (out / (WEIGHTS_FILE + NEXT), out / WEIGHTS_FILE) if p.exists()}
    seen, chosen = [], None
    for state_path in state_paths:  # the .next state, when there is one, is the newer
        state = _read_state(state_path, out)
        seen.append(f"{state_path.name} step {state['global_step']}")
        weights = next((w for w, step in weights_steps.items() if step == state["global_step"]), None)
        if weights is not None:
            chosen = weights, state_path
            break
    if chosen is None:
        listed = ", ".join([f"{w.name} step {step}" for w, step in weights_steps.items()] + seen)
        raise ValueError(f"cannot resume from {out}: no weights file agrees with a training state on "
                         f"the step ({listed or 'no ' + WEIGHTS_FILE}); delete {WEIGHTS_FILE}* and "
                         f"{STATE_FILE}* there to start over")
    weights, state_path = chosen
    try:
        load_checkpoint(model, weights)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"cannot resume from {out}: {err}. Use another out_dir, or resume=False to "
                         "start over there") from err
    if state["train_config"] != to_dict(train_cfg):
        diffs = _config_differences(state["train_config"], to_dict(train_cfg), here="this run")
        raise ValueError(f"cannot resume from {out}: it was trained with another TrainConfig; "
                         f"differences: {diffs}. Use another out_dir, or resume=False to start over there")
    if len(state["ranks"]) != ctx.world_size:
        raise ValueError(f"cannot resume from {out}: it was written by {len(state['ranks'])} "
                         f"process(es), this run has {ctx.world_size}; resume with the same world size")
    _barrier(ctx)  # every rank has read the files before rank 0 renames them
    if ctx.main:
        _settle_pair(out, weights, state_path, state["global_step"], weights_steps)
    _barrier(ctx)
    return state


def _settle_pair(out: Path, weights: Path, state_path: Path, step, weights_steps: dict) -> None:
    """Make the pair resumed from the current one, delete what an interrupted write left, and
    say so in one line."""
    done = []
    for path, final in ((weights, out / WEIGHTS_FILE), (state_path, out / STATE_FILE)):
        if path != final:
            os.replace(path, final)
            done.append(f"moved {path.name} into place")
    for path in (out / (WEIGHTS_FILE + NEXT), out / (STATE_FILE + NEXT)):
        if path.exists():
            newer = f", step {weights_steps[path]}" if path in weights_steps else ""
            path.unlink()
            done.append(f"deleted the incomplete {path.name}{newer}")
    if done:
        print(f"tbpr.engine: a checkpoint write in {out} was interrupted; resuming from step {step} "
              f"({weights.name} + {state_path.name}): {', '.join(done)}", file=sys.stderr)


def _save_training_state(out: Path, model, optimizer, scheduler, scaler, position: dict,
                         rank_state: dict, ctx: _Dist) -> None:
    """Write the pair whole as ``model.safetensors.next`` + ``state.pt.next`` next to the current
    one, then rename it over the current pair, weights first: a kill at any moment leaves one pair
    that agrees on the step (current, new, or new weights + ``state.pt.next``)."""
    ranks = _gather(rank_state, ctx)
    if ctx.main:
        weights_next, state_next = out / (WEIGHTS_FILE + NEXT), out / (STATE_FILE + NEXT)
        save_checkpoint(model, weights_next, extra={"global_step": position["global_step"]})
        state = {**position, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "ranks": ranks}
        tmp = out / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, state_next)
        os.replace(weights_next, out / WEIGHTS_FILE)
        os.replace(state_next, out / STATE_FILE)
    _barrier(ctx)


def fit(model: nn.Module, train_loader, train_cfg, *, out_dir=None, seed: int = 0, eval_fn=None,
        resume: bool = True, device="cpu", progress: bool = True,
        max_steps: int | None = None) -> list[dict]:
    """Train ``model`` (its ``forward`` = ``training_step``) on ``train_loader`` by ``train_cfg``.

    Returns the per-epoch logs (also in ``out_dir/metrics.jsonl``). ``eval_fn(model) -> {metric:
    value}`` runs every ``train_cfg.eval_every`` epochs and after the last one (rank 0, eval mode).
    With ``train_cfg.select == "val"`` and an ``eval_fn`` (on the validation split), it runs every
    ``eval_every`` epochs (every epoch when 0), the weights of the epoch with the best
    ``select_metric`` are kept (``out_dir/selected.safetensors``; its log record has ``selected``)
    and loaded into ``model`` at the end; otherwise the last epoch's weights stay.
    ``max_steps`` stops after that many optimizer steps in total without writing anything, which
    is how a crash is simulated. Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
    DistributedDataParallel; build the loader with ``distributed_env()`` so each rank gets its share.
    The process group (gloo on CPU, nccl on CUDA) is created by the first call and closed, after a
    barrier, when the process exits.
    """
    ctx, device = _init_distributed(torch.device(device))
    history = _fit(model, train_loader, train_cfg, ctx, device, out_dir, seed, eval_fn, resume,
                   progress, max_steps)
    _barrier(ctx)
    if _selecting(train_cfg, eval_fn) and len(history) == train_cfg.epochs:
        _load_selected(model, out_dir, history)
    return history


def _selecting(cfg, eval_fn) -> bool:
    if cfg.select not in SELECTS:
        raise ValueError(f"train.select={cfg.select!r} is unknown; choose one of {SELECTS}")
    return cfg.select == "val" and eval_fn is not None


def _select(model, record: dict, history: list[dict], cfg, out: Path | None, ctx: _Dist) -> None:
    """Mark ``record`` ``selected`` and keep the weights when its ``select_metric`` beats every
    earlier epoch's (ties keep the earlier epoch)."""
    name = cfg.select_metric
    if name not in record:
        raise ValueError(f"train.select_metric={name!r} is not among the validation metrics "
                         f"{sorted(k for k in record if k not in ('epoch', 'lr', 'seconds'))}")
    earlier = [h[name] for h in history if name in h]
    if earlier and record[name] <= max(earlier):
        return
    record["selected"] = True
    if out is None:
        _unwrap(model)._selected_state = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}
    elif ctx.main:
        save_checkpoint(model, out / SELECTED_FILE, extra={"epoch": record["epoch"], name: record[name]})


def _load_selected(model, out_dir, history: list[dict]) -> None:
    if not any(h.get("selected") for h in history):
        return
    model = _unwrap(model)
    if out_dir is None:
        model.load_state_dict(model._selected_state)
        del model._selected_state
    else:
        load_checkpoint(model, Path(out_dir) / SELECTED_FILE)


def _fit(model, loader, cfg, ctx: _Dist, device, out_dir, seed, eval_fn, resume, progress, max_steps):
    seed_everything(seed + ctx.rank)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("train_loader yields no batch: the training set is smaller than one batch "
                         "(drop_last?); lower data.batch_size or add data")
    model.to(device)
    out = Path(out_dir) if out_dir is not None else None
    state = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            state = _load_training_state(out, model, cfg, ctx)
        elif ctx.main:
            for name in (WEIGHTS_FILE, STATE_FILE, METRICS_FILE, WEIGHTS_FILE + NEXT,
                         STATE_FILE + NEXT):
                (out / name).unlink(missing_ok=True)
    net = model
    if ctx.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                      find_unused_parameters=cfg.ddp_find_unused)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    amp_dtype = _amp_dtype(cfg.amp, device, ctx)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    per_step = cfg.step_per == "step"
    selecting = _selecting(cfg, eval_fn)
    sum_dtype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32

    epoch, skip, global_step = 0, 0, 0
    history = []
    if state is not None:
        epoch, skip, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history = _read_history(out, epoch)
        mine = state["ranks"][ctx.rank]
        _set_rng_state(mine["rng_epoch_start"])
        _set_loader_state(loader, mine["loader_epoch_start"])

    while epoch < cfg.epochs and not (max_steps is not None and global_step >= max_steps):
        _set_epoch(loader, epoch)
        epoch_start = {"rng_epoch_start": _rng_state(), "loader_epoch_start": _loader_state(loader)}
        net.train()
        batches = iter(loader)
        for _ in range(skip):  # re-draw the batches the interrupted run had consumed
            next(batches)
        if skip:
            mine = state["ranks"][ctx.rank]
            _set_rng_state(mine["rng"])
            sums = {k: torch.tensor(v, dtype=sum_dtype, device=device) for k, v in mine["sums"].items()}
            steps, images = mine["steps"], mine["images"]
        else:
            sums, steps, images = {}, 0, 0
        bar = progress_bar(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           enabled=progress and ctx.main, dynamic_ncols=True)
        tic = time.perf_counter()
        images_at_start = images
        for step, batch in enumerate(batches, start=skip):
            batch = _to_device(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = net(batch)
            if not isinstance(outputs, dict) or "loss" not in outputs:
                raise TypeError(f"{type(model).__name__}.training_step must return a dict with a "
                                f"'loss' entry; it returned {type(outputs).__name__}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(outputs["loss"]).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = _logged_lr(optimizer)
            if per_step:
                scheduler.step()
            for name, value in outputs.items():
                value = torch.as_tensor(value).detach().to(device=device, dtype=sum_dtype)
                sums[name] = sums.get(name, 0) + value
            steps, images, global_step = steps + 1, images + _batch_size(batch), global_step + 1
            bar.update(1)
            if steps % max(cfg.log_every, 1) == 0 or step + 1 == steps_per_epoch:
                _check_finite(sums, cfg, epoch, step)
                rate = (images - images_at_start) * ctx.world_size / (time.perf_counter() - tic)
                bar.set_postfix(loss=f"{sums['loss'].item() / steps:.4f}", img_s=f"{rate:.1f}")
            if max_steps is not None and global_step >= max_steps:
                bar.close()
                return history  # a simulated crash: nothing of this epoch is written
            if (out is not None and cfg.ckpt_every_steps > 0 and step + 1 < steps_per_epoch
                    and (step + 1) % cfg.ckpt_every_steps == 0):
                position = {"epoch": epoch, "step_in_epoch": step + 1, "global_step": global_step,
                            "train_config": to_dict(cfg)}
                rank_state = {**epoch_start, "rng": _rng_state(), "steps": steps, "images": images,
                              "sums": {k: v.item() for k, v in sums.items()}}
                _save_training_state(out, model, optimizer, scheduler, scaler, position, rank_state, ctx)
        bar.close()
        seconds = time.perf_counter() - tic
        if not per_step:
            scheduler.step()
        record = _epoch_record(epoch, sums, steps, lr, (images - images_at_start) * ctx.world_size,
                               seconds, ctx)
        every = cfg.eval_every or (1 if selecting else 0)
        if eval_fn is not None and (epoch + 1 == cfg.epochs or (every > 0 and (epoch + 1) % every == 0)):
            record.update(_evaluate(model, eval_fn, ctx))
            if selecting:
                _select(model, record, history, cfg, out, ctx)
        history.append(record)
        epoch, skip = epoch + 1, 0
        if out is not None:
            if ctx.main:
                _write_history(out, history)
            position = {"epoch": epoch, "step_in_epoch": 0, "global_step": global_step,
                        "train_config": to_dict(cfg)}
            now = _rng_state()
            rank_state = {"rng_epoch_start": now, "loader_epoch_start": _loader_state(loader),
                          "rng": now, "steps": 0, "images": 0, "sums": {}}
            _save_training_state(out, model, optimizer, scheduler, scaler, position, rank_state, ctx)
    return history


def _check_finite(sums: dict, cfg, epoch: int, step: int) -> None:
    if cfg.amp != "fp16" and not torch.isfinite(sums["loss"]):
        raise FloatingPointError(f"the training loss became non-finite by epoch {epoch + 1}, step "
                                 f"{step + 1}; lower train.lr or set train.grad_clip")


def _epoch_record(epoch, sums, steps, lr, images, seconds, ctx: _Dist) -> dict:
    names = sorted(sums)
    totals = torch.stack([sums[n] for n in names])
    if ctx.world_size > 1:  # average the loss parts over ranks too
        dist.all_reduce(totals)
        totals = totals / ctx.world_size
    totals = totals.double().cpu()
    record = {"epoch": epoch + 1}
    record.update({n: (totals[i] / steps).item() for i, n in enumerate(names)})
    record.update({"lr": lr, "images_per_s": images / max(seconds, 1e-9), "seconds": seconds})
    return record


def _evaluate(model: nn.Module, eval_fn, ctx: _Dist) -> dict:
    metrics = None
    if ctx.main:
        model.eval()
        metrics = {k: float(v) for k, v in eval_fn(model).items()}
        model.train()
    return _broadcast(metrics, ctx)

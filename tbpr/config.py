"""Configs are data: nested dataclasses, YAML presets, dotted overrides, a stable hash.

Every model config holds the paper's numbers as its defaults (the ``paper`` profile); each paper's
``tbpr/papers/<paper>/paper.yaml`` lists what the CPU profiles (``quick``, ``smoke``) shrink and,
under ``ablations``, every ablation row of the paper as an override (read by ``tbpr.papers``).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
import typing
from typing import Any

import yaml


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)

# paper: the paper's numbers (the dataclass defaults); official: the official code where it differs
# (overrides of paper); quick / smoke: CPU sizes
PROFILES = ("paper", "official", "quick", "smoke")


def cache_dir() -> Path:
    """Root of everything tbpr caches (``tbpr/cache.py`` lists what lives there): ``$TBPR_CACHE``,
    default ``~/.cache/tbpr``."""
    return Path(os.environ.get("TBPR_CACHE", Path.home() / ".cache" / "tbpr"))


@dataclass
class DataConfig:
    """How images and captions are fed (shared by every model)."""
    image_size: tuple[int, int] = (384, 128)  # H, W
    batch_size: int = 64
    sampler: str = "random"  # "random" over captions, or "pk" (P identities x K instances)
    num_instances: int = 4  # K of the P×K sampler
    flip: bool = True
    pad_crop: int = 10  # zero-pad margin in pixels of the input (image_size) before the random crop; 0 = off
    random_erasing: float = 0.0  # probability
    # what an erased box holds, in normalised units: zero (torchvision's default) | mean (the
    # normalisation mean's values, as torchvision RandomErasing(value=mean) after Normalize) | noise
    # (per-pixel standard normal, timm RandomErasing(mode="pixel"))
    erasing_fill: str = "zero"
    erasing_scale: tuple[float, float] = (0.02, 0.33)  # box area, fraction of the image
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    n_views: int = 1  # independently augmented views per training image (IVT MLA uses 3)
    num_workers: int = 0
    max_caption_len: int = 100


@dataclass
class TrainConfig:
    """Optimisation recipe, read by ``tbpr.engine``."""
    epochs: int = 60
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 4e-5
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    lr_mult: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> lr multiplier
    schedule: str = "multistep"  # multistep | cosine | constant
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.1
    min_lr: float = 0.0
    step_per: str = "epoch"  # epoch | step: when the scheduler advances
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    amp: str = "none"  # none | bf16 | fp16 (GPU only; ignored on CPU)
    eval_every: int = 0  # epochs; 0 = only at the end (every epoch with select="val")
    # which epoch's weights the run keeps: last | val (the best select_metric on the validation split,
    # evaluated every eval_every epochs; a dataset without a val split falls back to last, warning)
    select: str = "last"
    select_metric: str = "R1"
    log_every: int = 10  # steps
    # the schedule's clock at the first epoch: 1 reproduces codes that call scheduler.step() at the
    # start of every epoch (LGUR's milestones felt one epoch early, IVT's e = 1..E cosine)
    lr_epoch_offset: int = 0
    ckpt_every_steps: int = 0  # mid-epoch checkpoint every N steps (exact resume); 0 = epoch ends only
    ddp_find_unused: bool = True  # DistributedDataParallel(find_unused_parameters=...)


@dataclass
class ModelConfig:
    """Base of every paper config: ``train`` and ``data`` sections plus the model's own fields."""
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


def to_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def from_dict(cls, d: dict):
    """Build dataclass ``cls`` from a (possibly partial) dict; unknown keys are an error."""
    return apply_overrides(cls(), d)


def _coerce(old, new, kind, where: str):
    """``new`` as the declared type ``kind`` of the field; a value of another kind is refused, naming
    the field (``train.lr=abc``, ``train.epochs=1.5``, ``flip=3``), instead of failing deep in
    training."""
    args = typing.get_args(kind)
    if type(None) in args:  # Optional[X]: None, or an X
        if new is None:
            return None
        rest = [a for a in args if a is not type(None)]
        kind = rest[0] if len(rest) == 1 else None
    if isinstance(old, tuple) and isinstance(new, (list, tuple)):
        return tuple(new)
    if kind is bool:
        if not isinstance(new, bool):
            raise TypeError(f"{where}={new!r}: expects true or false")
    elif kind is int:
        if isinstance(new, bool) or not (isinstance(new, int) or (isinstance(new, float) and new.is_integer())):
            raise TypeError(f"{where}={new!r}: expects a whole number")
        return int(new)
    elif kind is float:
        if isinstance(new, bool) or not isinstance(new, (int, float)):
            raise TypeError(f"{where}={new!r}: expects a number")
        return float(new)
    elif kind is str and not isinstance(new, str):
        raise TypeError(f"{where}={new!r}: expects a string")
    return new


def apply_overrides(cfg, overrides: dict | None):
    """Return a copy of ``cfg`` with ``overrides`` applied.

    Keys may be nested dicts (``{"train": {"lr": 1e-4}}``) or dotted (``{"train.lr": 1e-4}``).
    """
    if not overrides:
        return dataclasses.replace(cfg)
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif isinstance(value, dict) and dataclasses.is_dataclass(getattr(cfg, head, None)):
            nested.setdefault(head, {}).update(value)
        else:
            nested[head] = value
    names = {f.name for f in dataclasses.fields(cfg)}
    hints = _field_types(type(cfg))
    changes = {}
    for key, value in nested.items():
        if key not in names:
            raise KeyError(
                f"{type(cfg).__name__} has no field {key!r}; valid fields: {sorted(names)}")
        old = getattr(cfg, key)
        if dataclasses.is_dataclass(old) and isinstance(value, dict):
            changes[key] = apply_overrides(old, value)
        else:
            changes[key] = _coerce(old, value, hints.get(key), f"{type(cfg).__name__}.{key}")
    return dataclasses.replace(cfg, **changes)


def config_hash(obj) -> str:
    blob = json.dumps(obj if isinstance(obj, dict) else to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_config(cfg, path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_config(cls, path):
    return from_dict(cls, yaml.safe_load(Path(path).read_text()))


def parse_value(text: str):
    """A command-line value as YAML reads it (``1e-4`` as a float, which YAML 1.1 reads as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["train.lr=1e-4", "use_pfl=false"]`` -> ``{"train.lr": 1e-4, "use_pfl": False}``."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key] = parse_value(value)
    return out

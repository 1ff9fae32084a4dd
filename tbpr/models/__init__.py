"""Model registry: ``create_model(name, profile=..., **overrides)`` in the style of timm.

Each paper file registers itself with ``@register_model(name, ConfigClass)``. The paper profile
can be built on the ``meta`` device (``device="meta"``) to count parameters without allocating.
"""
from __future__ import annotations

import importlib

import torch

from ..config import apply_overrides, preset
from .base import TBPRModel, count_parameters, parameter_table

_REGISTRY: dict[str, tuple[type, type]] = {}
MODEL_NAMES = ("mia", "ssan", "lgur", "ivt", "cada")  # the papers, in the order they appeared


def register_model(name: str, config_cls: type):
    def wrap(model_cls):
        _REGISTRY[name] = (model_cls, config_cls)
        model_cls.name = name
        return model_cls
    return wrap


def _lookup(name: str) -> tuple[type, type]:
    if name not in _REGISTRY:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {available_models()}")
    return _REGISTRY[name]


def available_models() -> list[str]:
    found = []
    for name in MODEL_NAMES:
        try:
            _lookup(name) if name not in _REGISTRY else None
            found.append(name)
        except ValueError:
            pass
    return found


def get_config(name: str, profile: str = "quick", overrides: dict | None = None):
    """The config of model ``name`` at ``profile`` with ``overrides`` applied."""
    _, config_cls = _lookup(name)
    return apply_overrides(preset(config_cls, name, profile), overrides)


def create_model(name: str, profile: str = "quick", *, device: str | torch.device | None = None,
                 config=None, **kwargs) -> TBPRModel:
    """Build model ``name`` at ``profile``.

    ``config`` (a ready config) takes precedence over ``profile``; other keyword arguments are config
    overrides (dotted keys allowed through ``**{"train.lr": 1e-4}``), except the model constructor's
    own keyword arguments (e.g. ``vocab``), which are passed through.
    """
    model_cls, config_cls = _lookup(name)
    ctor_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in getattr(model_cls, "init_kwargs", ())}
    cfg = config if config is not None else get_config(name, profile, kwargs)
    if config is not None and kwargs:
        cfg = apply_overrides(cfg, kwargs)
    if device is not None and str(device) == "meta":
        with torch.device("meta"):
            return model_cls(cfg, **ctor_kwargs)
    model = model_cls(cfg, **ctor_kwargs)
    return model.to(device) if device is not None else model


__all__ = ["TBPRModel", "available_models", "count_parameters", "create_model", "get_config",
           "parameter_table", "register_model"]

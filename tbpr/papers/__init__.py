"""The papers, one folder each, and ``create_model(name, profile)`` in the style of timm.

``tbpr/papers/<paper>/`` holds ``model.py`` (the config dataclass, whose defaults are the paper
profile, and the network), ``recipe.py`` (how the paper trains and evaluates beyond the shared loop)
and ``paper.yaml`` (the ``official`` profile — the official code where it differs from the paper, as
overrides of the paper profile, each with its reason under ``reasons: official:`` —, the CPU
profiles and every ablation row, beside the paper's own numbers). Every
model builds from its config alone, at every profile, without data; ``device="meta"`` counts the
parameters of the paper sizes without allocating them.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from pathlib import Path

import torch
import yaml

from ..cache import PAPERS
from ..config import PROFILES, apply_overrides, to_dict
from .base import Recipe, TBPRModel, count_parameters, parameter_table

MODEL_NAMES = PAPERS
PAPERS_DIR = Path(__file__).parent


@lru_cache(maxsize=None)
def paper_module(name: str):
    """The package ``tbpr.papers.<name>``, which exports ``MODEL``, ``CONFIG`` and ``RECIPE``."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; available: {list(MODEL_NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


def model_class(name: str) -> type[TBPRModel]:
    return paper_module(name).MODEL


def recipe(name: str) -> Recipe:
    """How paper ``name`` trains beyond the shared loop (stages, warm starts, data-derived state)."""
    return paper_module(name).RECIPE


def available_models() -> list[str]:
    return list(MODEL_NAMES)


@lru_cache(maxsize=None)
def _paper_yaml(name: str) -> dict:
    return yaml.safe_load((PAPERS_DIR / name / "paper.yaml").read_text()) or {}


def load_presets(name: str) -> dict:
    """The contents of ``papers/<name>/paper.yaml``: the profiles and the ablation tables."""
    return _paper_yaml(name)


def preset(name: str, profile: str):
    """The config of ``name`` at ``profile``: the paper's defaults, then the profile's overrides
    (``official`` = the paper profile with the official code's values where they differ)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    cfg = paper_module(name).CONFIG()
    if profile != "paper":
        cfg = apply_overrides(cfg, load_presets(name).get(profile) or {})
    return cfg


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value and key not in ("lr_mult",):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def profile_reasons(name: str, profile: str) -> dict[str, str]:
    """Why each field of ``profile`` differs from the paper profile: ``reasons: <profile>:`` of
    ``paper.yaml`` (dotted field -> reason)."""
    return dict((load_presets(name).get("reasons") or {}).get(profile) or {})


def profile_diff(name: str, a: str = "paper", b: str = "official") -> list[tuple[str, object, object, str]]:
    """Every config field whose value differs between profiles ``a`` and ``b``, as (dotted field,
    value at a, value at b, reason): the reason recorded for ``b`` (else for ``a``), '' if none."""
    fa, fb = _flat(to_dict(preset(name, a))), _flat(to_dict(preset(name, b)))
    reasons = {**profile_reasons(name, a), **profile_reasons(name, b)}
    return [(k, fa.get(k), fb.get(k), reasons.get(k, "")) for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k)]


def ablation_rows(name: str, table: str) -> dict[str, dict]:
    """Ablation rows of ``table`` as ``{row label: overrides}`` from the paper's ``paper.yaml``."""
    tables = load_presets(name).get("ablations", {})
    if table not in tables:
        raise KeyError(f"{name}: no ablation table {table!r}; have {sorted(tables)}")
    return {label: _row_overrides(row) for label, row in tables[table].items()}


def paper_numbers(name: str, table: str) -> dict[str, dict]:
    """The paper's own metrics for each row of ``table`` (``{row label: {metric: value}}``), read
    from the ``paper:`` entry of each row in ``paper.yaml``; rows the paper does not report are
    left out."""
    tables = load_presets(name).get("ablations", {})
    if table not in tables:
        raise KeyError(f"{name}: no ablation table {table!r}; have {sorted(tables)}")
    return {label: dict(row["paper"]) for label, row in tables[table].items()
            if isinstance(row, dict) and row.get("paper")}


def comparisons(name: str) -> dict:
    """What the paper's verdicts compare (``comparisons:`` of ``paper.yaml``): ``{"headline": {"table",
    "full", "baseline"}, "reference": {table: row}}``; every row of a table is compared with the
    table's reference row, and the headline (the full model against the paper's baseline row) runs
    at more seeds. Row labels are checked against the tables."""
    spec = load_presets(name).get("comparisons") or {}
    tables = load_presets(name).get("ablations", {})
    headline, reference = spec.get("headline") or {}, spec.get("reference") or {}
    where = f"tbpr/papers/{name}/paper.yaml: comparisons"
    for table, row in reference.items():
        if row not in tables.get(table, {}):
            raise ValueError(f"{where}: reference: {table}: {row!r} is not a row of ablations: {table}")
    if headline:
        rows = tables.get(headline.get("table"), {})
        for key in ("full", "baseline"):
            if headline.get(key) not in rows:
                raise ValueError(f"{where}: headline: {key}: {headline.get(key)!r} is not a row of "
                                 f"ablations: {headline.get('table')}")
        if reference.get(headline["table"]) != headline["full"]:
            raise ValueError(f"{where}: the headline's full row must be the reference of its table "
                             f"{headline['table']!r}, so its comparison is one of the table's")
    return {"headline": dict(headline), "reference": dict(reference)}


def _row_overrides(row) -> dict:
    """A row is its overrides, optionally with the paper's numbers beside them under ``paper:``."""
    return {k: v for k, v in (row or {}).items() if k != "paper"}


def get_config(name: str, profile: str = "quick", overrides: dict | None = None):
    """The config of model ``name`` at ``profile`` with ``overrides`` applied."""
    return apply_overrides(preset(name, profile), overrides)


def create_model(name: str, profile: str = "quick", *, device: str | torch.device | None = None,
                 config=None, **kwargs) -> TBPRModel:
    """Build model ``name`` at ``profile``, with no data.

    ``config`` (a ready config) takes precedence over ``profile``; other keyword arguments are config
    overrides (dotted keys allowed through ``**{"train.lr": 1e-4}``), except the model's data-derived
    arguments (``MODEL.data_fields``, e.g. ``vocab``), which are passed to its constructor; without
    them the model uses its defaults (e.g. the packaged WordPiece vocabulary).
    """
    model_cls = model_class(name)
    ctor_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in model_cls.data_fields}
    cfg = config if config is not None else get_config(name, profile, kwargs)
    if config is not None and kwargs:
        cfg = apply_overrides(cfg, kwargs)
    if device is not None and str(device) == "meta":
        with torch.device("meta"):
            return model_cls(cfg, **ctor_kwargs)
    model = model_cls(cfg, **ctor_kwargs)
    return model.to(device) if device is not None else model


__all__ = ["MODEL_NAMES", "Recipe", "TBPRModel", "ablation_rows", "available_models", "comparisons",
           "count_parameters", "create_model", "get_config", "model_class", "paper_numbers",
           "parameter_table", "preset", "profile_diff", "profile_reasons", "recipe"]

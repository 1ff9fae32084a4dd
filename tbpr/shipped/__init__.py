"""Shipped models: the full model of each paper at the quick profile (seed 0), trained by this code and
kept in the repository, so that the explorer, ``tbpr eval`` and ``tbpr search`` answer on a fresh
clone without training first. Each is ``<paper>.safetensors`` (a tbpr checkpoint; weights stored in
float16 so that all of them stay under ``BUDGET_BYTES``) beside ``<paper>.json``, its manifest (the
zoo's scheme: file, sha256, size) with the config, the code version and run key it was trained
under, the data's fingerprint, and the metrics of the shipped weights on the quick test split.

    tbpr ship ssan | all            # (re)makes ssan.safetensors + ssan.json here from the cached quick run
    find("ssan", "quick")           # the verified checkpoint when its config is the one asked for, else None
    split_records("synthpedes", None, "quick", "test")  # what they are explored / evaluated on: on a fresh
                                    # clone the test split rendered alone (15 s), not the full data (45 s)
    trained("ssan", "quick")        # (model, where from): the run cache first, then the shipped model
    verify("ssan")                  # (recorded, measured) metrics on the split they were recorded on
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from .. import synthpedes, zoo
from ..cache import code_version, data_fingerprint, write_json
from ..config import to_dict
from ..engine import read_checkpoint, save_checkpoint
from ..evaluate import evaluate
from ..experiments import DATA_PROFILE, load_records, load_trained, resolve_data_root, run, trained_run
from ..papers import MODEL_NAMES, get_config

DIR = Path(__file__).parent
BUDGET_BYTES = 25_000_000  # all shipped weights together (issue 24)
TOLERANCE = 0.1  # metric points: another CPU may round a close score the other way for a query or two
STORED_DTYPE = torch.float16  # the weights as shipped; loading computes in float32


class ShippedError(FileNotFoundError):
    """A shipped model that is missing, damaged or out of date (one line, naming the file and the fix)."""


def folder_path(folder) -> Path:
    """``folder``, or the repository's ``tbpr/shipped/`` (looked up at call time)."""
    return Path(folder) if folder is not None else DIR


def available(folder=None) -> list[str]:
    """Names of the models whose manifest is in ``folder``."""
    return sorted(p.stem for p in folder_path(folder).glob("*.json"))


def manifest(name: str, folder=None) -> dict:
    file = folder_path(folder) / f"{name}.json"
    if not file.exists():
        raise ShippedError(f"{file}: no shipped model {name!r} (shipped: {', '.join(available(folder)) or 'none'}); "
                           f"make it with `tbpr ship {name}`")
    return json.loads(file.read_text())


def path(name: str, folder=None) -> Path:
    """The shipped weights of ``name``, after checking them against the sha256 in the manifest."""
    meta = manifest(name, folder)
    file = folder_path(folder) / meta["file"]
    if not file.exists():
        raise ShippedError(f"{file}: shipped weights missing; re-make them with `tbpr ship {name}`")
    got = zoo.sha256(file)
    if got != meta["sha256"]:
        raise ShippedError(f"{file}: sha256 {got[:12]}… does not match its manifest ({meta['sha256'][:12]}…); "
                           f"re-make it with `tbpr ship {name}`")
    return file


def _plain(config) -> dict:
    return json.loads(json.dumps(config))  # tuples as lists, as the manifest stores them


def find(name: str, profile: str = "quick", overrides: dict | None = None, folder=None) -> Path | None:
    """The verified shipped checkpoint of ``name`` when it was trained with the config of ``profile``
    (+ ``overrides``), else None (nothing shipped, or another config)."""
    if not (folder_path(folder) / f"{name}.json").exists():
        return None
    meta = manifest(name, folder)
    if meta["config"] != _plain(to_dict(get_config(name, profile, overrides))):
        return None
    return path(name, folder)


def describe(name: str, folder=None) -> str:
    """"shipped model <folder>/ssan.safetensors (quick, seed 0, R1 12.3 on the quick test split)",
    plus a note when the code has changed since it was shipped."""
    meta = manifest(name, folder)
    text = (f"shipped model {folder_path(folder) / meta['file']} ({meta['profile']}, seed {meta['seed']}, "
            f"R1 {meta['metrics']['R1']:.1f} on the {meta['profile']} test split)")
    if meta["code"] != code_version(name):
        text += (f"; trained by code {meta['code']}, the code is now {code_version(name)}: its metrics may "
                 f"have moved (`tbpr ship {name}` re-makes it)")
    return text


def load(name: str, folder=None, device: str = "cpu"):
    """The shipped model ``name`` in float32 on ``device``, in eval mode."""
    return load_checkpoint_model(path(name, folder), device)


def load_checkpoint_model(checkpoint, device: str = "cpu"):
    """Any tbpr checkpoint rebuilt from the config and vocabulary saved in it."""
    meta = read_checkpoint(checkpoint)
    cfg = get_config(meta["model"], "paper", meta["config"])
    return load_trained(meta["model"], cfg, checkpoint).float().to(device).eval()


def trained(name: str, profile: str = "quick", overrides: dict | None = None, *, dataset: str = "synthpedes",
            data_root=None, seed: int = 0, device: str = "cpu", folder=None):
    """``(model, source, metrics)`` of the configuration: its run in the cache (``seed``), else the
    shipped model when it is that configuration (SynthPedes only), else a one-line error naming the
    commands that make either."""
    result = trained_run(name, profile, overrides, dataset=dataset, data_root=data_root, seed=seed, device=device)
    if result is not None:
        return result.load_model(device), f"run cache {result.run_dir}", result.metrics
    shipped = find(name, profile, overrides, folder) if dataset == "synthpedes" else None
    if shipped is not None:
        return load(name, folder, device), describe(name, folder), manifest(name, folder)["metrics"]
    raise ShippedError(f"no trained {name} at profile {profile!r}{' with ' + str(overrides) if overrides else ''} "
                       f"in the run cache and no shipped one for that config; train it with "
                       f"`tbpr train {name} --profile {profile}`"
                       + (f" or ship it with `tbpr ship {name}`" if not overrides else ""))


def split_records(dataset: str, data_root, profile: str, split: str = "test") -> list:
    """The records of ``split``: for SynthPedes in the cache, the full render when it is there, else
    that split rendered alone (the same images and records: ``synthpedes.ensure_split``); a shipped
    model needs no training data to be explored or evaluated."""
    if dataset == "synthpedes" and data_root is None:
        root = synthpedes.ensure_split(DATA_PROFILE[profile], split)
    else:
        root = resolve_data_root(dataset, data_root, profile)
    return load_records(dataset, root)[split]


def ship(name: str, profile: str = "quick", *, seed: int = 0, folder=None, device: str = "cpu") -> dict:
    """Write ``<name>.safetensors`` + ``<name>.json`` into ``folder`` from the cached run of the full
    model at ``profile`` (trained now when not cached), and return the manifest. The recorded metrics
    are those of the shipped (float16-stored) weights on the profile's SynthPedes test split."""
    folder = folder_path(folder)
    result = run(name, profile, seed=seed, device=device)
    model = result.load_model("cpu").to(STORED_DTYPE)
    stored = save_checkpoint(model, folder / f"{name}.safetensors",
                             extra={"shipped": {"run_key": result.key, "dtype": str(STORED_DTYPE)}})
    metrics = _measure(load_checkpoint_model(stored, device), result.spec["data_root"], device)
    meta = {"model": name, "file": stored.name, "sha256": zoo.sha256(stored), "bytes": stored.stat().st_size,
            "dtype": str(STORED_DTYPE).removeprefix("torch."), "profile": profile, "seed": seed,
            "dataset": "synthpedes", "data": result.spec["data"], "config": _plain(result.spec["config"]),
            "code": result.spec["code"], "run_key": result.key, "metrics": metrics,
            "run_metrics": result.metrics, "train_seconds": round(result.train_seconds, 1),
            "made_by": f"tbpr ship {name} --profile {profile}", "date": time.strftime("%Y-%m-%d")}
    write_json(folder / f"{name}.json", meta)
    return meta


def _measure(model, data_root, device: str) -> dict:
    records = load_records("synthpedes", data_root)
    return evaluate(model, records["test"], model.cfg.data, device=device, progress=False)


def verify(name: str, folder=None, device: str = "cpu") -> tuple[dict, dict]:
    """``(recorded, measured)`` metrics of shipped ``name`` on the test split it was recorded on;
    refused in one line when that split is not the one rendered here (other data would not say
    whether the weights reproduce)."""
    meta = manifest(name, folder)
    root = resolve_data_root(meta["dataset"], None, meta["profile"])
    here = data_fingerprint(root)
    if here != meta["data"]:
        raise ShippedError(f"{folder_path(folder) / (name + '.json')}: recorded on SynthPedes {meta['profile']} data "
                           f"{meta['data'][:12]}…, rendered here {here[:12]}… (another render version?); "
                           f"re-make it with `tbpr ship {name}`")
    return meta["metrics"], _measure(load(name, folder, device), root, device)


def differences(recorded: dict, measured: dict, tolerance: float = TOLERANCE) -> dict:
    """``{metric: (recorded, measured)}`` for every recorded number the measurement misses by more
    than ``tolerance`` (counts exactly)."""
    out = {}
    for key, value in recorded.items():
        if not isinstance(value, (int, float)):
            continue
        got = measured.get(key)
        limit = 0 if isinstance(value, int) else tolerance
        if got is None or abs(got - value) > limit:
            out[key] = (value, got)
    return out


def sizes(folder=None) -> dict[str, int]:
    """Bytes of each shipped weights file in ``folder``."""
    return {name: (folder_path(folder) / manifest(name, folder)["file"]).stat().st_size
            for name in available(folder) if (folder_path(folder) / manifest(name, folder)["file"]).exists()}


def ship_all(names=None, profile: str = "quick", *, folder=None, device: str = "cpu") -> dict:
    """``ship`` for each of ``names`` (default every paper); warns when the folder's weights together
    exceed ``BUDGET_BYTES``."""
    made = {name: ship(name, profile, folder=folder, device=device) for name in names or MODEL_NAMES}
    total = sum(sizes(folder).values())
    if total > BUDGET_BYTES:
        warnings.warn(f"{folder}: shipped weights take {total / 1e6:.1f} MB together, over the "
                      f"{BUDGET_BYTES / 1e6:.0f} MB budget")
    return made

"""``run(model, profile, overrides)`` trains and evaluates one configuration and returns a ``Result``;
results are cached on disk by a hash of the full configuration and the code version, so notebooks
re-execute cheaply and a batch reproduction resumes where it stopped.

    >>> from tbpr import experiments
    >>> r = experiments.run("ssan", "smoke", {"use_mvnln": False}, seed=1)
    >>> r.metrics["R1"], r.train_seconds
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .config import cache_dir, config_hash, to_dict
from .models import _lookup, create_model, get_config

PACKAGE_DIR = Path(__file__).parent
# modules that cannot change a trained model or its metrics: editing them keeps the cache valid
PRESENTATION = {"bench.py", "cli.py", "explorer.py", "reproduce.py", "summary.py", "viz"}
DATA_PROFILE = {"smoke": "smoke", "quick": "quick", "paper": "large"}


@functools.lru_cache(maxsize=None)
def code_version(model: str | None = None) -> str:
    """Hash of the library source a run of ``model`` depends on: a result computed by other code is
    never reused. Another paper's model file and presets are left out, so finishing one paper does
    not invalidate the cached runs of the others."""
    from .models import MODEL_NAMES
    others = {f"models/{m}.py" for m in MODEL_NAMES if m != model} | \
        {f"configs/{m}.yaml" for m in MODEL_NAMES if m != model}
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        rel = path.relative_to(PACKAGE_DIR)
        if path.suffix in {".py", ".yaml", ".json"} and "__pycache__" not in rel.parts \
                and rel.parts[0] not in PRESENTATION and rel.as_posix() not in others:
            digest.update(rel.as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def default_seeds(profile: str) -> list[int]:
    """Seeds a notebook averages over: one at smoke, three otherwise."""
    return [0] if profile == "smoke" else [0, 1, 2]


@dataclass
class Result:
    key: str
    spec: dict
    metrics: dict
    history: list[dict]
    train_seconds: float
    eval_seconds: float
    run_dir: str
    extra: dict = field(default_factory=dict)

    @property
    def config(self) -> dict:
        return self.spec["config"]

    def load_model(self, device: str = "cpu"):
        """The trained model of this run, rebuilt from its config and checkpoint."""
        spec = self.spec
        records = load_records(spec["dataset"], spec["data_root"])
        model = load_trained(spec["model"], get_config(spec["model"], "paper", spec["config"]),
                             records["train"], Path(self.run_dir) / "model.safetensors")
        return model.to(device).eval()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, default=str))

    @classmethod
    def read(cls, path: Path) -> "Result":
        return cls(**json.loads(path.read_text()))


def resolve_data_root(dataset: str, data_root, profile: str):
    if data_root is not None:
        return Path(data_root)
    if dataset != "synthpedes":
        raise ValueError(f"dataset {dataset!r} needs data_root= (the folder holding its JSON and "
                         "images); only 'synthpedes' is generated locally")
    from .data.synthetic import ensure
    return ensure(DATA_PROFILE[profile])


@functools.lru_cache(maxsize=8)
def _records(dataset: str, root: str):
    from .data.formats import load
    return load(dataset, root)


def load_records(dataset: str, root) -> dict:
    return _records(dataset, str(root))


def build_model(name: str, cfg, train_records):
    """Build ``name`` for a dataset: ``num_classes`` from its training ids, ``build_for_data`` hook."""
    model_cls, _ = _lookup(name)
    if hasattr(cfg, "num_classes"):
        import dataclasses
        cfg = dataclasses.replace(cfg, num_classes=len({r.pid for r in train_records}))
    if hasattr(model_cls, "build_for_data"):
        return model_cls.build_for_data(cfg, train_records)
    return create_model(name, config=cfg)


def load_trained(name: str, cfg, train_records, checkpoint):
    """A trained model from its checkpoint. Built without its pretrained initialisation, which the
    checkpoint replaces anyway (for IVT that would mean running the pre-training stage first)."""
    from .engine import load_checkpoint
    from .models.base import checkpoint_follows
    with checkpoint_follows():
        model = build_model(name, cfg, train_records)
    load_checkpoint(model, checkpoint)
    return model


def _train(model, records, cfg, run_dir: Path, seed: int, device: str, progress: bool) -> list[dict]:
    from .data.datasets import build_train_loader
    from .engine import distributed_env, fit
    rank, world = distributed_env()
    loader = build_train_loader(records["train"], cfg.data, seed=seed, rank=rank, world_size=world)
    if not hasattr(model, "stages"):
        return fit(model, loader, cfg.train, out_dir=run_dir, seed=seed, device=device,
                   progress=progress)
    history = []
    for stage, train_cfg in model.stages():
        model.enter_stage(stage)
        logs = fit(model, loader, train_cfg, out_dir=run_dir / stage, seed=seed, device=device,
                   progress=progress)
        history += [{**log, "stage": stage} for log in logs]
    shutil.copy(run_dir / stage / "model.safetensors", run_dir / "model.safetensors")
    return history


def run_spec(model: str, profile: str, overrides: dict | None, dataset: str, data_root, seed: int,
             device: str) -> tuple[object, dict, str]:
    """The run's config, what identifies the run, and its cache key (the overrides are recorded,
    the resolved config is hashed)."""
    cfg = get_config(model, profile, overrides)
    root = resolve_data_root(dataset, data_root, profile)
    spec = {"model": model, "profile": profile, "config": to_dict(cfg), "dataset": dataset,
            "data_root": str(root), "seed": seed, "device": str(device).split(":")[0],
            "code": code_version(model)}
    return cfg, {**spec, "overrides": overrides or {}}, f"{model}-{profile}-{config_hash(spec)}"


def run(model: str, profile: str = "quick", overrides: dict | None = None, *,
        dataset: str = "synthpedes", data_root=None, seed: int = 0, device: str = "cpu",
        rerank_k: int = 0, cache: bool = True, progress: bool = True,
        cache_only: bool = False) -> Result | None:
    """Train ``model`` at ``profile`` (+ ``overrides``) on ``dataset`` and evaluate on its test split.

    Training and evaluation are cached separately: a run evaluated under another protocol (e.g.
    ``rerank_k=32`` after ``rerank_k=0``) reuses the trained checkpoint. ``cache_only`` returns
    None instead of training when the trained checkpoint is not cached.
    """
    from .engine import seed_everything
    from .evaluate import evaluate

    cfg, spec, key = run_spec(model, profile, overrides, dataset, data_root, seed, device)
    root = spec["data_root"]
    run_dir = cache_dir() / "experiments" / key
    result_path = run_dir / (f"result-rerank{rerank_k}.json" if rerank_k else "result.json")
    trained_path = run_dir / "trained.json"
    if cache and result_path.exists():
        return Result.read(result_path)

    if cache_only and not trained_path.exists():
        return None
    records = load_records(dataset, root)
    if cache and trained_path.exists():
        trained = json.loads(trained_path.read_text())
        net = Result(key, spec, {}, [], 0.0, 0.0, str(run_dir)).load_model(device)
    else:
        seed_everything(seed)
        net = build_model(model, cfg, records["train"]).to(device)
        start = time.perf_counter()
        history = _train(net, records, net.cfg, run_dir, seed, device, progress)
        trained = {"history": history, "train_seconds": time.perf_counter() - start}
        trained_path.write_text(json.dumps(trained, default=str))
    start = time.perf_counter()
    metrics = evaluate(net, records["test"], net.cfg.data, device=device, rerank_k=rerank_k,
                       progress=progress)
    result = Result(key=key, spec={**spec, "rerank_k": rerank_k}, metrics=metrics,
                    history=trained["history"], train_seconds=trained["train_seconds"],
                    eval_seconds=time.perf_counter() - start, run_dir=str(run_dir))
    result.save(result_path)
    return result


def default_workers(device: str = "cpu") -> int:
    """Runs trained side by side: one per CPU core (``$TBPR_WORKERS`` overrides), one on a GPU."""
    if os.environ.get("TBPR_WORKERS"):
        return max(1, int(os.environ["TBPR_WORKERS"]))
    return 1 if str(device) != "cpu" else max(1, min(os.cpu_count() or 1, 4))


def _run_in_worker(module: str, threads: int, model: str, profile: str, overrides: dict,
                   seed: int, kwargs: dict) -> "Result":
    import torch
    importlib.import_module(module)  # registers the model in this fresh process
    torch.set_num_threads(threads)
    return run(model, profile, overrides, seed=seed, **{**kwargs, "progress": False})


def _one_per_key(model, profile, rows, todo, kwargs) -> list:
    """Jobs with distinct cache keys: two rows that resolve to one config train once."""
    unique = {}
    for label, s in todo:
        *_, key = run_spec(model, profile, rows[label], kwargs.get("dataset", "synthpedes"),
                          kwargs.get("data_root"), s, kwargs.get("device", "cpu"))
        unique.setdefault(key, (label, s))
    return list(unique.values())


def run_many(model: str, rows: dict[str, dict], seeds=None, profile: str = "quick",
             workers: int | None = None, **kwargs) -> dict[str, list[Result]]:
    """Every ablation row × seed: ``{row label: [Result per seed]}`` (cached like ``run``).

    Runs missing from the cache train in ``workers`` processes with one CPU core each (a small
    model on one core trains faster than on two, so two runs side by side double the throughput);
    the results do not depend on ``workers``.
    """
    seeds = default_seeds(profile) if seeds is None else list(seeds)
    if workers is None:  # smoke runs take seconds: starting a worker process would cost more
        workers = 1 if profile == "smoke" else default_workers(kwargs.get("device", "cpu"))
    if not kwargs.get("cache", True):
        workers = 1  # parallel runs hand their results over through the cache
    jobs = [(label, s) for label in rows for s in seeds]
    out: dict[str, dict[int, Result]] = {label: {} for label in rows}
    progress = kwargs.get("progress", True)
    bar = tqdm(total=len(jobs), desc=f"{model} runs", disable=not progress)
    todo = []
    for label, s in jobs:
        done = run(model, profile, rows[label], seed=s, cache_only=workers > 1, **kwargs)
        if done is None:
            todo.append((label, s))
            continue
        out[label][s] = done
        bar.update()
    if todo:
        todo_jobs, todo = todo, _one_per_key(model, profile, rows, todo, kwargs)
        bar.total = bar.n + len(todo)
        import multiprocessing
        module = _lookup(model)[0].__module__
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(min(workers, len(todo)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_in_worker, module, threads, model, profile, rows[label],
                                   s, kwargs): (label, s) for label, s in todo}
            for future in as_completed(futures):
                future.result()
                bar.update()
        for label, s in todo_jobs:  # trained once per key, each is now read from the cache
            out[label][s] = run(model, profile, rows[label], seed=s, **kwargs)
    bar.close()
    return {label: [out[label][s] for s in seeds] for label in rows}


def run_tables(model: str, tables: dict[str, dict[str, dict]], seeds=None, profile: str = "quick",
               **kwargs) -> dict[str, dict[str, list[Result]]]:
    """``run_many`` over the rows of several tables at once: ``{table: {row label: [Result per
    seed]}}``. One pool trains them all, so no worker idles at the end of each table waiting for
    the last odd run, and a row that appears in two tables trains once."""
    flat = {(table, label): overrides for table, rows in tables.items() for label, overrides in rows.items()}
    done = run_many(model, flat, seeds, profile, **kwargs)
    return {table: {label: done[(table, label)] for label in rows} for table, rows in tables.items()}


def metrics_of(results: dict[str, list[Result]]) -> dict[str, list[dict]]:
    """``{label: [metrics per seed]}``, the shape ``tbpr.viz.ablation_table`` takes."""
    return {label: [r.metrics for r in rs] for label, rs in results.items()}

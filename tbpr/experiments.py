"""``run(model, profile, overrides)`` trains and evaluates one configuration and returns a ``Result``;
results are cached on disk by a hash of the full configuration and the code version, so notebooks
re-execute cheaply and a batch reproduction resumes where it stopped.

    >>> from tbpr import experiments
    >>> r = experiments.run("ssan", "smoke", {"mvnln": "none"}, seed=1)
    >>> r.metrics["R1"], r.train_seconds
"""
from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from . import progress as progress_mod, zoo
from .cache import cache_dir, code_version, data_fingerprint, locked, read_json, write_json
from .config import config_hash, to_dict
from .data.datasets import build_train_loader
from .data.formats import load
from .engine import SELECTED_FILE, distributed_env, fit, load_checkpoint, read_checkpoint, seed_everything
from .evaluate import QueryScores, check_rerank_k, evaluate
from .papers import comparisons, get_config, model_class, official, recipe
from .synthpedes import ensure

DATA_PROFILE = {"smoke": "smoke", "quick": "quick", "paper": "large", "official": "large"}
# set (by tbpr reproduce) to a file: each run() appends one JSON line saying whether it trained, only
# evaluated a cached checkpoint, or read its result from the cache (``read_run_log`` counts them)
RUN_LOG = "TBPR_RUN_LOG"


def default_seeds(profile: str) -> list[int]:
    """Seeds a notebook averages over: one at smoke, three otherwise."""
    return [0] if profile == "smoke" else [0, 1, 2]


def headline_seeds(profile: str, seeds=None, headline=None) -> list[int]:
    """Seeds of a paper's headline comparison (its full model against its baseline row): ``headline``,
    else five (two at smoke); they begin with ``seeds`` (the other rows'), so that every row pairs
    with the reference seed by seed (``tbpr.stats``)."""
    seeds = default_seeds(profile) if seeds is None else list(seeds)
    if headline is not None:
        headline = list(headline)
        if headline[:len(seeds)] != seeds:
            raise ValueError(f"headline_seeds={headline} must begin with seeds={seeds}: the rows pair "
                             "with the headline rows seed by seed")
        return headline
    out, candidate = list(seeds), 0
    while len(out) < (2 if profile == "smoke" else 5):
        out += [candidate] if candidate not in out else []
        candidate += 1
    return out


def seeds_by_row(model: str, table: str, rows, seeds: list[int], headline: list[int]) -> dict[str, list[int]]:
    """``{label: seeds}`` for the rows of ``table``: the two rows of ``model``'s headline comparison
    (``tbpr.papers.comparisons``) at ``headline`` seeds, every other row at ``seeds``."""
    spec = comparisons(model)["headline"]
    both = {spec.get("full"), spec.get("baseline")} if spec.get("table") == table else set()
    return {label: list(headline if label in both else seeds) for label in rows}


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
        run_dir = Path(self.run_dir)  # train.select="val" kept the best validation epoch's weights
        weights = run_dir / SELECTED_FILE if (run_dir / SELECTED_FILE).exists() else run_dir / "model.safetensors"
        model = load_trained(spec["model"], get_config(spec["model"], "paper", spec["config"]), weights)
        return model.to(device).eval()

    def per_query(self) -> QueryScores:
        """This run's test metrics per query (R1 hit, AP, ... in query order), for paired statistics."""
        return QueryScores.load(_per_query_file(Path(self.run_dir), self.spec.get("rerank_k", 0)))

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> "Result | None":
        """The result saved at ``path``; None when missing or unreadable (then recomputed)."""
        saved = read_json(path)
        try:
            return cls(**saved) if saved is not None else None
        except TypeError as err:  # written by another version of Result
            warnings.warn(f"cache entry {path} does not hold a result ({err}); it will be recomputed")
            return None


def resolve_data_root(dataset: str, data_root, profile: str):
    if data_root is not None:
        return Path(data_root)
    if dataset != "synthpedes":
        raise ValueError(f"dataset {dataset!r} needs data_root= (the folder holding its JSON and "
                         "images); only 'synthpedes' is generated locally")
    return ensure(DATA_PROFILE[profile])


@functools.lru_cache(maxsize=8)
def _records(dataset: str, root: str):
    return load(dataset, root)


def load_records(dataset: str, root) -> dict:
    return _records(dataset, str(root))


def with_num_classes(cfg, train_records):
    """``cfg`` with ``num_classes`` (the identity classifiers' width) set to the training split's
    number of identities, for the models that have identity classifiers."""
    if not hasattr(cfg, "num_classes"):
        return cfg
    return dataclasses.replace(cfg, num_classes=len({r.pid for r in train_records}))


def build_model(name: str, cfg, train_records):
    """Model ``name`` for a dataset: its identity count and what its recipe derives from the training
    records (a word vocabulary), then the recipe's warm start."""
    cfg = with_num_classes(cfg, train_records)
    paper = recipe(name)
    model = model_class(name)(cfg, **paper.data_state(cfg, train_records))
    paper.warm_start(model, train_records)
    return model


def load_trained(name: str, cfg, checkpoint, official_vocab=None):
    """A trained model from its checkpoint: built from ``cfg`` and the data-derived state saved in
    the checkpoint (its vocabulary), never from other data; no warm start, the weights replace it.
    A PyTorch file is taken for a checkpoint released with the paper's official code and converted
    (``tbpr.papers.official``; SSAN's also needs the code's word list, ``official_vocab``)."""
    if official.is_pytorch_file(checkpoint):
        return official.load_official(name, cfg, checkpoint, vocab=official_vocab)
    state = read_checkpoint(checkpoint)
    if "num_classes" in state["config"] and hasattr(cfg, "num_classes"):
        cfg = dataclasses.replace(cfg, num_classes=state["config"]["num_classes"])
    model = model_class(name)(cfg, **state["extra_state"])
    load_checkpoint(model, checkpoint)
    return model


def _train(model, name: str, records, cfg, run_dir: Path, seed: int, device: str,
           progress: bool) -> list[dict]:
    rank, world = distributed_env()
    paper = recipe(name)
    paper.attach_training_data(model, records["train"])
    loader = build_train_loader(records["train"], cfg.data, seed=seed, rank=rank, world_size=world)
    stages = paper.stages(model)
    eval_fn = _validation(records, cfg, device) if any(c.select == "val" for _, c in stages) else None
    if len(stages) == 1:
        paper.enter_stage(model, stages[0][0])
        return fit(model, loader, stages[0][1], out_dir=run_dir, seed=seed, device=device,
                   progress=progress, eval_fn=eval_fn)
    history = []
    for stage, train_cfg in stages:
        paper.enter_stage(model, stage)
        logs = fit(model, loader, train_cfg, out_dir=run_dir / stage, seed=seed, device=device,
                   progress=progress, eval_fn=eval_fn)
        history += [{**log, "stage": stage} for log in logs]
    shutil.copy(run_dir / stage / "model.safetensors", run_dir / "model.safetensors")
    if (run_dir / stage / SELECTED_FILE).exists():
        shutil.copy(run_dir / stage / SELECTED_FILE, run_dir / SELECTED_FILE)
    return history


def _validation(records, cfg, device: str):
    """``train.select="val"``: R1 etc. on the validation split after each evaluated epoch (no
    re-ranking), or None with a one-line warning when the dataset has none (ICFG-PEDES)."""
    if not records.get("val"):
        warnings.warn("train.select=val: this dataset has no validation split (ICFG-PEDES has none); "
                      "keeping the last epoch", stacklevel=3)
        return None
    return lambda net: evaluate(net, records["val"], cfg.data, device=device, progress=False)


def run_spec(model: str, profile: str, overrides: dict | None, dataset: str, data_root, seed: int,
             device: str) -> tuple[object, dict, str]:
    """The run's config, what identifies the run, and its cache key (the overrides are recorded,
    the resolved config is hashed)."""
    cfg = get_config(model, profile, overrides)
    root = resolve_data_root(dataset, data_root, profile)
    # keyed by the data's content, not its path: other data never returns this run's result
    spec = {"model": model, "profile": profile, "config": to_dict(cfg), "dataset": dataset,
            "data": data_fingerprint(root), "seed": seed, "device": str(device).split(":")[0],
            "code": code_version(model)}
    if weights := zoo.fingerprints(spec["config"]):  # a re-created zoo member is another run
        spec["zoo"] = weights
    key = f"{model}-{profile}-{config_hash(spec)}"
    return cfg, {**spec, "data_root": str(root), "overrides": overrides or {}}, key


def check_run_settings(cfg, seed, device: str, stages) -> None:
    """Settings that would train nothing, or something other than asked, are refused before any
    work, naming the setting and what it accepts."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: give a whole number >= 0")
    for stage, train_cfg in stages:
        epochs = train_cfg.epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            where = "train.epochs" if len(stages) == 1 else f"the epochs of stage {stage!r}"
            raise ValueError(f"{where}={epochs!r}: give a whole number of epochs >= 1")
    batch = cfg.data.batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"data.batch_size={batch!r}: give a whole number >= 1")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is visible to torch; use device='cpu'")


def run(model: str, profile: str = "quick", overrides: dict | None = None, *,
        dataset: str = "synthpedes", data_root=None, seed: int = 0, device: str = "cpu",
        rerank_k: int = 0, cache: bool = True, progress: bool = True,
        cache_only: bool = False) -> Result | None:
    """Train ``model`` at ``profile`` (+ ``overrides``) on ``dataset`` and evaluate on its test split.

    Training and evaluation are cached separately: a run evaluated under another protocol (e.g.
    ``rerank_k=32`` after ``rerank_k=0``) reuses the trained checkpoint. ``cache_only`` returns
    None instead of training when the trained checkpoint is not cached (at once, rendering no data,
    when the cache holds no run of ``model`` at ``profile`` at all).
    """
    check_rerank_k(rerank_k)
    if cache_only and not has_runs(model, profile):
        return None
    cfg, spec, key = run_spec(model, profile, overrides, dataset, data_root, seed, device)
    if not cache:  # train from scratch in a folder of its own; the cached run stays as it was
        run_dir = cache_dir() / "experiments" / "uncached" / f"{key}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        return _train_and_evaluate(model, cfg, spec, key, run_dir, dataset, seed, device, rerank_k,
                                   progress, trained=None)
    run_dir = cache_dir() / "experiments" / key
    done = _cached_result(run_dir, rerank_k)
    if done is not None:
        return done
    if cache_only and read_json(run_dir / "trained.json") is None:
        return None
    with locked(run_dir):  # a second process on this key waits here, then reuses what the first made
        done = _cached_result(run_dir, rerank_k)
        if done is not None:
            return done
        return _train_and_evaluate(model, cfg, spec, key, run_dir, dataset, seed, device, rerank_k,
                                   progress, trained=read_json(run_dir / "trained.json"))


def has_runs(model: str, profile: str) -> bool:
    """Whether the run cache holds any run of ``model`` at ``profile`` (its folders are named
    ``<model>-<profile>-<hash>``): asking for one run's key needs the data's fingerprint, which on a
    fresh clone means rendering the whole benchmark first."""
    return any((cache_dir() / "experiments").glob(f"{model}-{profile}-*"))


def trained_run(model: str, profile: str = "quick", overrides: dict | None = None, *,
                dataset: str = "synthpedes", data_root=None, seed: int = 0, device: str = "cpu") -> Result | None:
    """The cached run of this configuration once it finished training (its result when evaluated,
    else one without metrics); None otherwise. Never trains or evaluates, and renders no data when
    the cache holds no run of ``model`` at ``profile`` at all."""
    if not has_runs(model, profile):
        return None
    _, spec, key = run_spec(model, profile, overrides, dataset, data_root, seed, device)
    run_dir = cache_dir() / "experiments" / key
    done = Result.read(_result_file(run_dir, 0))
    if done is not None:
        return done
    trained = read_json(run_dir / "trained.json")
    if trained is None:
        return None
    return Result(key, spec, {}, trained["history"], trained["train_seconds"], 0.0, str(run_dir))


def _result_file(run_dir: Path, rerank_k: int) -> Path:
    return run_dir / (f"result-rerank{rerank_k}.json" if rerank_k else "result.json")


def _per_query_file(run_dir: Path, rerank_k: int) -> Path:
    return run_dir / (f"per_query-rerank{rerank_k}.npz" if rerank_k else "per_query.npz")


def _cached_result(run_dir: Path, rerank_k: int) -> "Result | None":
    """The cached evaluation, if it has its per-query values (older ones are evaluated again from
    their checkpoint, without training)."""
    if not _per_query_file(run_dir, rerank_k).exists():
        return None
    done = Result.read(_result_file(run_dir, rerank_k))
    return _logged("cached", done) if done is not None else None


def _logged(event: str, result: Result) -> Result:
    """``result``, after one line in ``$TBPR_RUN_LOG`` (if set): the event (trained / evaluated /
    cached), the run and rerank_k, its training and evaluation seconds."""
    if os.environ.get(RUN_LOG):
        line = {"event": event, "key": result.key, "rerank_k": result.spec.get("rerank_k", 0),
                "train_seconds": result.train_seconds, "eval_seconds": result.eval_seconds}
        with open(os.environ[RUN_LOG], "a") as log:  # one short append per line: safe across workers
            log.write(json.dumps(line) + "\n")
    return result


def read_run_log(path) -> dict:
    """What the runs logged in ``path`` did, each run (and rerank_k) counted once by the most it did:
    ``{"trained": n, "train_seconds": s, "evaluated": n, "cached": n}`` (a run trained in a worker and
    then read back by the parent counts as trained)."""
    rank = {"cached": 0, "evaluated": 1, "trained": 2}
    most: dict[tuple, dict] = {}
    if Path(path).exists():
        for text in Path(path).read_text().splitlines():
            line = json.loads(text)
            run = (line["key"], line["rerank_k"])
            if run not in most or rank[line["event"]] > rank[most[run]["event"]]:
                most[run] = line
    events = [line["event"] for line in most.values()]
    return {"trained": events.count("trained"), "evaluated": events.count("evaluated"),
            "cached": events.count("cached"),
            "train_seconds": sum(line["train_seconds"] for line in most.values() if line["event"] == "trained")}


def _train_and_evaluate(model, cfg, spec, key, run_dir: Path, dataset, seed, device, rerank_k,
                        progress, trained: dict | None) -> Result:
    """Train (unless ``trained`` holds the record of a finished training in ``run_dir``), evaluate,
    and save the result in ``run_dir``. A run of its own (not one of ``run_many``'s) names its bars
    by the model and, without bars, ends with one line."""
    args = (model, cfg, spec, key, run_dir, dataset, seed, device, rerank_k, progress, trained)
    if progress_mod.current_label():
        return _train_evaluate_save(*args)
    with progress_mod.label(model):
        result = _train_evaluate_save(*args)
    progress_mod.line(f"{model} {spec['profile']} seed {seed}: R1 {result.metrics.get('R1', float('nan')):.1f}, "
                      f"{result.train_seconds + result.eval_seconds:.0f} s", progress)
    return result


def _train_evaluate_save(model, cfg, spec, key, run_dir: Path, dataset, seed, device, rerank_k,
                         progress, trained: dict | None) -> Result:
    records, event = load_records(dataset, spec["data_root"]), "evaluated"
    if trained is not None:
        try:
            net = Result(key, spec, {}, [], 0.0, 0.0, str(run_dir)).load_model(device)
        except (ValueError, FileNotFoundError) as err:  # damaged or missing weights: train again
            warnings.warn(f"cached run {run_dir} cannot be loaded ({err}); training it again")
            trained = None
    if trained is None:
        # the stages read only the config, so they are checked before any work (a warm start included)
        check_run_settings(cfg, seed, device, recipe(model).stages(SimpleNamespace(cfg=cfg)))
        seed_everything(seed)
        net = build_model(model, cfg, records["train"]).to(device)
        start = time.perf_counter()
        history = _train(net, model, records, net.cfg, run_dir, seed, device, progress)
        trained, event = {"history": history, "train_seconds": time.perf_counter() - start}, "trained"
        write_json(run_dir / "trained.json", trained)
    start = time.perf_counter()
    metrics = recipe(model).evaluate_run(net, records["test"], run_dir, device=device, rerank_k=rerank_k,
                                         progress=progress, per_query=True)
    metrics.pop("per_query").save(_per_query_file(run_dir, rerank_k))  # beside the result, kept small
    result = Result(key=key, spec={**spec, "rerank_k": rerank_k}, metrics=metrics,
                    history=trained["history"], train_seconds=trained["train_seconds"],
                    eval_seconds=time.perf_counter() - start, run_dir=str(run_dir))
    result.save(_result_file(run_dir, rerank_k))
    return _logged(event, result)


def default_workers(device: str = "cpu") -> int:
    """Runs trained side by side: one per CPU core (``$TBPR_WORKERS`` overrides), one on a GPU."""
    if os.environ.get("TBPR_WORKERS"):
        return max(1, int(os.environ["TBPR_WORKERS"]))
    return 1 if str(device) != "cpu" else max(1, min(os.cpu_count() or 1, 4))


def _run_in_worker(threads: int, model: str, profile: str, overrides: dict,
                   seed: int, kwargs: dict) -> "Result":
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
    """Every ablation row × seed: ``{row label: [Result per seed]}`` (cached like ``run``);
    ``seeds`` is one list for all rows or ``{label: list}`` (e.g. ``seeds_by_row``).

    Runs missing from the cache train in ``workers`` processes with one CPU core each (a small
    model on one core trains faster than on two, so two runs side by side double the throughput);
    the results do not depend on ``workers``. Progress (``tbpr.progress``): bars named with the
    model and the overall count ("ssan 3/8 runs, epoch 2/8"), or one line per finished run.
    """
    seeds_of = _seeds_of_rows(rows, seeds, profile)
    if workers is None:  # smoke runs take seconds: starting a worker process would cost more
        workers = 1 if profile == "smoke" else default_workers(kwargs.get("device", "cpu"))
    if not kwargs.get("cache", True):
        workers = 1  # parallel runs hand their results over through the cache
    jobs = [(label, s) for label in rows for s in seeds_of[label]]
    out: dict[str, dict[int, Result]] = {label: {} for label in rows}
    shown, cached = kwargs.get("progress", True), kwargs.get("cache", True)
    todo = []
    for label, s in jobs:
        done = run(model, profile, rows[label], seed=s, cache_only=True, **kwargs) if cached else None
        if done is None:
            todo.append((label, s))
        else:
            out[label][s] = done
    if not todo:
        progress_mod.line(f"{model}: {len(jobs)}/{len(jobs)} runs from the cache", shown)
        return {label: [out[label][s] for s in seeds_of[label]] for label in rows}
    todo_jobs, todo = todo, _one_per_key(model, profile, rows, todo, kwargs) if cached else todo
    total, finished = len(jobs) - len(todo_jobs) + len(todo), len(jobs) - len(todo_jobs)
    if finished:
        progress_mod.line(f"{model}: {finished}/{total} runs from the cache, training {len(todo)}", shown)
    if workers == 1:
        for i, (label, s) in enumerate(todo, start=finished + 1):
            with progress_mod.label(f"{model} {i}/{total} runs"):
                out[label][s] = run(model, profile, rows[label], seed=s, **kwargs)
            progress_mod.line(_finished_line(model, i, total, label, s, out[label][s]), shown)
    else:
        _train_in_pool(model, profile, rows, todo, workers, finished, total, kwargs)
    for label, s in todo_jobs:  # trained once per key, each is now read from the cache
        if s not in out[label]:
            out[label][s] = run(model, profile, rows[label], seed=s, **kwargs)
    return {label: [out[label][s] for s in seeds_of[label]] for label in rows}


def _train_in_pool(model, profile, rows, todo, workers, finished, total, kwargs) -> None:
    """``todo`` trained in ``workers`` processes (their own progress off): one overall bar, or one
    line per finished run."""
    shown = kwargs.get("progress", True)
    bar = progress_mod.bar(total=total, initial=finished, desc=f"{model} runs", enabled=shown)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_in_worker, threads, model, profile, rows[label], s, kwargs): (label, s)
                   for label, s in todo}
        for i, future in enumerate(as_completed(futures), start=finished + 1):
            result = future.result()
            bar.update()
            progress_mod.line(_finished_line(model, i, total, *futures[future], result), shown)
    bar.close()


def _finished_line(model: str, i: int, total: int, label, seed: int, result: Result) -> str:
    """"ssan 3/8 runs: w/o MVNLN seed 1, R1 12.3, 41 s" (training and evaluation)."""
    row = " / ".join(map(str, label)) if isinstance(label, tuple) else label
    seconds = result.train_seconds + result.eval_seconds
    return f"{model} {i}/{total} runs: {row} seed {seed}, R1 {result.metrics.get('R1', float('nan')):.1f}, {seconds:.0f} s"


def _seeds_of_rows(rows, seeds, profile: str) -> dict:
    """``{label: [seed, ...]}``: ``seeds`` is one list for every row, or ``{label: list}`` (rows
    not in it take the profile's default seeds)."""
    if isinstance(seeds, Mapping):
        return {label: list(seeds.get(label, default_seeds(profile))) for label in rows}
    return {label: default_seeds(profile) if seeds is None else list(seeds) for label in rows}


def run_tables(model: str, tables: dict[str, dict[str, dict]], seeds=None, profile: str = "quick",
               **kwargs) -> dict[str, dict[str, list[Result]]]:
    """``run_many`` over the rows of several tables at once: ``{table: {row label: [Result per
    seed]}}``. One pool trains them all, so no worker idles at the end of each table waiting for
    the last odd run, and a row that appears in two tables trains once. ``seeds``: one list, or
    ``{table: {label: list}}`` for rows with seeds of their own (``seeds_by_row``)."""
    flat = {(table, label): overrides for table, rows in tables.items() for label, overrides in rows.items()}
    if isinstance(seeds, Mapping):
        seeds = {(table, label): s for table, by_row in seeds.items() for label, s in by_row.items()}
    done = run_many(model, flat, seeds, profile, **kwargs)
    return {table: {label: done[(table, label)] for label in rows} for table, rows in tables.items()}


def metrics_of(results: dict[str, list[Result]]) -> dict[str, list[dict]]:
    """``{label: [metrics per seed]}``, the shape ``tbpr.viz.ablation_table`` takes."""
    return {label: [r.metrics for r in rs] for label, rs in results.items()}

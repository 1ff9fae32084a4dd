"""Benchmarks: ``tbpr bench eval`` (chunked metrics vs a naive full argsort) and
``tbpr bench <model>`` (training images/s and inference ms/query through the model contract)."""
from __future__ import annotations

import argparse
import ctypes
import gc
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .config import PROFILES
from .config import parse_overrides
from .data.text import Vocabulary
from .evaluate import EvalMode, concat_features, retrieval_metrics
from .papers import available_models, create_model, model_class

CUHK_QUERIES, CUHK_GALLERY, CUHK_IDS = 6156, 3074, 1000  # CUHK-PEDES test split
WORDS = ("a man woman wearing black white red blue green grey dark light shirt jacket coat pants "
         "shorts skirt jeans shoes sneakers boots bag backpack hat hair long short carrying holding "
         "walking with and the his her in on").split()


# --------------------------------------------------------------------------- measuring
def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _return_freed_memory_to_os() -> None:
    """Hand freed heap pages back (malloc_trim) and fix glibc's mmap threshold at 128 KiB (by default
    it grows after large frees): otherwise large arrays reuse already-resident pages and never show
    in the RSS high-water mark."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 128 * 1024)  # -3 = M_MMAP_THRESHOLD
    libc.malloc_trim(0)


@contextmanager
def peak_memory(device="cpu"):
    """Yields a dict that gets ``"peak_mb"``: the peak extra memory of the block (GPU allocator
    peak on CUDA; on CPU the resident-set high-water mark, reset through /proc/self/clear_refs,
    ``None`` where Linux does not allow that). On CPU it fixes glibc's mmap threshold for the rest
    of the process (large arrays then come from fresh pages, slower but visible)."""
    out: dict = {"peak_mb": None}
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    try:
        _return_freed_memory_to_os()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _proc_status_kb("VmRSS")
    except OSError:
        yield out
        return
    yield out
    out["peak_mb"] = (_proc_status_kb("VmHWM") - base) / 1024


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, repeats: int, device="cpu"):
    """(result, fastest wall time in s over ``repeats`` runs, fastest process CPU time in s (robust
    on a shared machine), peak extra MB of one more run: measuring memory changes the allocator's
    behaviour, see ``peak_memory``, so it is kept out of the timed runs)."""
    walls, cpus = [], []
    for _ in range(repeats):
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        _sync(device)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    with peak_memory(device) as mem:
        fn()
    return result, min(walls), min(cpus), mem["peak_mb"]


@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------- eval benchmark
def naive_retrieval_metrics(similarity: np.ndarray, query_pids, gallery_pids, ks=(1, 5, 10)) -> dict:
    """The textbook implementation: argsort the whole [Q, G] matrix at once, then cumulative sums
    over the full ranked relevance matrix."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    relevant = np.asarray(gallery_pids)[order] == np.asarray(query_pids)[:, None]
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    num_pos = hits[:, -1]
    first = relevant.argmax(1)
    last = relevant.shape[1] - 1 - relevant[:, ::-1].argmax(1)
    out = {f"R{k}": 100 * float(np.mean(first < k)) for k in ks}
    out["mAP"] = 100 * float(np.mean((relevant * hits / ranks).sum(1) / num_pos))
    out["mINP"] = 100 * float(np.mean(num_pos / (last + 1)))
    return out


def random_retrieval_problem(num_queries=CUHK_QUERIES, num_gallery=CUHK_GALLERY, ids=CUHK_IDS, seed=0):
    """Random scores [Q, G] (float32), gallery ids covering every id, query ids drawn from the
    gallery's (each caption describes one gallery image, as in CUHK-PEDES)."""
    rng = np.random.default_rng(seed)
    gallery_pids = rng.permutation(num_gallery) % ids
    query_pids = gallery_pids[rng.integers(0, num_gallery, num_queries)]
    similarity = rng.standard_normal((num_queries, num_gallery), dtype=np.float32)
    return similarity, query_pids, gallery_pids


def bench_eval(num_queries=CUHK_QUERIES, num_gallery=CUHK_GALLERY, ids=CUHK_IDS, repeats=3, *,
               device="cpu", threads: int | None = 1, chunk_size=1024, verbose=True) -> dict:
    """Time ``retrieval_metrics`` against ``naive_retrieval_metrics`` on one random problem.

    Both run single-threaded by default (``threads=1``; ``None`` keeps torch's setting), so the
    ratio compares the algorithms; the naive one always runs on the CPU (numpy). Raises if the two
    disagree.
    """
    sim, qids, gids = random_retrieval_problem(num_queries, num_gallery, ids)
    sim_t = torch.from_numpy(sim).to(device)
    with _threads(threads):
        ours, t_ours, cpu_ours, mem_ours = _best_time(
            lambda: retrieval_metrics(sim_t, qids, gids, chunk_size=chunk_size), repeats, device)
        naive, t_naive, cpu_naive, mem_naive = _best_time(
            lambda: naive_retrieval_metrics(sim, qids, gids), repeats)
    for key, value in naive.items():
        if abs(ours[key] - value) > 1e-6:
            raise AssertionError(f"retrieval_metrics and the naive reference disagree on {key}: "
                                 f"{ours[key]} vs {value}")
    result = {"queries": num_queries, "gallery": num_gallery, "device": str(device),
              "threads": threads or torch.get_num_threads(), "chunk_size": chunk_size,
              "ours_s": t_ours, "naive_s": t_naive, "speedup": t_naive / t_ours,
              "ours_cpu_s": cpu_ours, "naive_cpu_s": cpu_naive, "cpu_speedup": cpu_naive / cpu_ours,
              "ours_peak_mb": mem_ours, "naive_peak_mb": mem_naive, "metrics": ours}
    if verbose:
        print(markdown_table([_eval_row(result)]))
    return result


def _mb(value) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _eval_row(r: dict) -> dict:
    return {"benchmark": f"retrieval_metrics {r['queries']}x{r['gallery']} ({r['device']}, "
                         f"{r['threads']} thread(s), chunk {r['chunk_size']})",
            "ours (s)": f"{r['ours_s']:.3f}", "naive argsort (s)": f"{r['naive_s']:.3f}",
            "speed-up": f"{r['speedup']:.1f}x",
            "CPU s (ours / naive)": f"{r['ours_cpu_s']:.3f} / {r['naive_cpu_s']:.3f}",
            "peak extra MB (ours / naive)": f"{_mb(r['ours_peak_mb'])} / {_mb(r['naive_peak_mb'])}"}


# --------------------------------------------------------------------------- model benchmark
def random_captions(n: int, seed=0, length=(12, 30)) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(*length))) for _ in range(n)]


def _build_model(name: str, profile: str, device, overrides: dict | None = None):
    extra = dict(overrides or {})
    if "vocab" in model_class(name).data_fields:
        extra["vocab"] = Vocabulary.build(random_captions(200), min_count=1)
    return create_model(name, profile, device=device, **extra)


def _random_batch(cfg, batch_size: int, device, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    H, W = cfg.data.image_size
    views = (cfg.data.n_views,) if cfg.data.n_views > 1 else ()
    pids = torch.arange(batch_size) // 2  # two images per identity, as a P×K sampler gives
    return {"images": torch.randn(batch_size, *views, 3, H, W, generator=gen).to(device),
            "pids": pids.to(device), "captions": random_captions(batch_size, seed),
            "image_idx": torch.arange(batch_size).to(device),
            "caption_idx": torch.arange(batch_size).to(device)}


def _time_training(model, cfg, steps: int, device) -> float:
    """Training images/s over ``steps`` forward+backward+optimizer steps (after 2 warm-up steps)."""
    batch_size = cfg.data.batch_size
    groups = [{"params": g["params"], "lr": cfg.train.lr * g.get("lr_mult", 1.0)}
              for g in model.param_groups()]
    optimizer = torch.optim.Adam(groups)
    batches = [_random_batch(cfg, batch_size, device, seed) for seed in range(min(steps, 4))]
    model.train()
    for step in range(steps + 2):
        if step == 2:
            _sync(device)
            start = time.perf_counter()
        loss = model.training_step(batches[step % len(batches)])["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


@contextmanager
def stopwatch(device="cpu"):
    """``{"wall": s, "cpu": s}`` of the block, filled on exit: device synchronised on both sides and
    the garbage collector paused (as ``timeit`` does), so a full collection of a large notebook heap
    does not land inside whichever step it hits."""
    out = {}
    enabled = gc.isenabled()
    gc.disable()
    try:
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        yield out
        _sync(device)
        out["wall"], out["cpu"] = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        if enabled:
            gc.enable()


def _timed(fn, device):
    """(``fn()``, its wall seconds)."""
    with stopwatch(device) as took:
        out = fn()
    return out, took["wall"]


def _time_inference(model, cfg, device, num_images: int, num_captions: int, batch_size=64) -> dict:
    """Seconds per image, per caption and per query×gallery score, measured on a subset."""
    H, W = cfg.data.image_size
    images = torch.randn(num_images, 3, H, W)
    captions = random_captions(num_captions, seed=1)
    with EvalMode(model):
        model.encode_images(images[:2].to(device)), model.encode_texts(captions[:2])  # warm-up
        image_feats, t_img = _timed(lambda: concat_features([
            model.encode_images(images[i:i + batch_size].to(device))
            for i in range(0, num_images, batch_size)]), device)
        text_feats, t_txt = _timed(lambda: concat_features([
            model.encode_texts(captions[i:i + batch_size]) for i in range(0, num_captions, batch_size)]),
            device)
        scores, t_sim = _timed(lambda: model.similarity(text_feats, image_feats), device)
        t_rerank = None
        if model.reranks:
            k = min(32, num_images)
            topk = scores.topk(k, dim=1).indices
            _, t_rerank = _timed(lambda: model.rerank(text_feats, image_feats, topk), device)
    return {"image_s": t_img / num_images, "caption_s": t_txt / num_captions,
            "pair_s": t_sim / (num_images * num_captions),
            "rerank_query_s": None if t_rerank is None else t_rerank / num_captions}


def bench_model(name: str, profile: str = "quick", *, train_steps: int = 20, device="cpu",
                num_images: int = 256, num_captions: int = 512, overrides: dict | None = None,
                verbose=True) -> dict:
    """Training images/s and inference ms/query for a CUHK-PEDES-sized test split (3,074 images,
    6,156 captions), through the model contract with random images and captions.

    Inference is measured on ``num_images`` images and ``num_captions`` captions and extrapolated
    linearly to the full split (encoding per item, scoring per query×gallery pair, re-ranking of
    the top 32 per query when the model has ``rerank``); ``extrapolated`` says when that happened.
    ``overrides`` are config overrides, e.g. no pretrained weights for the paper profile offline.
    """
    model = _build_model(name, profile, device, overrides)
    cfg = model.cfg
    train_ips = _time_training(model, cfg, train_steps, device)
    num_images, num_captions = min(num_images, CUHK_GALLERY), min(num_captions, CUHK_QUERIES)
    per = _time_inference(model, cfg, device, num_images, num_captions)
    gallery_s = per["image_s"] * CUHK_GALLERY
    query_s = per["caption_s"] + per["pair_s"] * CUHK_GALLERY + (per["rerank_query_s"] or 0.0)
    result = {"model": name, "profile": profile, "device": str(device),
              "image_size": tuple(cfg.data.image_size), "batch_size": cfg.data.batch_size,
              "train_images_per_s": train_ips,
              "gallery_encode_s": gallery_s,
              "query_ms": 1000 * query_s,  # encode one caption + score it against the gallery
              "ms_per_query_all_in": 1000 * (gallery_s + CUHK_QUERIES * query_s) / CUHK_QUERIES,
              "extrapolated": (num_images, num_captions) != (CUHK_GALLERY, CUHK_QUERIES),
              "measured_on": (num_images, num_captions)}
    if verbose:
        print(markdown_table([_model_row(result)]))
    return result


def _model_row(r: dict) -> dict:
    note = (f"extrapolated from {r['measured_on'][0]} images / {r['measured_on'][1]} captions"
            if r["extrapolated"] else "measured on the full split size")
    return {"model": r["model"], "profile": r["profile"], "device": r["device"],
            "input": "x".join(map(str, r["image_size"])), "batch": r["batch_size"],
            "train img/s": f"{r['train_images_per_s']:.1f}",
            "gallery encode (s)": f"{r['gallery_encode_s']:.2f}",
            "ms/query (cached gallery)": f"{r['query_ms']:.2f}",
            "ms/query (all-in)": f"{r['ms_per_query_all_in']:.2f}", "note": note}


# --------------------------------------------------------------------------- CLI
def markdown_table(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row.get(h, "")) for h in header) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``tbpr bench eval|<model>|all [--profile P] [--device D]``: prints Markdown tables."""
    parser = argparse.ArgumentParser(prog="tbpr bench", description=__doc__)
    parser.add_argument("target", help="'eval', a model name, or 'all' (eval + every model)")
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="eval benchmark repeats (best kept)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the eval benchmark (0 = leave torch's default)")
    parser.add_argument("--queries", type=int, default=CUHK_QUERIES, help="eval benchmark queries")
    parser.add_argument("--gallery", type=int, default=CUHK_GALLERY, help="eval benchmark gallery size")
    parser.add_argument("--ids", type=int, default=CUHK_IDS, help="eval benchmark identities")
    parser.add_argument("--set", nargs="*", metavar="KEY=VALUE", default=[],
                        help="model config overrides, e.g. vision_pretrained=null offline")
    args = parser.parse_args(argv)
    models = available_models()
    if args.target not in ("eval", "all", *models):
        parser.error(f"unknown target {args.target!r}; choose 'eval', 'all' or a model: {models}")
    if args.target in ("eval", "all"):
        result = bench_eval(args.queries, args.gallery, args.ids, repeats=args.repeats,
                            device=args.device, threads=args.threads or None, verbose=False)
        print(markdown_table([_eval_row(result)]) + "\n")
    targets = models if args.target == "all" else [] if args.target == "eval" else [args.target]
    rows = [_model_row(bench_model(name, args.profile, train_steps=args.train_steps,
                                   device=args.device, overrides=parse_overrides(args.set),
                                   verbose=False)) for name in targets]
    if rows:
        print(markdown_table(rows))
    return 0

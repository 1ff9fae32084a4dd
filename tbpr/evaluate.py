"""Retrieval metrics (R@K, mAP, mINP), chunked scoring and top-k re-ranking.

Protocol (text-to-image, the field's standard): every test caption is a query, the gallery is every
test image, and a gallery image is a positive when its person id equals the query's. For one query
with positives at 1-based ranks r_1 < ... < r_P of the ranked gallery:

- R@K  = 1 if r_1 <= K                         (averaged over queries, in percent)
- AP   = (1/P) * sum_i i / r_i                 (non-interpolated, over the whole gallery)
- INP  = P / r_P                               (inverse negative penalty; mINP = mean INP)
- AP_trapz = (1/P) * sum_i ((i-1)/(r_i-1) + i/r_i) / 2, with (i-1)/(r_i-1) := 1 when r_i = 1
  (the Market-1501 style AP of the official IVT / SSAN / LGUR code; reported as ``mAP_trapz``)

Ties: ranks are those of a stable descending sort, so among equal scores the lower gallery index
ranks first. Re-ranked top-k lists use the same rule (equal re-rank scores keep the first-stage
order). Queries whose id has no gallery image are an error unless ``allow_missing=True`` (then they
are excluded and counted).

Per query (``per_query=True``): the same values before averaging, one per evaluated query in query
order (``QueryScores``), so that two runs on the same split can be compared query by query
(``tbpr.stats``); saved compactly as ``.npz`` beside a run's result.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data.datasets import EvalSet, load_eval_images
from .progress import bar as progress_bar

Similarity = torch.Tensor | np.ndarray | Callable[[slice], torch.Tensor | np.ndarray]
Rerank = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | np.ndarray]


# --------------------------------------------------------------------------- per-query values
def _is_hit(metric: str) -> bool:
    """R<k> per query is a 0/1 hit (stored as uint8; the other values as float32)."""
    return metric[:1] == "R" and metric[1:].isdigit()


@dataclass
class QueryScores:
    """The metric values of each evaluated query before averaging: ``values[metric][i]`` belongs to
    query ``query[i]`` (its index in the split's caption order; excluded queries are absent), in
    [0, 1] (R<k>: 0/1 hit; mAP: the query's AP; mINP: its INP; mAP_trapz: its trapezoid AP), so
    ``100 * values[m].mean()`` is metric ``m``. ``split`` fingerprints the queries and gallery, so
    that only evaluations of the same split are paired."""
    query: np.ndarray
    values: dict[str, np.ndarray]
    split: str

    def __len__(self) -> int:
        return len(self.query)

    def save(self, path) -> Path:
        """Write ``path`` (.npz, a few tens of kB for thousands of queries)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"value_{name}": v.astype(np.uint8 if _is_hit(name) else np.float32)
                  for name, v in self.values.items()}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, query=self.query.astype(np.int32), split=np.array(self.split), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "QueryScores":
        with np.load(path) as data:
            values = {k[len("value_"):]: data[k] for k in data.files if k.startswith("value_")}
            return cls(query=data["query"], values=values, split=str(data["split"]))


def split_fingerprint(*parts) -> str:
    """A short hash of the arrays / strings that identify an evaluation split."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().numpy()
        data = np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray) else str(part).encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- input checks
def _id_tensors(query_pids, gallery_pids) -> tuple[torch.Tensor, torch.Tensor]:
    """Both id arrays as int64 tensors of one shared integer coding (ids may be any hashable dtype)."""
    arrays = []
    for name, ids in (("query_pids", query_pids), ("gallery_pids", gallery_pids)):
        arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array of person ids, got shape {arr.shape}; "
                             "pass one id per query caption / gallery image (flatten it)")
        if arr.size == 0:
            raise ValueError(f"{name} is empty: retrieval needs at least one query and one "
                             "gallery image (is the split empty?)")
        arrays.append(arr)
    kinds = {"text" if a.dtype.kind in "USO" and any(isinstance(v, str) for v in a.tolist()) else
             "number" for a in arrays}
    if len(kinds) > 1 or any(a.dtype.kind == "O" and len({type(v) for v in a.tolist()}) > 1 for a in arrays):
        raise TypeError("query_pids and gallery_pids mix text and numeric ids, so '1' and 1 would be "
                        "matched by their spelling; convert both to one type first")
    if any(a.dtype.kind == "f" and not np.all(np.mod(a, 1) == 0) for a in arrays):
        raise TypeError("person ids must be whole numbers or strings, got fractional floats")
    _, codes = np.unique(np.concatenate(arrays), return_inverse=True)
    codes = torch.from_numpy(codes.astype(np.int64))
    return codes[: len(arrays[0])], codes[len(arrays[0]):]


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch tensor or numpy array, got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise TypeError(f"{what} must hold real numbers, got dtype {x.dtype}")
    return x


def _check_block(block: torch.Tensor, rows: slice, num_gallery: int, what: str) -> None:
    expected = (rows.stop - rows.start, num_gallery)
    if tuple(block.shape) != expected:
        raise ValueError(f"{what} for queries {rows.start}:{rows.stop} has shape {tuple(block.shape)}, "
                         f"expected {expected} = (queries in the slice, len(gallery_pids)); check that "
                         "rows are queries and columns gallery items (for image-to-text pass "
                         "similarity.T with the id arrays swapped, or use i2t_metrics)")
    if block.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"{what} is {block.dtype}: at half precision near scores round to ties, which "
                        "changes R1; compute the similarity in float32 (e.g. .float() on the features)")
    if block.is_floating_point() and not torch.isfinite(block).all():
        bad = (~torch.isfinite(block)).nonzero()[0].tolist()
        raise ValueError(f"{what} contains NaN or inf (first at query {rows.start + bad[0]}, "
                         f"gallery {bad[1]}); fix the model's scores (e.g. normalise features with "
                         "an epsilon, or evaluate in float32 instead of fp16)")


# --------------------------------------------------------------------------- ranking
# Only the ranks of the positives matter, so instead of sorting each gallery row (G log G) the
# rank of a positive j is counted: 1 + #{x: s_x > s_j} + #{x < j: s_x == s_j} (the stable order).
def _positive_ranks(block: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """1-based rank of gallery item ``col[p]`` in query ``row[p]``'s ranked list, for every pair p
    (pairs sorted by row). Pass s compares the s-th positive of every query that has one with its
    row, a view of ``block`` while all rows take part (no copy; at most ``block``'s size)."""
    num_pos = torch.bincount(row, minlength=block.shape[0])
    slot = torch.arange(len(row), device=row.device) - (torch.cumsum(num_pos, 0) - num_pos)[row]
    ranks = torch.empty_like(row)
    for s in range(int(num_pos.max())):
        pairs = (slot == s).nonzero()[:, 0]
        scores = block if len(pairs) == block.shape[0] else block[row[pairs]]
        c = col[pairs, None]
        own = scores.gather(1, c)
        above = (scores > own).sum(1, dtype=torch.int32).long()
        tied = ((scores >= own).sum(1, dtype=torch.int32) - above > 1).nonzero()[:, 0]
        if len(tied):  # rows with ties besides the positive itself: the lower index goes first
            before = torch.arange(scores.shape[1], device=scores.device) < c[tied]
            above[tied] += ((scores[tied] == own[tied]) & before).sum(1)
        ranks[pairs] = above + 1
    return ranks


def _stable_topk(block: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each row's ``k`` best gallery items in ranked order (ties: lower index first)."""
    return torch.sort(block, dim=1, descending=True, stable=True).indices[:, :k]


def _reranked_ranks(block, row, col, ranks, query_idx, rerank: Rerank, k: int) -> torch.Tensor:
    """Ranks after re-ordering each query's first-stage top-``k`` by ``rerank(query_idx, topk)``
    (equal re-rank scores keep the first-stage order); ranks below k do not change."""
    topk = _stable_topk(block, k)
    scores = _as_tensor(rerank(query_idx, topk), "rerank(query_idx, topk_idx) output").to(block.device)
    rows = slice(int(query_idx[0]), int(query_idx[0]) + len(query_idx))
    _check_block(scores, rows, k, f"rerank output (expected [queries, rerank_k={k}])")
    reranked = topk.gather(1, torch.sort(scores, dim=1, descending=True, stable=True).indices)
    in_topk = ranks <= k
    new_position = (reranked[row[in_topk]] == col[in_topk, None]).to(torch.uint8).argmax(1)
    ranks = ranks.clone()
    ranks[in_topk] = new_position + 1
    return ranks


def _rank_stats(row: torch.Tensor, ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-query metric values (queries with at least one positive) from the positives' ranks."""
    order = torch.argsort(row * (int(ranks.max()) + 1) + ranks)  # by query, then by rank
    row, r = row[order], ranks[order].to(torch.float64)
    _, num_pos = torch.unique_consecutive(row, return_counts=True)
    first = torch.cumsum(num_pos, 0) - num_pos  # where each query's positives start
    query = torch.repeat_interleave(torch.arange(len(num_pos), device=row.device), num_pos)
    i = (torch.arange(len(row), device=row.device) - first[query] + 1).to(torch.float64)
    prev_precision = torch.where(r == 1, 1.0, (i - 1) / (r - 1).clamp(min=1))

    def mean_over_positives(values):
        return torch.zeros(len(num_pos), dtype=torch.float64, device=row.device).index_add_(
            0, query, values) / num_pos

    out = {f"R{k}": (r[first] <= k).to(torch.float64) for k in ks}
    out["mAP"] = mean_over_positives(i / r)
    out["mINP"] = num_pos / r[first + num_pos - 1]
    out["mAP_trapz"] = mean_over_positives((prev_precision + i / r) / 2)
    return out


def _hmr1_hits(row, col, ranks, source: torch.Tensor) -> tuple[float, int]:
    """SSAN's HMR-1 over one chunk: Rank-1 with each query's own source image removed from the
    gallery; queries whose identity has no other gallery image are left out. Returns (hits, kept)."""
    is_source = col == source[row]
    q = len(source)
    big = torch.iinfo(ranks.dtype).max
    best_other = torch.full((q,), big, device=row.device).scatter_reduce(
        0, row[~is_source], ranks[~is_source], "amin")
    source_rank = torch.full((q,), big, device=row.device).scatter_reduce(
        0, row[is_source], ranks[is_source], "amin")
    kept = best_other < big
    hit = (best_other == 1) | ((best_other == 2) & (source_rank == 1))
    return float(hit[kept].sum()), int(kept.sum())


# --------------------------------------------------------------------------- public API
def chance_rank1(query_pids, gallery_pids) -> float:
    """R@1 (%) a random ranking reaches in expectation: per query, the share of the gallery that
    shows its person, averaged over the queries."""
    qids, gids = _id_tensors(query_pids, gallery_pids)
    counts = torch.bincount(gids, minlength=int(max(qids.max(), gids.max())) + 1).double()
    return float(100 * (counts[qids] / len(gids)).mean())


def retrieval_metrics(similarity: Similarity, query_pids, gallery_pids, *, ks=(1, 5, 10),
                      rerank: Rerank | None = None, rerank_k: int = 32, chunk_size: int = 1024,
                      allow_missing: bool = False, source_index=None, per_query: bool = False) -> dict:
    """R@K, mAP and mINP (percent) of ranking ``gallery_pids`` for each of ``query_pids``.

    ``similarity``: a [Q, G] torch tensor / numpy array (higher = closer), or a callable
    ``f(rows: slice) -> [rows, G]`` that scores a block of queries (so a CUHK-PEDES-sized problem
    never materialises more than ``chunk_size`` x G scores). Scoring runs on the block's device.

    Ties: ranks are those of a stable descending sort, so among equal scores the lower gallery
    index ranks first (computed by counting, per positive, the items ranked above it).

    Re-ranking (CADA, MIA): with ``rerank`` set, each query's first-stage top-``rerank_k`` gallery
    indices are re-ordered by ``rerank(query_idx [q], topk_idx [q, k]) -> scores [q, k]`` (one call
    per chunk, ``query_idx`` global query indices); the rest of the gallery follows in first-stage
    order.

    Queries whose id has no image in the gallery raise a ValueError; with ``allow_missing=True``
    they are excluded and counted in ``num_excluded``.

    ``source_index`` (optional, [Q] gallery index of each query's own image) adds SSAN's ``HMR1``:
    Rank-1 with that image removed, over the ``hmr_num_queries`` queries whose id has another image.

    Image-to-text: ``retrieval_metrics(sim.T, gallery_pids, query_pids)`` (see ``i2t_metrics``).

    Returns ``{"R1", "R5", "R10", "mAP", "mINP", "mAP_trapz", "num_queries", "num_excluded"}``
    (+ ``"HMR1", "hmr_num_queries"`` with ``source_index``); keys ``R<k>`` follow ``ks``;
    ``mAP_trapz`` is the trapezoid AP of the papers' official code (IVT's Table 4 uses it).
    With ``per_query=True`` the dict also holds ``"per_query"``: a ``QueryScores`` of the values
    behind every metric but HMR1 (``split`` hashes the two id arrays).
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive ranks such as (1, 5, 10), got {ks}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if rerank is not None and rerank_k < 1:
        raise ValueError(f"rerank_k must be >= 1 when a rerank callback is given, got {rerank_k}")
    qids, gids = _id_tensors(query_pids, gallery_pids)
    Q, G = len(qids), len(gids)

    matrix = None
    if not callable(similarity):
        matrix = _as_tensor(similarity, "similarity")
        if matrix.ndim != 2 or tuple(matrix.shape) != (Q, G):
            raise ValueError(f"similarity has shape {tuple(matrix.shape)} but there are {Q} query ids "
                             f"and {G} gallery ids: expected ({Q}, {G}) = (queries, gallery); for "
                             "image-to-text pass similarity.T with the id arrays swapped")

    gallery_count = torch.bincount(gids, minlength=int(max(qids.max(), gids.max())) + 1)
    query_positives = gallery_count[qids]
    missing = (query_positives == 0).nonzero()[:, 0]
    if len(missing) and not allow_missing:
        shown = missing[:10].tolist()
        raw = np.asarray(query_pids.detach().cpu() if isinstance(query_pids, torch.Tensor)
                         else query_pids)[shown].tolist()
        raise ValueError(f"{len(missing)} of {Q} queries have no image of their id in the gallery "
                         f"(query indices {shown}{'...' if len(missing) > 10 else ''}, ids {raw}); "
                         "check that queries and gallery come from the same split, or pass "
                         "allow_missing=True to exclude them")
    if len(missing) == Q:
        raise ValueError(f"none of the {Q} queries has an image of its id in the gallery: the id "
                         "arrays do not overlap (swapped, or from different splits?)")
    if source_index is not None:
        source_index = torch.as_tensor(np.asarray(source_index), dtype=torch.int64).reshape(-1)
        if len(source_index) != Q or (len(source_index) and
                                      (source_index.min() < 0 or source_index.max() >= G)):
            raise ValueError(f"source_index must hold one gallery index in [0, {G}) per query "
                             f"({Q}), got {len(source_index)} values")
        if not (gids[source_index] == qids).all():
            raise ValueError("source_index points to gallery images of another id than the query; "
                             "it must be each caption's own image (EvalSet.caption_image_idx)")

    totals: dict[str, float] = {}
    kept_queries, kept_values = [], []
    hmr_hits, hmr_count = 0.0, 0
    for start in range(0, Q, chunk_size):
        rows = slice(start, min(start + chunk_size, Q))
        block = matrix[rows] if matrix is not None else _as_tensor(similarity(rows), "similarity(rows)")
        _check_block(block, rows, G, "similarity" if matrix is not None else "similarity(rows)")
        device = block.device
        row, col = (gids.to(device)[None, :] == qids[rows].to(device)[:, None]).nonzero(as_tuple=True)
        if not len(row):
            continue
        ranks = _positive_ranks(block, row, col)
        if rerank is not None:
            query_idx = torch.arange(rows.start, rows.stop, device=device)
            ranks = _reranked_ranks(block, row, col, ranks, query_idx, rerank, min(rerank_k, G))
        stats = _rank_stats(row, ranks, ks)
        for name, values in stats.items():
            totals[name] = totals.get(name, 0.0) + float(values.sum())
        if per_query:
            kept_queries.append(torch.unique_consecutive(row).cpu() + rows.start)  # row is sorted
            kept_values.append({name: values.cpu() for name, values in stats.items()})
        if source_index is not None:
            hits, kept = _hmr1_hits(row, col, ranks, source_index[rows].to(device))
            hmr_hits, hmr_count = hmr_hits + hits, hmr_count + kept

    n = Q - len(missing)
    metrics = {name: 100.0 * total / n for name, total in totals.items()}
    metrics.update(num_queries=n, num_excluded=len(missing))
    if source_index is not None:
        metrics["HMR1"] = 100.0 * hmr_hits / hmr_count if hmr_count else float("nan")
        metrics["hmr_num_queries"] = hmr_count
    if per_query:
        metrics["per_query"] = QueryScores(
            query=torch.cat(kept_queries).numpy(),
            values={name: torch.cat([v[name] for v in kept_values]).numpy() for name in totals},
            split=split_fingerprint(qids, gids))
    return metrics


def i2t_metrics(similarity, text_pids, image_pids, **kwargs) -> dict[str, float]:
    """Image-to-text metrics from a text-to-image ``similarity`` [T, I]: every image is a query and
    the captions are the gallery. A callable must already score image rows: ``f(rows) -> [rows, T]``."""
    if not callable(similarity):
        similarity = _as_tensor(similarity, "similarity").T
    return retrieval_metrics(similarity, image_pids, text_pids, **kwargs)


# --------------------------------------------------------------------------- models
def concat_features(parts: list):
    """Concatenate per-batch features (tensors, or dicts / lists of them) along dim 0."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, 0)
    if isinstance(first, dict):
        return {key: concat_features([p[key] for p in parts]) for key in first}
    if isinstance(first, (list, tuple)):
        return [item for p in parts for item in p]
    raise TypeError(f"model features must be tensors or dicts of tensors, got {type(first).__name__}")


def select_rows(feats, index):
    """Rows ``index`` (a slice or index tensor) of features (tensor / dict / list)."""
    if isinstance(feats, torch.Tensor):
        return feats[index]
    if isinstance(feats, dict):
        return {key: select_rows(value, index) for key, value in feats.items()}
    if isinstance(index, slice):
        return feats[index]
    return [feats[i] for i in index.tolist()]


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    starts = range(0, n, batch_size)
    for start in progress_bar(starts, desc=desc, enabled=progress, leave=False):
        yield slice(start, min(start + batch_size, n))


class EvalMode:
    """``model.eval()`` + ``torch.no_grad()`` for a block, restoring the training mode after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)
        self.no_grad.__exit__(*exc)


def _untimed(step: str, fn):
    return fn()


def encode_split(model, records, data_cfg, *, device="cpu", batch_size: int = 64, progress: bool = True,
                 timer=_untimed):
    """Encode the gallery images and query captions of ``records`` (a test split).

    Returns ``(text_feats, image_feats, eval_set)`` with features in ``EvalSet`` order
    (``eval_set.captions`` / ``eval_set.image_paths``). ``timer(step, fn)`` runs each model call
    (step ``"gallery"`` or ``"queries"``), so a benchmark can time the model without image decoding.
    """
    eval_set = EvalSet(records)
    if not len(eval_set.image_paths) or not len(eval_set.captions):
        raise ValueError(f"the split has {len(eval_set.image_paths)} images and "
                         f"{len(eval_set.captions)} captions; evaluation needs both")
    with EvalMode(model):
        image_parts = []
        for rows in _batches(len(eval_set.image_paths), batch_size, progress, "images"):
            images = load_eval_images(eval_set.image_paths[rows], data_cfg).to(device)
            image_parts.append(timer("gallery", lambda: model.encode_images(images)))
        text_parts = [timer("queries", lambda: model.encode_texts(list(eval_set.captions[rows])))
                      for rows in _batches(len(eval_set.captions), batch_size, progress, "captions")]
    return concat_features(text_parts), concat_features(image_parts), eval_set


def check_rerank_k(rerank_k) -> None:
    """``rerank_k`` is 0 (no re-ranking) or how many top gallery images to re-rank."""
    if isinstance(rerank_k, bool) or not isinstance(rerank_k, int) or rerank_k < 0:
        raise ValueError(f"rerank_k={rerank_k!r}: give 0 (no re-ranking) or the number of top "
                         "gallery images to re-rank (e.g. 32)")


def check_rerank(model, rerank_k: int) -> None:
    """Re-ranking needs a model that re-scores a top-k (``model.reranks``, e.g. CADA-L)."""
    check_rerank_k(rerank_k)
    if rerank_k > 0 and not getattr(model, "reranks", False):  # any object with the model protocol
        raise ValueError(f"rerank_k={rerank_k} but model {type(model).__name__} does not re-rank; "
                         "use rerank_k=0")


def score_features(model, text_feats, image_feats, query_pids, gallery_pids, *, rerank_k: int = 0,
                   chunk_size: int = 1024, **kwargs) -> dict:
    """Metrics of encoded features scored by ``model.similarity`` in query chunks (and
    ``model.rerank`` over the top ``rerank_k`` when > 0); ``kwargs`` go to ``retrieval_metrics``
    (``per_query=True`` for the values per query)."""
    def similarity(rows: slice):
        return model.similarity(select_rows(text_feats, rows), image_feats)

    def rerank(query_idx: torch.Tensor, topk_idx: torch.Tensor):
        return model.rerank(select_rows(text_feats, query_idx), image_feats, topk_idx)

    check_rerank(model, rerank_k)
    with EvalMode(model):
        return retrieval_metrics(similarity, query_pids, gallery_pids, chunk_size=chunk_size,
                                 rerank=rerank if rerank_k > 0 else None, rerank_k=rerank_k,
                                 **kwargs)


def evaluate(model, records, data_cfg, *, device="cpu", batch_size: int = 64, rerank_k: int = 0,
             progress: bool = True, chunk_size: int = 1024, per_query: bool = False) -> dict:
    """Text-to-image metrics of ``model`` on ``records`` (every caption a query, every image in the
    gallery), with SSAN's HMR-1 (``HMR1``) and, for ``rerank_k > 0``, top-k re-ranking.
    ``per_query=True`` adds ``"per_query"`` (``QueryScores``)."""
    text_feats, image_feats, eval_set = encode_split(model, records, data_cfg, device=device,
                                                     batch_size=batch_size, progress=progress)
    return score_features(model, text_feats, image_feats, eval_set.caption_pids, eval_set.image_pids,
                          rerank_k=rerank_k, chunk_size=chunk_size,
                          source_index=eval_set.caption_image_idx, per_query=per_query)

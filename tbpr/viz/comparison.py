"""The side-by-side comparison of notebook 07: inference cost per query measured on a test split,
the final ranking of every query (after re-ranking where a method re-ranks), and a SynthPedes
ground-truth breakdown of which queries each method gets wrong.

    scored = timed_scores(model, records["test"], model.cfg.data, rerank_k=32)
    scored.ms_per_query(), scored.seconds        # encode gallery + queries + score (+ re-rank)
    queries = query_table(load_ground_truth(root), records["test"])   # one row per query caption
    out = query_outcomes(scored.ranking, ...)     # rank of the first match, kind of the top-1 image

Query kinds come from the ground truth only: how many items a caption mentions (its attribute
spans), the identity's *family* (SynthPedes identities come in families that differ in one or two
attributes), and which of the attributes that tell the person apart from a family member the
caption states: a small item (shoes, bag, hat, glasses, held object), a garment (upper / lower
body: type, colour, pattern, sleeves) or hair / person.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..bench import stopwatch
from ..data.datasets import EvalSet, load_eval_images
from ..evaluate import EvalMode, check_rerank, encode_split, select_rows

# identity attributes (``GroundTruth.identities``) by kind
SMALL_ITEM = ("shoes", "shoes_colour", "bag", "bag_colour", "hat", "hat_colour", "glasses", "held",
              "held_colour")
GARMENT = ("upper", "upper_colour", "pattern", "sleeve", "lower", "lower_colour")
PERSON = ("gender", "age", "hair_colour", "hair_length")
KIND = {**{k: "small item" for k in SMALL_ITEM}, **{k: "garment" for k in GARMENT},
        **{k: "hair / person" for k in PERSON}}
# caption attribute label (``GTCaption.attributes``) -> the identity attribute it states
CAPTION_TO_ATTRIBUTE = {
    "upper_type": "upper", "upper_colour": "upper_colour", "upper_pattern": "pattern",
    "upper_sleeve": "sleeve", "lower_type": "lower", "lower_colour": "lower_colour",
    "shoes_type": "shoes", "shoes_colour": "shoes_colour", "hat_type": "hat",
    "hat_colour": "hat_colour", "glasses": "glasses", "hair_length": "hair_length",
    "hair_colour": "hair_colour", "bag_type": "bag", "bag_colour": "bag_colour", "held_type": "held",
    "held_colour": "held_colour", "gender": "gender", "age": "age"}
ITEMS = ("upper", "lower", "shoes", "hat", "glasses", "hair", "bag", "held")  # things a caption mentions
NOT_STATED = "not stated"


# --------------------------------------------------------------------------- ranking and cost
def rerank_ranking(scores, topk, rerank_scores) -> torch.Tensor:
    """Scores [Q, G] (float64) whose stable descending order is the re-ranked order: each query's
    first-stage ``topk`` [Q, k] gallery indices re-ordered by ``rerank_scores`` [Q, k] (equal
    scores keep the first-stage order), followed by the rest of the gallery in first-stage order,
    as ``tbpr.evaluate.retrieval_metrics`` ranks with a ``rerank`` callback."""
    scores, topk = torch.as_tensor(scores), torch.as_tensor(topk)
    rerank_scores = torch.as_tensor(rerank_scores)
    if topk.shape != rerank_scores.shape or topk.shape[0] != scores.shape[0]:
        raise ValueError(f"topk {tuple(topk.shape)} and rerank_scores {tuple(rerank_scores.shape)} "
                         f"must both be [queries={scores.shape[0]}, k]")
    q, k = topk.shape
    order = torch.sort(rerank_scores, dim=1, descending=True, stable=True).indices
    reranked = topk.gather(1, order)
    ranking = scores.detach().to(torch.float64).clone()
    if k:
        top = ranking.max() + 1 + torch.arange(k, 0, -1, dtype=torch.float64)  # above every score
        ranking.scatter_(1, reranked, top.expand(q, k).contiguous())
    return ranking


@dataclass
class Scored:
    """A test split encoded and scored by one model, with the wall time of each step."""
    scores: torch.Tensor  # [Q, G] first-stage similarity
    ranking: torch.Tensor  # [Q, G]: its stable descending order is the final ranking
    eval_set: object  # tbpr.data.datasets.EvalSet: queries = captions, gallery = images
    seconds: dict  # wall seconds of "gallery" (encode images), "queries" (encode captions), "score", "rerank"
    cpu_seconds: dict | None = None  # the same steps in process CPU seconds (summed over threads)

    def ms_per_query(self, *, rerank: bool = True, gallery: bool = True, clock: str = "wall") -> float:
        """Milliseconds per query: encode the captions, score them (+ re-rank) and, with ``gallery``,
        the gallery encoding shared out over the queries; ``clock="cpu"`` in process CPU time (robust
        on a shared machine; on a GPU it misses the device's work)."""
        steps = self.steps(clock)
        parts = ["queries", "score"] + (["rerank"] if rerank else []) + (["gallery"] if gallery else [])
        return 1000 * sum(steps[p] for p in parts) / len(self.eval_set.captions)

    def steps(self, clock: str = "wall") -> dict:
        """Seconds per step on the ``"wall"`` or ``"cpu"`` clock."""
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
        if clock == "cpu" and self.cpu_seconds is None:
            raise ValueError("this Scored has no CPU times (build it with timed_scores)")
        return self.seconds if clock == "wall" else self.cpu_seconds

    def first_stage(self) -> "Scored":
        """The same run without re-ranking (CADA-G from a CADA-L run): no re-rank cost."""
        cpu = None if self.cpu_seconds is None else {**self.cpu_seconds, "rerank": 0.0}
        return Scored(self.scores, self.scores.to(torch.float64), self.eval_set,
                      {**self.seconds, "rerank": 0.0}, cpu)

    def top(self, queries, k: int = 5) -> dict:
        """{query index: gallery indices of its final top ``k``}."""
        order = _ranked(self.ranking[list(queries)])[:, :k]
        return {int(q): row.tolist() for q, row in zip(queries, order)}


def timed_scores(model, records, data_cfg, *, rerank_k: int = 0, device="cpu", batch_size: int = 64,
                 chunk_size: int = 1024) -> Scored:
    """Encode the gallery images and query captions of ``records`` with ``model``, score every query
    against the gallery (``model.similarity``, in query chunks; pairwise for MIA) and, for
    ``rerank_k > 0``, re-rank each query's top-k with ``model.rerank`` (CADA-L), timing each step
    after an untimed warm-up on two images and two captions, with Python's garbage collector paused
    (as ``timeit`` does). Image decoding is not timed (the same data pipeline for every method)."""
    check_rerank(model, rerank_k)
    seconds = dict.fromkeys(("gallery", "queries", "score", "rerank"), 0.0)
    cpu_seconds = dict(seconds)

    def timed(key, fn):
        with stopwatch(device) as took:
            out = fn()
        seconds[key] += took["wall"]
        cpu_seconds[key] += took["cpu"]
        return out

    eval_set = EvalSet(records)
    with EvalMode(model):  # warm-up (lazy tokenizers, taggers, kernels), not timed
        warm_images = model.encode_images(load_eval_images(eval_set.image_paths[:2], data_cfg).to(device))
        warm_texts = model.encode_texts(list(eval_set.captions[:2]))
        warm_scores = model.similarity(warm_texts, warm_images)
        if rerank_k > 0:
            model.rerank(warm_texts, warm_images, torch.sort(warm_scores, dim=1, descending=True).indices)
    text_feats, image_feats, eval_set = encode_split(model, records, data_cfg, device=device,
                                                     batch_size=batch_size, progress=False, timer=timed)
    G, Q = len(eval_set.image_paths), len(eval_set.captions)
    with EvalMode(model):
        scores = timed("score", lambda: torch.cat([
            model.similarity(select_rows(text_feats, slice(a, a + chunk_size)), image_feats).float()
            for a in range(0, Q, chunk_size)]))
        ranking = scores.to(torch.float64)
        if rerank_k > 0:
            k = min(rerank_k, G)
            topk = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
            rerank_scores = timed("rerank", lambda: torch.cat([torch.as_tensor(model.rerank(
                select_rows(text_feats, slice(a, a + chunk_size)), image_feats, topk[a:a + chunk_size]))
                for a in range(0, Q, chunk_size)]))
            ranking = rerank_ranking(scores.cpu(), topk.cpu(), rerank_scores.float().cpu())
    return Scored(scores=scores.cpu(), ranking=ranking.cpu(), eval_set=eval_set, seconds=seconds,
                  cpu_seconds=cpu_seconds)


def epoch_seconds(history: list[dict]) -> tuple[int, float]:
    """(number of epochs, mean seconds per epoch) from the engine's per-epoch logs (every stage)."""
    times = [float(h["seconds"]) for h in history if "seconds" in h]
    return len(times), (float(np.mean(times)) if times else float("nan"))


def pareto_front(cost: dict, accuracy: dict) -> list:
    """Labels no other label beats on both axes (lower or equal cost and higher or equal accuracy,
    strictly better on one), by increasing cost."""
    front = [a for a in cost if not any(
        cost[b] <= cost[a] and accuracy[b] >= accuracy[a] and (cost[b], accuracy[b]) != (cost[a], accuracy[a])
        for b in cost)]
    return sorted(front, key=lambda a: cost[a])


# --------------------------------------------------------------------------- ground truth
def visible_attributes(attrs: dict) -> dict:
    """The attributes of a SynthPedes identity an image shows (``KIND``'s keys): the colour of a
    hat, bag, held object or lower garment only when the person has one."""
    out = {k: attrs[k] for k in KIND if not k.endswith("_colour") or k in ("upper_colour", "shoes_colour",
                                                                          "hair_colour")}
    for item in ("hat", "bag", "held", "lower"):
        if attrs.get(item, "none") != "none":
            out[f"{item}_colour"] = attrs[f"{item}_colour"]
    return out


def differing_attributes(a: dict, b: dict) -> set:
    """Visible attributes in which identities ``a`` and ``b`` (attribute dicts) differ."""
    va, vb = visible_attributes(a), visible_attributes(b)
    return {k for k in set(va) | set(vb) if va.get(k) != vb.get(k)}


def stated_attributes(caption) -> set:
    """Identity attributes a caption states (``GTCaption`` or its ``attributes`` list)."""
    spans = getattr(caption, "attributes", caption)
    return {CAPTION_TO_ATTRIBUTE[s[2]] for s in spans if s[2] in CAPTION_TO_ATTRIBUTE}


def mentioned_items(caption) -> set:
    """Items (``ITEMS``: upper, lower, shoes, hat, glasses, hair, bag, held) a caption mentions."""
    spans = getattr(caption, "attributes", caption)
    return {s[2].split("_")[0] for s in spans} & set(ITEMS)


def kind_of(attributes) -> str:
    """One kind for a set of identity attributes: its only kind, ``"mixed"``, or ``NOT_STATED``."""
    kinds = {KIND[a] for a in attributes}
    return NOT_STATED if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"


def items_group(n: int) -> str:
    return "≤3 items" if n <= 3 else "4 items" if n == 4 else "≥5 items"


def _queries(gt, records):
    """(query index, record, caption index, GT caption, id, family) in EvalSet order."""
    q = 0
    for r in records:
        image = gt.images.get(r.file_path)
        if image is None:
            raise KeyError(f"{r.file_path} has no ground truth: records and ground truth must come "
                           "from the same SynthPedes root")
        for i in range(len(r.captions)):
            yield q, r, i, gt.captions[(r.file_path, i)], image.id, image.family
            q += 1


def _family_in_gallery(gt, records) -> dict:
    members: dict[int, set] = {}
    for r in records:
        image = gt.images[r.file_path]
        members.setdefault(image.family, set()).add(image.id)
    return members


def query_table(gt, records) -> pd.DataFrame:
    """One row per query caption of ``records`` (EvalSet order: records, then their captions).

    Columns: ``pid``, ``family``, ``items`` (number of ``ITEMS`` mentioned) and ``items_group``,
    ``family_members`` (other ids of the family in the gallery), ``separates`` (whether the caption
    states an attribute that tells the person from ``"all"``, ``"some"`` or ``"none"`` of them;
    ``"no family"`` without any), ``distinguishing`` (``kind_of`` the attributes it states that tell
    the person from some family member) and ``stated`` (sorted stated attributes).
    """
    families = _family_in_gallery(gt, records)
    rows = []
    for _, _, _, cap, pid, family in _queries(gt, records):
        stated = stated_attributes(cap)
        others = sorted(families[family] - {pid})
        said = [stated & differing_attributes(gt.identities[pid], gt.identities[o]) for o in others]
        n_sep = sum(bool(s) for s in said)
        items = len(mentioned_items(cap))
        rows.append({"pid": pid, "family": family, "items": items, "items_group": items_group(items),
                     "family_members": len(others),
                     "separates": "no family" if not others else
                     "all" if n_sep == len(others) else "some" if n_sep else "none",
                     "distinguishing": kind_of(set().union(*said)),
                     "stated": ",".join(sorted(stated))})
    return pd.DataFrame(rows)


def family_pairs(gt, records) -> pd.DataFrame:
    """One row per (query caption, other identity of its family in the gallery): ``query`` (index),
    ``other`` (id), ``differ`` (``kind_of`` the attributes in which the two differ) and ``stated``
    (``kind_of`` those of them the caption states; ``NOT_STATED``: the caption fits both)."""
    families = _family_in_gallery(gt, records)
    rows = []
    for q, _, _, cap, pid, family in _queries(gt, records):
        stated = stated_attributes(cap)
        for o in sorted(families[family] - {pid}):
            diff = differing_attributes(gt.identities[pid], gt.identities[o])
            rows.append({"query": q, "pid": pid, "other": o, "differ": kind_of(diff),
                         "stated": kind_of(stated & diff)})
    return pd.DataFrame(rows, columns=["query", "pid", "other", "differ", "stated"])


# --------------------------------------------------------------------------- outcomes
def _ranked(ranking) -> torch.Tensor:
    return torch.sort(torch.as_tensor(ranking), dim=1, descending=True, stable=True).indices


def query_outcomes(ranking, query_pids, gallery_pids, query_family, gallery_family) -> pd.DataFrame:
    """Per query: ``rank`` (1-based rank of the first image of its id in the stable descending
    order of ``ranking`` [Q, G]), ``R1``/``R5``/``R10`` (bool), ``top1`` (gallery index of the
    first image) and ``top1_is`` (``"match"``, ``"family member"`` or ``"unrelated"``)."""
    order = _ranked(ranking)
    qp, gp = torch.as_tensor(np.asarray(query_pids)), torch.as_tensor(np.asarray(gallery_pids))
    qf, gf = np.asarray(query_family), np.asarray(gallery_family)
    rank = (gp[order] == qp[:, None]).to(torch.uint8).argmax(1).numpy() + 1
    top1 = order[:, 0].numpy()
    is_match = gp.numpy()[top1] == qp.numpy()
    same_family = gf[top1] == qf
    return pd.DataFrame({"rank": rank, "R1": rank <= 1, "R5": rank <= 5, "R10": rank <= 10,
                         "top1": top1, "top1_is": np.where(is_match, "match", np.where(
                             same_family, "family member", "unrelated"))})


def pair_wins(ranking, pairs: pd.DataFrame, gallery_pids) -> np.ndarray:
    """For each row of ``pairs`` (``query``, ``pid``, ``other``): whether the query's best-ranked
    image of its own id ranks above every image of ``other`` (chance: about 1/2)."""
    order = _ranked(ranking)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    gp = np.asarray(gallery_pids)
    images = {pid: np.flatnonzero(gp == pid) for pid in np.unique(gp)}
    pos = position.numpy()
    return np.array([pos[q, images[p]].min() < pos[q, images[o]].min()
                     for q, p, o in zip(pairs["query"], pairs["pid"], pairs["other"])], dtype=bool)


def family_share_of_negatives(query_pids, query_family, gallery_pids, gallery_family) -> np.ndarray:
    """Per query: the fraction of the gallery images of *other* ids that belong to its family, i.e.
    how often a wrong top-1 would be a family member if wrong images were picked at random."""
    qp, qf = np.asarray(query_pids), np.asarray(query_family)
    gp, gf = np.asarray(gallery_pids), np.asarray(gallery_family)
    negatives = gp[None, :] != qp[:, None]
    family = negatives & (gf[None, :] == qf[:, None])
    return family.sum(1) / np.maximum(negatives.sum(1), 1)


def top1_errors(outcomes: list, chance) -> dict:
    """What takes the top-1 place, in % and averaged over seeds (``outcomes``: a ``query_outcomes``
    DataFrame per seed): correct, a family member, an unrelated person; the family share of the
    wrong top-1 images, and its chance value (``chance``: ``family_share_of_negatives`` per query,
    averaged over the wrongly answered queries). NaN where a seed has no wrong top-1."""
    chance = np.asarray(chance, dtype=float)
    rows = []
    for out in outcomes:
        kind, wrong = out["top1_is"], ~out["R1"].to_numpy(dtype=bool)
        rows.append({"top-1 correct (%)": 100 * kind.eq("match").mean(),
                     "top-1 family member (%)": 100 * kind.eq("family member").mean(),
                     "top-1 unrelated (%)": 100 * kind.eq("unrelated").mean(),
                     "family share of wrong top-1 (%)":
                         100 * kind.eq("family member").sum() / wrong.sum() if wrong.any() else np.nan,
                     "chance family share (%)": 100 * chance[wrong].mean() if wrong.any() else np.nan})
    return pd.DataFrame(rows).mean().to_dict()


def example_queries(num_queries: int, queries: pd.DataFrame | None = None, n: int = 3) -> list[int]:
    """``n`` fixed query indices of different kinds (with a ``query_table``): the first whose
    caption states only a small-item difference from its family, the first with only a garment
    difference, the first that mentions the fewest items; filled up with evenly spaced queries."""
    picks: list[int] = []
    if queries is not None:
        for mask in (queries["distinguishing"] == "small item", queries["distinguishing"] == "garment",
                     queries["items"] == queries["items"].min()):
            hits = [int(q) for q in np.flatnonzero(mask.to_numpy()) if q not in picks]
            if hits and len(picks) < n:
                picks.append(hits[0])
    spaced = np.linspace(0, num_queries - 1, n + 2).astype(int)[1:-1].tolist()
    for q in spaced + list(range(num_queries)):
        if len(picks) < min(n, num_queries) and int(q) not in picks:
            picks.append(int(q))
    return picks


def breakdown(values: dict, groups, order=None) -> pd.DataFrame:
    """Mean (in %) of per-item booleans per group and method.

    ``values = {method: [bool array per seed]}`` (one entry per query or pair, the same items for
    every seed), ``groups`` a label per item. Returns a DataFrame indexed by group with ``n`` and
    one column per method (mean over seeds and the group's items); ``df.attrs["se"]`` holds the
    standard error of each cell ({method: {group: se}}, over the items of the per-item seed means).
    """
    groups = pd.Series(np.asarray(groups), name="group")
    order = [g for g in (order or sorted(groups.unique(), key=str)) if (groups == g).any()]
    table = pd.DataFrame({"n": groups.value_counts().reindex(order).astype(int)})
    se = {}
    for method, runs in values.items():
        per_item = pd.Series(np.mean(np.stack([np.asarray(v, dtype=float) for v in runs]), axis=0))
        if len(per_item) != len(groups):
            raise ValueError(f"{method}: {len(per_item)} values but {len(groups)} group labels")
        by = per_item.groupby(groups.values)
        table[method] = 100 * by.mean().reindex(order)
        se[method] = (100 * by.std(ddof=1) / np.sqrt(by.count())).reindex(order).fillna(0.0).to_dict()
    table.index.name = "group"
    table.attrs["se"] = se
    return table


def clearly_differs(a: float, se_a: float, b: float, se_b: float, z: float = 2.0) -> bool:
    """``a`` and ``b`` differ by more than ``z`` combined standard errors (and the errors are known)."""
    spread = float(np.hypot(se_a, se_b))
    return spread > 0 and abs(a - b) > z * spread

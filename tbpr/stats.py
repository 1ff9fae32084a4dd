"""Paired comparisons of two configurations over the same seeds and the same test queries.

A comparison of configuration B against A (a table's reference row against one of its other rows)
is the difference of their metric, B - A in points, over the same seeds and the same queries, with a 95 %
interval and a verdict against the paper's own direction. The method was fixed before any real
verdict was computed, and is not tuned to them:

- **Data**: per seed, each query's value of the metric (R1: the 0/1 hit; mAP: the query's AP), as
  ``tbpr.evaluate`` keeps them (``QueryScores``). Seed i of A is paired with seed i of B (the same
  seed trains both), query q of A with query q of B; ``D[s, q] = 100 * (B - A)``.
- **Estimate**: the mean of ``D`` over seeds and queries (= the difference of the seed-averaged
  metrics).
- **Interval**: a two-level bootstrap of that mean, ``DRAWS = 2000`` draws from a fixed generator
  (``numpy.random.default_rng(BOOTSTRAP_SEED = 0)``): each draw resamples the seeds (S of them, with
  replacement) and, independently, the queries (Q of them, with replacement) — one draw for A and B
  together, since it resamples the paired differences — and takes the mean of ``D`` over the drawn
  seed x query grid. The interval is the 2.5 and 97.5 percentiles of the draws. With one seed only
  the queries are resampled (the seed noise is then unknown, and the interval cannot show it).
- **Verdict** (``verdict``): the paper's direction is the sign of its own numbers' difference for
  the two rows (B - A). *reproduces*: the interval lies on the paper's side of 0; *opposite*: on the
  other side; *undecided*: it contains 0. Rows whose paper numbers are missing or equal have no
  direction to reproduce (*no paper direction*) and are not counted.

Calibration on synthetic scores (``simulate`` in tests/test_stats.py: 2,650 queries, each with its
own hit probability ~ Beta(1.2, 8.8), mean 12 %; every run, configuration x seed, shifts all of them
by its own N(0, offset) points; 1,000 draws), measured once before any real verdict:

    run offset  seeds   no effect: interval excludes 0 (200 sims)   true +2 R1 found (100 sims)
    0.5 point     3          1.5 %                                      74 %
    1 point       3          7 %                                        56 %
    2 points      3         14 %                                        38 %
    0.5 point     5          0.5 %                                      88 %
    1 point       5          5.5 %                                      69 %
    2 points      5          8 %                                        37 %

So the interval is at or below its nominal 5 % while the runs' own offsets stay within ~1 R1
point, and it over-decides when seeds scatter by 2 points (three to five seeds estimate that
spread poorly), one reason the headline comparisons use 5 seeds; two points of effect are not
always enough to decide at 3 seeds.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .evaluate import QueryScores

DRAWS = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
REPRODUCES, OPPOSITE, UNDECIDED, NO_DIRECTION = "reproduces", "opposite", "undecided", "no paper direction"
VERDICTS = (REPRODUCES, UNDECIDED, OPPOSITE, NO_DIRECTION)


@dataclass(frozen=True)
class Comparison:
    """B against A: ``delta`` = B - A in points with its interval [``low``, ``high``], the paper's
    own difference (None when it has no numbers for both rows) and the verdict."""
    metric: str
    delta: float
    low: float
    high: float
    paper_delta: float | None
    verdict: str
    seeds: int
    queries: int
    draws: int = DRAWS

    def interval(self, decimals: int = 1) -> str:
        """``"+2.1 [+0.8, +3.4]"``."""
        return f"{self.delta:+.{decimals}f} [{self.low:+.{decimals}f}, {self.high:+.{decimals}f}]"

    def describe(self, decimals: int = 1) -> str:
        """``"R1 +2.1 [+0.8, +3.4] (paper +4.58): reproduces"``."""
        paper = "no paper number" if self.paper_delta is None else f"paper {self.paper_delta:+.2f}"
        return f"{self.metric} {self.interval(decimals)} ({paper}): {self.verdict}"


def verdict(low: float, high: float, paper_delta: float | None) -> str:
    """*reproduces* / *opposite* when the interval [low, high] lies on the paper's / the other side
    of 0, *undecided* when it contains 0; *no paper direction* when the paper's difference is missing
    or 0."""
    if paper_delta is None or paper_delta == 0 or not np.isfinite(paper_delta):
        return NO_DIRECTION
    if low > 0 or high < 0:
        return REPRODUCES if (low > 0) == (paper_delta > 0) else OPPOSITE
    return UNDECIDED


def bootstrap_interval(differences, *, draws: int = DRAWS, seed: int = BOOTSTRAP_SEED,
                       level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high) of ``differences`` [seeds, queries]: the mean over both and the percentile
    interval of the two-level bootstrap described in the module docstring."""
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 2 or 0 in d.shape:
        raise ValueError(f"differences must be [seeds, queries] with at least one of each, got shape {d.shape}")
    seeds, queries = d.shape
    rng = np.random.default_rng(seed)
    seed_counts = _counts(rng.integers(0, seeds, (draws, seeds)), seeds)        # [draws, S]
    query_counts = _counts(rng.integers(0, queries, (draws, queries)), queries)  # [draws, Q]
    per_seed = d @ query_counts.T                                                # [S, draws]
    means = (seed_counts * per_seed.T).sum(1) / (seeds * queries)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(low), float(high)


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` items was drawn, per row of ``indices`` [draws, k]."""
    rows = np.arange(len(indices))[:, None] * n
    return np.bincount((indices + rows).ravel(), minlength=len(indices) * n).reshape(len(indices), n).astype(np.float64)


def query_scores(run) -> QueryScores:
    """The per-query values of one evaluated run: a ``QueryScores``, a metrics dict holding one under
    ``"per_query"``, or a run result with ``per_query()`` (``tbpr.experiments.Result``)."""
    if isinstance(run, QueryScores):
        return run
    if isinstance(run, Mapping):
        if "per_query" not in run:
            raise ValueError("these metrics have no per-query values; evaluate with per_query=True "
                             "(retrieval_metrics / score_features / evaluate)")
        return run["per_query"]
    if hasattr(run, "per_query"):
        return run.per_query()
    raise TypeError(f"cannot read per-query values from a {type(run).__name__}")


def _seed_of(run):
    spec = getattr(run, "spec", None)
    return spec.get("seed") if isinstance(spec, Mapping) else None


def paired_values(a_runs: Sequence, b_runs: Sequence, metric: str = "R1") -> tuple[np.ndarray, np.ndarray]:
    """[seeds, queries] values of ``metric`` for A and B, run i of each list paired (the same seed:
    the lists follow their seeds' order; a longer list's extra seeds are left out)."""
    n = min(len(a_runs), len(b_runs))
    if n == 0:
        raise ValueError("a paired comparison needs at least one run of each configuration")
    a_all, b_all = [], []
    for a, b in zip(a_runs[:n], b_runs[:n]):
        if _seed_of(a) is not None and _seed_of(b) is not None and _seed_of(a) != _seed_of(b):
            raise ValueError(f"runs paired across seeds {_seed_of(a)} and {_seed_of(b)}: list each row's "
                             "runs in the order of its seeds")
        qa, qb = query_scores(a), query_scores(b)
        if qa.split != qb.split or not np.array_equal(qa.query, qb.query):
            raise ValueError("the two runs were evaluated on different queries (another split, or "
                             "queries excluded differently); compare runs of one test split")
        if metric not in qa.values or metric not in qb.values:
            raise KeyError(f"no per-query values of {metric!r}; have {sorted(qa.values)}")
        a_all.append(qa.values[metric])
        b_all.append(qb.values[metric])
    return np.stack(a_all).astype(np.float64), np.stack(b_all).astype(np.float64)


def compare(a_runs: Sequence, b_runs: Sequence, metric: str = "R1", paper_delta: float | None = None, *,
            draws: int = DRAWS, seed: int = BOOTSTRAP_SEED) -> Comparison:
    """B (``b_runs``, one per seed) against A (``a_runs``) on ``metric``, with the verdict against
    ``paper_delta`` (the paper's B - A)."""
    a, b = paired_values(a_runs, b_runs, metric)
    delta, low, high = bootstrap_interval(100 * (b - a), draws=draws, seed=seed)
    return Comparison(metric=metric, delta=delta, low=low, high=high,
                      paper_delta=None if paper_delta is None else float(paper_delta),
                      verdict=verdict(low, high, paper_delta), seeds=a.shape[0], queries=a.shape[1],
                      draws=draws)


def paper_difference(paper: Mapping, b: str, a: str, metric: str = "R1") -> float | None:
    """The paper's ``b - a`` of ``metric`` from ``{label: {metric: value}}``; None if either number
    is missing."""
    va, vb = (paper.get(a) or {}).get(metric), (paper.get(b) or {}).get(metric)
    return None if va is None or vb is None else round(float(vb) - float(va), 6)


def compare_rows(rows: Mapping[str, Sequence], reference: str, paper: Mapping | None = None,
                 metric: str = "R1") -> dict[str, Comparison]:
    """The ``reference`` row (the full model, or the paper's chosen setting) against every other row
    of ``rows`` (``{label: [run per seed]}``): ``{label: Comparison}``, each ``reference - label``
    beside the paper's own ``reference - label`` from ``paper``."""
    if reference not in rows:
        raise KeyError(f"reference row {reference!r} is not among the rows {list(rows)}")
    return {label: compare(runs, rows[reference], metric, paper_difference(paper or {}, reference, label, metric))
            for label, runs in rows.items() if label != reference}


def count(verdicts) -> dict[str, int]:
    """How many of ``verdicts`` (strings or Comparisons) are each verdict, in ``VERDICTS`` order."""
    names = [v.verdict if isinstance(v, Comparison) else v for v in verdicts]
    return {name: names.count(name) for name in VERDICTS}


# --------------------------------------------------------------------------- records, tables, sentences
def record(paper: str, table: str, row: str, reference: str, comparison: Comparison, *,
           headline: bool = False) -> dict:
    """One verdict of a paper's ``verdicts.json``: the reference row against ``row`` of ``table``,
    the comparison, and whether it is the paper's headline."""
    return {"paper": paper, "table": table, "row": row, "reference": reference, "headline": headline,
            **asdict(comparison)}


def table_verdicts(paper: str, table: str, rows: Mapping[str, Sequence], reference: str,
                   paper_numbers: Mapping | None, headline: Mapping | None = None,
                   metric: str = "R1") -> list[dict]:
    """The records of one table: ``reference`` against each other row of ``rows`` (``{label: [run
    per seed]}``); the comparison with the headline's baseline row is marked ``headline``."""
    headline = headline or {}
    out = compare_rows(rows, reference, paper_numbers, metric)
    return [record(paper, table, label, reference, comparison,
                   headline=headline.get("table") == table and headline.get("baseline") == label
                   and headline.get("full") == reference)
            for label, comparison in out.items()]


def write_records(records: list[dict], path) -> Path:
    """``verdicts.json`` (read by ``tbpr.summary`` for the reproduction's verdict table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"method": method_note(), "verdicts": records}, indent=1) + "\n")
    return path


def read_records(path) -> list[dict]:
    return json.loads(Path(path).read_text())["verdicts"]


def method_note() -> str:
    """One sentence on how the intervals were computed, for tables and conclusions."""
    return (f"Ours: the reference row minus the row, {100 * LEVEL:.0f} % interval from a paired bootstrap over "
            f"seeds and test queries ({DRAWS} draws, bootstrap seed {BOOTSTRAP_SEED}); reproduces / "
            "opposite = the interval lies on the paper's / the other side of 0, undecided = it contains 0.")


def _signed(value, decimals: int = 2) -> str:
    return "–" if value is None else f"{value:+.{decimals}f}"


def display_rows(records: Sequence[Mapping], *, paper_column: bool = False) -> list[dict]:
    """Records as table lines: the comparison, the paper's delta, ours with its interval, seeds,
    verdict (the headline marked ★)."""
    lines = []
    for r in records:
        line = {"paper": r["paper"]} if paper_column else {}
        line.update({"table": r["table"], "comparison": f"{r['reference']} vs {r['row']}" + (" ★" if r["headline"] else ""),
                     f"paper Δ{r['metric']}": _signed(r["paper_delta"]),
                     f"ours Δ{r['metric']} [95 % CI]": f"{r['delta']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]",
                     "seeds": r["seeds"], "verdict": r["verdict"]})
        lines.append(line)
    return lines


def markdown(records: Sequence[Mapping], *, paper_column: bool = False) -> str:
    """A GitHub Markdown table of ``display_rows``."""
    lines = display_rows(records, paper_column=paper_column)
    if not lines:
        return ""
    header = list(lines[0])
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(line[k]).replace("|", "\\|") for k in header) + " |" for line in lines]
    return "\n".join(out) + "\n"


def counts_text(records: Sequence[Mapping]) -> str:
    """``"4 reproduce, 3 undecided, 1 opposite (2 rows without a paper direction)"``."""
    n = count(r["verdict"] for r in records)
    text = f"{n[REPRODUCES]} reproduce, {n[UNDECIDED]} undecided, {n[OPPOSITE]} opposite"
    return text + (f" ({n[NO_DIRECTION]} rows without a paper direction)" if n[NO_DIRECTION] else "")


def conclusion_lines(records: Sequence[Mapping]) -> list[str]:
    """Markdown bullets from the verdicts alone: the headline, the counts, then the rows that went
    the other way and those left undecided."""
    lines = []
    for r in (r for r in records if r["headline"]):
        lines.append(f"- Headline ({r['table']}): {r['reference']} vs {r['row']}: {r['metric']} "
                     f"{r['delta']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] over {r['seeds']} seeds "
                     f"(paper {_signed(r['paper_delta'])}) — **{r['verdict']}**.")
    lines.append(f"- Every ablation row against its table's reference: {counts_text(records)}.")
    for kind in (OPPOSITE, UNDECIDED):
        rows = [r for r in records if r["verdict"] == kind and not r["headline"]]
        if rows:
            listed = "; ".join(f"{r['table']}: {r['reference']} vs {r['row']} {r['delta']:+.1f} "
                               f"[{r['low']:+.1f}, {r['high']:+.1f}] (paper {_signed(r['paper_delta'])})"
                               for r in rows)
            lines.append(f"- {kind.capitalize()}: {listed}.")
    return lines

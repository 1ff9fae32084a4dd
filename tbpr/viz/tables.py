"""Ablation tables: ours (mean ± std over seeds) beside the paper's numbers, saved as CSV + Markdown;
the verdict table of a paper's ablations (``verdicts``, from ``tbpr.stats``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import stats
from ..papers import comparisons, paper_numbers

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
MISSING = "-"  # as in the papers' tables: not reported


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def ablation_table(rows: dict, paper: dict | None = None, metrics=METRICS, decimals: int = 2):
    """``rows = {label: [metrics dict per seed]}`` -> DataFrame indexed by label.

    Each metric column holds ours as ``"mean ± std"`` over seeds (sample std; the mean alone for one
    seed), followed by ``"<metric> (paper)"`` when ``paper = {label: {metric: value}}`` has that
    metric for any row. Labels only in ``paper`` are appended (ours shown as ``-``). The numbers
    behind the strings are in ``df.attrs["mean"]``, ``df.attrs["std"]`` ({label: {metric: value}}).
    """
    paper = paper or {}
    labels = list(rows) + [label for label in paper if label not in rows]
    paper_metrics = {m for values in paper.values() for m in values}
    means, stds, table = {}, {}, {}
    for label in labels:
        runs = [r for r in rows.get(label, []) if r is not None]
        line, means[label], stds[label] = {"seeds": len(runs)}, {}, {}
        for metric in metrics:
            values = [float(r[metric]) for r in runs if metric in r]
            if values:
                mean, std = _mean_std(values)
                means[label][metric], stds[label][metric] = mean, std
                line[metric] = (f"{mean:.{decimals}f} ± {std:.{decimals}f}" if len(values) > 1
                                else f"{mean:.{decimals}f}")
            else:
                line[metric] = MISSING
            if metric in paper_metrics:
                value = paper.get(label, {}).get(metric)
                line[f"{metric} (paper)"] = MISSING if value is None else f"{float(value):.{decimals}f}"
        table[label] = line
    df = pd.DataFrame.from_dict(table, orient="index")
    df.index.name = "setting"
    df.attrs.update(mean=means, std=stds)
    return df


def to_markdown(df) -> str:
    """A GitHub Markdown table of ``df`` with its index as the first column (no tabulate needed)."""
    header = [df.index.name or ""] + [str(c) for c in df.columns]

    def cell(value) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    for index, row in df.iterrows():
        lines.append("| " + " | ".join(cell(v) for v in [index, *row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


def save_table(df, stem) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` (creating folders); returns both paths."""
    stem = Path(stem)
    if stem.suffix in (".csv", ".md"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    df.to_csv(csv)
    md.write_text(to_markdown(df))
    return csv, md


def versus_chance(r1: float, chance: float, num_queries: int, far: float = 5.0) -> str:
    """R@1 (%) against a random ranking's, in words. "far above chance" from ``far`` × chance on;
    otherwise "above chance" when more than two binomial standard errors of a random ranking over
    ``num_queries`` queries above it, else "not distinguishable from chance"."""
    times = r1 / chance
    if times >= far:
        return f"far above chance ({times:.1f}×)"
    se = 100 * np.sqrt((chance / 100) * (1 - chance / 100) / num_queries)
    if r1 - chance > 2 * se:
        return f"above chance ({times:.1f}×, {(r1 - chance) / se:.0f} binomial standard errors) but under {far:g}× it"
    return "not distinguishable from chance"


def verdicts(paper: str, tables: dict, out_dir=None, metric: str = "R1") -> tuple[pd.DataFrame, list[dict]]:
    """Every row of each table against the table's reference row (``tbpr.papers.comparisons``), with
    the paper's own difference, ours with its paired-bootstrap interval and the verdict
    (``tbpr.stats``). ``tables = {table: {label: [run per seed]}}`` (runs: results, or metrics with
    ``per_query``); a table run without its reference row (a smoke test's subset) gives none.
    Returns the table and the records; ``out_dir`` gets ``verdicts.json`` (read by ``tbpr
    summary``) and ``verdicts.csv`` / ``.md``."""
    spec = comparisons(paper)
    records = []
    for table, rows in tables.items():
        if table not in spec["reference"]:
            raise KeyError(f"tbpr/papers/{paper}/paper.yaml: comparisons: reference has no row for "
                           f"table {table!r}; add `{table}: <the row the others are compared with>`")
        if spec["reference"][table] not in rows:
            continue
        records += stats.table_verdicts(paper, table, rows, spec["reference"][table],
                                        paper_numbers(paper, table), spec["headline"], metric)
    df = pd.DataFrame(stats.display_rows(records)).set_index("comparison") if records else pd.DataFrame()
    if out_dir is not None:
        stats.write_records(records, Path(out_dir) / "verdicts.json")
        save_table(df, Path(out_dir) / "verdicts")
    return df, records

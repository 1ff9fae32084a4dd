# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · The five papers and IRRA side by side on SynthPedes
#
# Every model at its full configuration, trained on the same SynthPedes split at the chosen profile
# and budget through `tbpr.experiments.run` (the runs of notebooks 01–05 are reused from the cache
# when their configuration matches), evaluated with the same exact metrics. This notebook adds what
# no single paper notebook shows:
#
# 1. the papers' own CUHK-PEDES / ICFG-PEDES / RSTPReid numbers, for orientation only (other data,
#    other scale, pre-trained backbones);
# 2. one table: accuracy (mean ± std over seeds), parameters, training time per epoch and the
#    inference cost per query, **measured here** on the test split;
# 3. accuracy against inference cost;
# 4. which queries each method gets wrong, from the SynthPedes ground truth (attribute spans of
#    every caption, identity families that differ in one or two attributes);
# 5. the same queries retrieved by every method.
#
# The reusable computations live in `tbpr/viz/comparison.py`.

# %% tags=["parameters"]
profile = "quick"
dataset = "synthpedes"
data_root = None
seeds = None
device = "cpu"
out_dir = "../figures"

# %%
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Image as PNG
from IPython.display import Markdown, display
from PIL import Image

from tbpr import experiments, zoo
from tbpr.config import to_dict
from tbpr.evaluate import retrieval_metrics
from tbpr.papers import available_models, count_parameters, create_model, get_config
from tbpr.viz import ablation_table, retrieval_grid, save_figure, save_table
from tbpr.viz import comparison as cmp

if profile == "smoke":
    torch.set_num_threads(1)  # smoke-sized ops are too small for a second thread to pay off
seeds = experiments.default_seeds(profile) if seeds is None else list(seeds)
figdir = Path(out_dir) / "comparison"
models = available_models()
root = experiments.resolve_data_root(dataset, data_root, profile)
test = experiments.load_records(dataset, root)["test"]
print("models:", models, "| profile:", profile, "| seeds:", seeds, "| torch threads:", torch.get_num_threads())

# %% [markdown]
# ## 1 · What the papers report (text → image, %)
# Each paper's own numbers, from the results table named beside each; `-` where the paper does not
# report it (MIA predates ICFG-PEDES and RSTPReid; SSAN and LGUR report no RSTPReid; only CADA and
# IRRA report mAP; IRRA's numbers are from its official README). CADA is listed twice: global cosine scores (CADA-G) and with its decoder re-ranking the top-k
# gallery images of every query (CADA-L). Later papers do list third-party numbers (e.g. MIA 46.49
# and SSAN 54.23 R1 on ICFG-PEDES in CADA's Table II, SSAN 43.50 on RSTPReid in its Table III);
# they are not used here.

# %%
PAPERS = {  # label -> dataset -> (R1, R5, R10, mAP); None = not reported
    "mia": {"CUHK-PEDES": (53.10, 75.00, 82.90, None)},  # ResNet-50, λ1=1, λ2=0.3 (Table VII)
    "ssan": {"CUHK-PEDES": (61.37, 80.15, 86.73, None),  # ResNet-50 (Table 1)
             "ICFG-PEDES": (54.23, 72.63, 79.53, None)},  # (Table 2, SSAN row)
    "lgur": {"CUHK-PEDES": (65.25, 83.12, 89.00, None),  # DeiT-Small (Table 1)
             "ICFG-PEDES": (59.02, 75.32, 81.56, None)},  # DeiT-Small (Table 2)
    "ivt": {"CUHK-PEDES": (65.59, 83.11, 89.21, None),  # (Table 1)
            "ICFG-PEDES": (56.04, 73.60, 80.22, None),  # (Table 3)
            "RSTPReid": (46.70, 70.00, 78.80, None)},  # (Table 2; §4.2 misquotes 46.50 / 70.20 / 79.70)
    "cada-G": {"CUHK-PEDES": (73.48, 89.57, 94.10, 65.82), "ICFG-PEDES": (62.54, 79.46, 85.14, 37.07),
               "RSTPReid": (61.50, 82.60, 89.15, 47.28)},  # (Tables I–III)
    "cada-L": {"CUHK-PEDES": (78.37, 91.57, 94.58, 68.87), "ICFG-PEDES": (67.81, 82.34, 87.14, 39.85),
               "RSTPReid": (69.60, 86.75, 92.40, 52.74)},  # (Tables I–III)
    "irra": {"CUHK-PEDES": (73.38, 89.93, 93.71, 66.13), "ICFG-PEDES": (63.46, 80.24, 85.82, 38.05),
             "RSTPReid": (60.20, 81.30, 88.20, 47.17)},  # (official README, anosorae/IRRA)
}
DATASETS, PAPER_METRICS = ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid"), ("R1", "R5", "R10", "mAP")
paper = pd.DataFrame({label: {f"{d} {k}": ("-" if d not in rep or rep[d][i] is None else f"{rep[d][i]:.2f}")
                              for d in DATASETS for i, k in enumerate(PAPER_METRICS)}
                      for label, rep in PAPERS.items()}).T.rename_axis("method")
save_table(paper, figdir / "paper_results")
paper

# %% [markdown]
# ## 2 · Training (cached)
# Every method at this profile's configuration, one run per seed.

# %%
K = getattr(get_config("cada", profile), "rerank_k", 32)
PROTOCOLS = {m: ({"cada-G": 0, "cada-L": K} if m == "cada" else {m: 0}) for m in models}
INFERENCE = {"mia": "pairwise: cross-modal attention on every pair", "ssan": "separate encoding",
             "lgur": "separate encoding", "ivt": "separate encoding", "cada-G": "separate encoding",
             "cada-L": f"separate encoding + decoder re-ranking of the top {K}",
             "irra": "separate encoding"}
results = {label: [experiments.run(m, profile, seed=s, dataset=dataset, data_root=data_root, device=device,
                                   rerank_k=k) for s in seeds]
           for m in models for label, k in PROTOCOLS[m].items()}
labels = list(results)


def warm_start(label: str) -> str:
    """The zoo members the method's profile starts from ("random init" where none)."""
    model = label.split("-")[0]
    members = sorted(zoo.members(to_dict(get_config(model, profile))))
    return " + ".join(m.removeprefix("zoo:") for m in members) or "random init"


STARTS = {label: warm_start(label) for label in labels}

# %% [markdown]
# ## 3 · Inference, measured here
# Every trained model encodes the test gallery and the test captions and scores every caption against
# every image, timed step by step (`cmp.timed_scores`: after a warm-up, with Python's garbage
# collector paused as `timeit` does; image decoding is not timed). Separate-encoding methods score a
# cosine, MIA runs its relation attention and phrase–part matching on every pair, and CADA-L re-runs
# its cross-modal decoder on each query's top-k gallery images. *ms/query* shares the gallery encoding
# out over the queries; *ms/query, gallery cached* leaves it out. On the CPU the clock is the process
# CPU time (summed over torch threads; wall time on a shared machine depends on what else runs), on a
# GPU the wall time. From the same rankings: per-query outcomes, and on SynthPedes
# the ground-truth query kinds (section 6).

# %%
gt = None
if dataset == "synthpedes":
    from tbpr.synthpedes import load_ground_truth
    gt = load_ground_truth(root)
    queries, pairs = cmp.query_table(gt, test), cmp.family_pairs(gt, test)
    gallery_family = np.array([gt.images[r.file_path].family for r in test])
num_queries = sum(len(r.captions) for r in test)
examples = cmp.example_queries(num_queries, queries if gt is not None else None)

clock = "cpu" if str(device) == "cpu" else "wall"
runs = {label: [] for label in labels}  # per seed: what is kept of each scored run
params = {}
for m in models:
    for i in range(len(seeds)):
        net = results[next(iter(PROTOCOLS[m]))][i].load_model(device)
        if m == "mia":  # its noun-phrase parses are cached process-wide: parsed while training here, free
            sys.modules[type(net).__module__].caption_phrases.cache_clear()
        params[m] = (count_parameters(net), count_parameters(net, trainable_only=True))
        scored = cmp.timed_scores(net, test, net.cfg.data, rerank_k=max(PROTOCOLS[m].values()), device=device)
        e = scored.eval_set
        for label, k in PROTOCOLS[m].items():
            s = scored if k else scored.first_stage()
            run = {"metrics": retrieval_metrics(s.ranking, e.caption_pids, e.image_pids), "seconds": s.steps(clock),
                   "ms": s.ms_per_query(clock=clock), "ms_cached": s.ms_per_query(gallery=False, clock=clock),
                   "top": s.top(examples)}
            if gt is not None:
                run["outcomes"] = cmp.query_outcomes(s.ranking, e.caption_pids, e.image_pids,
                                                     queries["family"], gallery_family)
                run["pair_wins"] = cmp.pair_wins(s.ranking, pairs, e.image_pids)
            runs[label].append(run)
        del net, scored
gap = max(abs(run["metrics"][k] - r.metrics[k]) for label in labels for run, r in zip(runs[label], results[label])
          for k in ("R1", "mAP"))
print(f"rankings re-computed here reproduce the cached metrics to {gap:.2g} points (R1, mAP)")
cost = pd.DataFrame({label: {step: np.median([run["seconds"][step] for run in runs[label]])
                             for step in ("gallery", "queries", "score", "rerank")} for label in labels}).T
cost = (1000 * cost / num_queries).add_suffix(" (ms/query)")
cost["total (ms/query)"] = cost.sum(axis=1)
save_table(cost.round(3), figdir / "inference_cost_steps")
print(f"{clock} clock, {torch.get_num_threads()} torch thread(s), device {device}")
cost.round(3)

# %% [markdown]
# ## 4 · One table
# Ours: mean ± std over seeds on the SynthPedes test split at this profile. Parameters of the trained
# model and of the paper-profile model (built on the `meta` device, no memory). Training time per
# epoch comes from the cached training runs (all stages; they may have run under other load or thread
# counts); inference cost is the median over seeds measured in section 3 on this machine.

# %%
METRICS = ("R1", "R5", "R10", "mAP", "mINP")
table = ablation_table({label: [run["metrics"] for run in runs[label]] for label in labels}, metrics=METRICS)
table.index.name = "method"
model_of = {label: m for m in models for label in PROTOCOLS[m]}
paper_params = {m: count_parameters(create_model(m, "paper", device="meta")) for m in models}
epochs = {label: [cmp.epoch_seconds(r.history) for r in results[label]] for label in labels}
ms = {label: float(np.median([run["ms"] for run in runs[label]])) for label in labels}
extra = pd.DataFrame({
    "inference": INFERENCE,
    "starts from": STARTS,
    f"params ({profile})": {label: "{:,} ({:,} trainable)".format(*params[model_of[label]]) for label in labels},
    "params (paper profile)": {label: f"{paper_params[model_of[label]]:,}" for label in labels},
    "epochs": {label: epochs[label][0][0] for label in labels},
    "train s/epoch": {label: f"{np.mean([e[1] for e in epochs[label]]):.2f}" for label in labels},
    "ms/query": {label: f"{ms[label]:.3f}" for label in labels},
    "ms/query, gallery cached": {label: f"{np.median([run['ms_cached'] for run in runs[label]]):.3f}"
                                 for label in labels},
    **{f"{d} R1 (paper)": {label: "-" if d not in PAPERS[label] else f"{PAPERS[label][d][0]:.2f}"
                           for label in labels} for d in DATASETS}}).reindex(labels)
table = table.join(extra)
save_table(table, figdir / "comparison")
table

# %%
mean = {label: {k: float(np.mean([run["metrics"][k] for run in runs[label]])) for k in METRICS} for label in labels}
std = {label: {k: float(np.std([run["metrics"][k] for run in runs[label]], ddof=1)) if len(seeds) > 1 else 0.0
               for k in METRICS} for label in labels}
fig, ax = plt.subplots(figsize=(7.5, 3.2))
x = np.arange(len(labels))
for i, k in enumerate(["R1", "mAP"]):
    ax.bar(x + (i - 0.5) * 0.38, [mean[lb][k] for lb in labels], 0.38, yerr=[std[lb][k] for lb in labels],
           label=k, capsize=3)
ax.set_xticks(x, labels)
ax.set_ylabel("%")
ax.set_title(f"SynthPedes test ({profile} profile, {len(seeds)} seed(s))")
ax.legend()
save_figure(fig, figdir / "comparison_r1_map")
plt.show()

# %% [markdown]
# ## 5 · Accuracy against inference cost
# R1 (± std over seeds) against the measured milliseconds per query, gallery encoding included (log
# scale; the clock of section 3). The dashed line joins the methods no other method beats on both axes.

# %%
front = cmp.pareto_front(ms, {label: mean[label]["R1"] for label in labels})
markers = {"separate encoding": "o", "pairwise": "s", "re-ranking": "^"}
fig, ax = plt.subplots(figsize=(6.5, 4))
for label in labels:
    kind = "re-ranking" if "re-ranking" in INFERENCE[label] else "pairwise" if "pairwise" in INFERENCE[label] \
        else "separate encoding"
    ax.errorbar(ms[label], mean[label]["R1"], yerr=std[label]["R1"], fmt=markers[kind], ms=8, capsize=3,
                label=f"{label} ({kind})")
    ax.annotate(label, (ms[label], mean[label]["R1"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
ax.plot([ms[lb] for lb in front], [mean[lb]["R1"] for lb in front], "k--", lw=0.8, zorder=0)
ax.set_xscale("log")
ax.set(xlabel=f"inference ms per query, {clock} clock (encode gallery + query, score, re-rank)", ylabel="R1 (%)",
       title=f"accuracy vs inference cost ({profile}, {device}, {torch.get_num_threads()} thread(s))")
ax.legend(fontsize=7)
save_figure(fig, figdir / "accuracy_vs_cost")
plt.show()

# %% [markdown]
# ## 6 · Which queries fail (SynthPedes ground truth)
# Every test caption comes with its attribute spans, and every identity belongs to a *family* whose
# members differ in one or two attributes (often a small one: shoe colour, bag, hat, glasses, a held
# object). From these alone (no model involved) each query gets three labels:
#
# * **items mentioned**: how many of upper body, lower body, shoes, hat, glasses, hair, bag and held
#   object the caption mentions;
# * **separates from family**: whether the caption states an attribute in which the person differs
#   from *all*, *some* or *none* of their family members in the gallery (with *none*, the caption fits
#   a family member as well as the person);
# * **distinguishing attribute**: the kind of the stated attributes that tell the person apart from a
#   family member (small item, garment, hair / person, mixed, or not stated).
#
# R1 per group (mean over seeds; *n* queries per group):

# %%
if gt is None:
    print(f"no ground truth for {dataset}: the breakdown needs SynthPedes")
else:
    GROUPINGS = {"items mentioned": ("items_group", ["≤3 items", "4 items", "≥5 items"]),
                 "separates from family": ("separates", ["all", "some", "none", "no family"]),
                 "distinguishing attribute": ("distinguishing", ["small item", "garment", "hair / person",
                                                                 "mixed", cmp.NOT_STATED])}
    hit1 = {label: [run["outcomes"]["R1"].to_numpy() for run in runs[label]] for label in labels}
    parts = {name: cmp.breakdown(hit1, queries[col], order) for name, (col, order) in GROUPINGS.items()}
    by_group = pd.concat(parts, names=["grouping", "group"]).round(1)
    save_table(by_group, figdir / "r1_by_query_group")
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 3.4), sharey=True)
    for ax, (name, part) in zip(axes, parts.items()):
        part[labels].plot.bar(ax=ax, rot=0, legend=ax is axes[0], width=0.8)
        ax.set_xticks(range(len(part)), [f"{g}\n(n={n})" for g, n in zip(part.index, part["n"])], fontsize=7)
        ax.set(title=name, xlabel="", ylabel="R1 (%)")
    save_figure(fig, figdir / "r1_by_query_group")
    plt.show()
    display(by_group)

# %% [markdown]
# **Who takes the top-1 place when it is wrong?** A family member (the hard negative) or an unrelated
# person. *Chance* is the share of family members among the other identities' gallery images: the
# family share a method would get if its wrong top-1 were a random wrong image.

# %%
if gt is not None:
    chance = cmp.family_share_of_negatives(queries["pid"], queries["family"], [r.pid for r in test], gallery_family)
    errors = pd.DataFrame({label: cmp.top1_errors([run["outcomes"] for run in runs[label]], chance)
                           for label in labels}).T.round(1)
    errors.index.name = "method"
    save_table(errors, figdir / "top1_errors")
    display(errors)

# %% [markdown]
# **Family pairs: small item or garment?** For every query and every other member of its family in the
# gallery: does the person's best-ranked image come before every image of that family member? Grouped
# by what the caption states of their difference. With the difference *not stated* the caption fits
# both people and 50% is what a method can expect; a stated difference is something to read off the
# image: a small item (shoes, bag, hat, glasses, held object) or a garment (upper / lower body type,
# colour, pattern, sleeves).

# %%
if gt is not None:
    wins = {label: [run["pair_wins"] for run in runs[label]] for label in labels}
    pair_order = ["small item", "garment", "hair / person", "mixed", cmp.NOT_STATED]
    stated = cmp.breakdown(wins, pairs["stated"], pair_order)
    pair_table = pd.concat({"all pairs": cmp.breakdown(wins, ["all"] * len(pairs)), "stated difference": stated},
                           names=["pairs", "group"])
    save_table(pair_table.round(1), figdir / "family_pairs")
    display(pair_table.round(1))

# %% [markdown]
# ## 7 · Retrieval examples
# The same test queries for every method, chosen from the ground truth (`cmp.example_queries`): the
# first whose caption tells the person from a family member only by small items, the first only by
# garments, the first mentioning the fewest items. Top-5 of the first seed's model; green border: the
# queried person, red: someone else.

# %%
captions = [c for r in test for c in r.captions]
caption_pid = [r.pid for r in test for _ in r.captions]
gallery_pid = [r.pid for r in test]


def thumbnail(g):
    return np.asarray(Image.open(test[g].image_path).convert("RGB"))


for n, q in enumerate(examples):
    tops = [runs[label][0]["top"][q] for label in labels]
    what = "" if gt is None else (f" — {queries['items'][q]} items; separates from family: "
                                  f"{queries['separates'][q]}; by: {queries['distinguishing'][q]}")
    fig = retrieval_grid([captions[q]] + [""] * (len(labels) - 1), [[thumbnail(g) for g in top] for top in tops],
                         [[gallery_pid[g] == caption_pid[q] for g in top] for top in tops], row_labels=labels)
    fig.suptitle(f"query {q}{what}", fontsize=9, y=1.01)
    path = save_figure(fig, figdir / f"retrieval_example_{n + 1}")
    plt.close(fig)
    display(PNG(filename=str(path)))  # the saved PNG: a 36-panel figure is not drawn twice

# %% [markdown]
# ## 8 · What this run shows
# Every sentence below is computed from this run's numbers; a difference is called clear only when it
# exceeds two standard errors (over seeds for the overall metrics, over queries or pairs for the
# breakdowns).

# %%
def fmt(label):
    return f"{label} ({mean[label]['R1']:.1f})"


def span(values):
    lo, hi = float(np.min(values)), float(np.max(values))
    return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f}"


def seed_se(label, k="R1"):
    return std[label][k] / np.sqrt(len(seeds)) if len(seeds) > 1 else 0.0


r1 = {label: mean[label]["R1"] for label in labels}
order = sorted(labels, key=r1.get, reverse=True)
paper_order = sorted(labels, key=lambda lb: PAPERS[lb]["CUHK-PEDES"][0], reverse=True)
chance_r1 = 100 * float(np.mean([gallery_pid.count(p) for p in caption_pid])) / len(test)  # E[positives] / G
best = order[0]
ranked = fmt(order[0]) + "".join((" = " if f"{r1[a]:.1f}" == f"{r1[b]:.1f}" else " > ") + fmt(b)
                                 for a, b in zip(order, order[1:]))
lines = [f"- R1 on the SynthPedes {profile} test split ({len(seeds)} seed(s)): " + ranked
         + f"; a random ranking gives about {chance_r1:.1f}."]
leaders = [lb for lb in order if f"{r1[lb]:.1f}" == f"{r1[best]:.1f}"]
close = [lb for lb in order if lb not in leaders
         and not cmp.clearly_differs(r1[best], seed_se(best), r1[lb], seed_se(lb))]
lines.append(f"- {' and '.join(leaders)} {'lead' if len(leaders) > 1 else 'leads'}; "
             + (f"not clearly ahead of {', '.join(close)} (within two standard errors over seeds"
                + (")." if len(seeds) > 1 else "; one seed gives no spread).") if close
                else "clearly ahead of every other method." if len(leaders) < len(labels) else ""))
lines.append("- Reported R1 on CUHK-PEDES orders them " + " > ".join(paper_order) + "; the order here "
             + ("is the same." if order == paper_order else "differs (CPU-sized models fine-tuned from the "
                "zoo's small members on synthetic data, not the papers' pre-trained backbones on real photos)."))
if "irra" in labels:
    place = order.index("irra") + 1
    epochs = {lb: get_config(lb.split("-")[0], profile).train.epochs for lb in (best, "irra")}
    lines.append(f"- IRRA, today's reference, {'tops' if place == 1 else f'ranks {place} of {len(order)} in'} this "
                 f"comparison ({fmt('irra')} vs {fmt(best)}). It starts from {STARTS['irra']} and trains "
                 f"{epochs['irra']} epochs; {best} starts from {STARTS[best]} and trains {epochs[best]}. "
                 + ("" if place == 1 else "The aligned member is pre-trained on a corpus shifted away from the "
                    "benchmark (the CLIP role), the image-only members on the benchmark's own generator "
                    "(the ImageNet role), so here the image-only warm starts carry more of the benchmark: "
                    "their attribute probes and the aligned member's zero-shot R1 are in notebook 00."))
cheap, dear = min(ms, key=ms.get), max(ms, key=ms.get)
lines.append(f"- Inference ({clock} clock): {cheap} is the cheapest at {ms[cheap]:.3f} ms/query, {dear} the dearest "
             f"at {ms[dear]:.3f} ms/query ({ms[dear] / ms[cheap]:.0f}×). Not beaten on both accuracy and cost: "
             + ", ".join(front) + ".")
if "cada-L" in labels:
    d = r1["cada-L"] - r1["cada-G"]
    clear = cmp.clearly_differs(r1["cada-L"], seed_se("cada-L"), r1["cada-G"], seed_se("cada-G"))
    lines.append(f"- CADA's re-ranking changes R1 by {d:+.1f} points ({'a clear' if clear else 'not a clear'} "
                 f"difference) at {ms['cada-L'] / ms['cada-G']:.1f}× the cost per query; the paper reports "
                 f"+{PAPERS['cada-L']['CUHK-PEDES'][0] - PAPERS['cada-G']['CUHK-PEDES'][0]:.2f} on CUHK-PEDES.")
if gt is not None:
    def gap_sentence(part, a, b, what):
        se = part.attrs["se"]
        lower = [lb for lb in labels if part.loc[a, lb] < part.loc[b, lb]]
        clear = [lb for lb in labels if cmp.clearly_differs(part.loc[a, lb], se[lb][a], part.loc[b, lb], se[lb][b])]
        return (f"- {what}: R1 on '{a}' (n={part.loc[a, 'n']}) is below '{b}' (n={part.loc[b, 'n']}) for "
                f"{len(lower)} of {len(labels)} methods; clearly different for "
                + (", ".join(f"{lb} ({part.loc[a, lb]:.0f} vs {part.loc[b, lb]:.0f})" for lb in clear) or "none")
                + ".")
    items = parts["items mentioned"]
    if {"≤3 items", "≥5 items"} <= set(items.index):
        lines.append(gap_sentence(items, "≤3 items", "≥5 items", "Captions mentioning few items"))
    sep = parts["separates from family"]
    if {"none", "all"} <= set(sep.index):
        lines.append(gap_sentence(sep, "none", "all", "Captions that fit a family member as well"))
    fam, ch = errors["family share of wrong top-1 (%)"], errors["chance family share (%)"]
    n_wrong = (100 - errors["top-1 correct (%)"]) / 100 * num_queries * len(seeds)
    above = [lb for lb in labels if fam[lb] - ch[lb] > 2 * np.sqrt(ch[lb] * (100 - ch[lb]) / max(n_wrong[lb], 1))]
    lines.append(f"- Wrong top-1 images are family members in {span(fam)}% of the errors, against a chance share of "
                 f"{span(ch)}%; clearly above chance (binomial, two standard errors) for "
                 f"{len(above)} of {len(labels)} methods" + (f": {', '.join(above)}." if above else "."))
    st, se = stated, stated.attrs["se"]
    for kind in ("small item", "garment"):
        if kind in st.index and cmp.NOT_STATED in st.index:
            above = [lb for lb in labels if cmp.clearly_differs(st.loc[kind, lb], se[lb][kind],
                                                                 st.loc[cmp.NOT_STATED, lb], se[lb][cmp.NOT_STATED])
                     and st.loc[kind, lb] > st.loc[cmp.NOT_STATED, lb]]
            lines.append(f"- Family pairs told apart by a stated {kind} (n={st.loc[kind, 'n']}): the person ranks "
                         f"first {span(st.loc[kind, labels])}% of the time (unstated differences: "
                         f"{span(st.loc[cmp.NOT_STATED, labels])}%); clearly above the unstated case for "
                         + (", ".join(above) or "none") + ".")
    if {"small item", "garment"} <= set(st.index):
        harder = [lb for lb in labels if st.loc["small item", lb] < st.loc["garment", lb]]
        clear = [lb for lb in harder if cmp.clearly_differs(st.loc["small item", lb], se[lb]["small item"],
                                                             st.loc["garment", lb], se[lb]["garment"])]
        lines.append(f"- A stated small-item difference is used less well than a garment difference by "
                     f"{len(harder)} of {len(labels)} methods (clearly: {', '.join(clear) or 'none'}).")
text = "\n".join(lines)
figdir.mkdir(parents=True, exist_ok=True)
(figdir / "conclusions.md").write_text(f"# Comparison ({profile} profile, {dataset})\n\n{text}\n")
display(Markdown(text))

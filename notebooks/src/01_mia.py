# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · MIA — Multi-granularity Image-text Alignments (Niu et al., TIP 2020)
#
# MIA scores an (image, description) pair at three granularities and adds the scores (Eq. 18):
#
# | module | aligns | score |
# |---|---|---|
# | **GC** Global Contrast | pooled CNN vector `I` ↔ Bi-GRU sentence vector `T` | `s_G = cos(I, T)` |
# | **RGA** Relation-guided Global-local Alignment | `T` weights the 6 horizontal image parts; `I` weights the noun phrases | `s_R = (s_I + s_T) / 2` |
# | **BFM** Bi-directional Fine-grained Matching | each phrase attends over the parts (P→N), each part over the phrases (N→P) | `s_L = (s_P + s_N) / 2` |
#
# `s_F = s_G + λ1·s_R + λ2·s_L`. Training is a three-step schedule: (1) identity loss on the global
# text path with the CNN frozen, (2) identity + sum-of-hinges matching losses on everything of GC and RGA,
# (3) only the two BFM MLPs with the BFM matching losses. The model is `tbpr/papers/mia/model.py`,
# its training steps and scoring are `tbpr/papers/mia/recipe.py`, its profiles and ablation rows
# `tbpr/papers/mia/paper.yaml`. Every number below is computed in this run on SynthPedes, whose
# generator knows where each attribute is drawn and which words describe it.

# %% tags=["parameters"]
profile = "quick"
dataset = "synthpedes"
data_root = None
seeds = None
headline_seeds = None
device = "cpu"
out_dir = "../figures"

# %%
import json
import textwrap
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.patches import Rectangle
from PIL import Image

from tbpr import experiments
from tbpr.data.datasets import EvalSet
from tbpr.evaluate import encode_split
from tbpr.papers import (ablation_rows, comparisons, count_parameters, create_model, get_config, paper_numbers,
                         parameter_table)
from tbpr.papers.mia.model import fuse
from tbpr.papers.mia.recipe import run_scores, scoring_metrics, split_eval_overrides
from tbpr.stats import conclusion_lines, method_note
from tbpr.viz import ablation_table, plot_history, retrieval_grid, save_figure, save_table, verdicts

START = time.time()
if device == "cpu" and profile == "smoke":
    torch.set_num_threads(1)  # smoke-sized ops are too small for a second thread to pay off
seeds = experiments.default_seeds(profile) if seeds is None else list(seeds)
headline_seeds = experiments.headline_seeds(profile, seeds, headline_seeds)  # MIA vs GC (Table II)
OUT = Path(out_dir) / "mia"
OUT.mkdir(parents=True, exist_ok=True)
root = experiments.resolve_data_root(dataset, data_root, profile)
records = experiments.load_records(dataset, root)
test = records["test"]
RUN = dict(profile=profile, dataset=dataset, data_root=data_root, device=device, progress=False)
print(f"profile={profile}  seeds={seeds} (headline rows {headline_seeds})  data={root}")

# %% [markdown]
# ## 1. Shapes through the model
# The paper's profile (VGG-16, 384×128 images, widths 1024) beside the profile trained here. The CNN
# map size is measured by running the trunk on the `meta` device (no memory is allocated).

# %%
def shape_rows(cfg):
    with torch.device("meta"):
        model = create_model("mia", config=cfg, device="meta")
        fmap = model.cnn(torch.empty(1, 3, *cfg.data.image_size))
    B, n, D = cfg.data.batch_size, cfg.num_parts, cfg.embed_dim
    return {"image": f"[{B}, 3, {cfg.data.image_size[0]}, {cfg.data.image_size[1]}]",
            "CNN map F": f"[{B}, {fmap.shape[1]}, {fmap.shape[2]}, {fmap.shape[3]}]",
            "global I (GC)": f"[{B}, {D}]", "parts p (1x1 conv + 6 stripes)": f"[{B}, {n}, {cfg.part_dim}]",
            "P~ / P^ (MLP-V-RGA / -BFM)": f"[{B}, {n}, {D}]",
            "words -> Bi-GRU": f"[{B}, L, {cfg.word_dim}] -> [{B}, {2 * cfg.gru_hidden}]",
            "sentence T (GC)": f"[{B}, {D}]", "phrases N (m per caption)": f"[m, {D}]",
            "s_G, s_I, s_T, s_P, s_N": f"[{B}, {B}] per batch (pairwise)"}


cfg_paper, cfg_here = get_config("mia", "paper"), get_config("mia", profile)
pd.DataFrame({"paper": shape_rows(cfg_paper), profile: shape_rows(cfg_here)})

# %% [markdown]
# ## 2. Parameters at the paper's size
# The paper does not state a parameter count, so there is no number to set beside ours; the count
# follows from the dimensions it gives (vocabulary 9,408 words + `<pad>` + `<unk>`, 11,003 training
# identities). The ID classifier is training-only.

# %%
# NBVAL_CHECK_OUTPUT
sizes = {}
for label, overrides in {"VGG-16 (Tables II-VI)": {}, "ResNet-50 (Table VII)": {"cnn": "resnet50"}}.items():
    model = create_model("mia", "paper", device="meta", **overrides)
    sizes[label] = {**parameter_table(model), "total": count_parameters(model)}
params = pd.DataFrame(sizes).fillna(0).astype(int)
params.loc["total at test time (no id_cls)"] = params.loc["total"] - params.loc["id_cls"]
save_table(params, OUT / "parameters")
params.map(lambda n: f"{n / 1e6:.2f} M")

# %% [markdown]
# ## 3. Training MIA at this profile
# Three steps (after a short stage 0 that pre-trains the small CNN on image identities, standing in for
# ImageNet on CPU). Curves are seed 0; epochs are counted across the steps. Every training configuration
# this notebook reads (MIA and each ablation row, per seed) trains in this cell, in one pool of workers.
# The two models of the headline comparison (MIA and GC, Table II) train at `headline_seeds`.

# %%
# Table 7 swaps in ImageNet CNNs: paper scale only, not run at the CPU profiles
TABLES = ["table2_ablation", "table3_step_training", "table4_objectives", "table5_step_combination",
          "table6_phrases", "table8_lambda1", "table9_lambda2"]
# every distinct training configuration of MIA and of every table (section 5), trained once per seed,
# all in one pool of worker processes (cached); rows that differ only in scoring share a run
train_configs = {"{}": {}}
for table in TABLES:
    for overrides in ablation_rows("mia", table).values():
        train = split_eval_overrides(overrides)[0]
        train_configs.setdefault(json.dumps(train, sort_keys=True), train)
names = {key: f"cfg{i}" for i, key in enumerate(train_configs)}
HEADLINE = comparisons("mia")["headline"]
headline_train = {json.dumps(split_eval_overrides(ablation_rows("mia", HEADLINE["table"])[row])[0], sort_keys=True)
                  for row in (HEADLINE["full"], HEADLINE["baseline"])}
config_seeds = {names[k]: headline_seeds if k in headline_train else seeds for k in train_configs}
runs = experiments.run_many("mia", {names[k]: v for k, v in train_configs.items()}, seeds=config_seeds, **RUN)
print(f"{len(train_configs)} training configurations x {len(seeds)} seeds; "
      f"{sum(r.train_seconds for rs in runs.values() for r in rs):.0f} s of training (0 when cached)")
mia_runs = runs[names["{}"]]
history, offset = [], 0
for stage in dict.fromkeys(h["stage"] for h in mia_runs[0].history):
    logs = [h for h in mia_runs[0].history if h["stage"] == stage]
    history += [{**h, "epoch": offset + h["epoch"]} for h in logs]
    offset += len(logs)
fig = plot_history(history)
for h in history:
    if h["epoch"] > 1 and h["stage"] != history[h["epoch"] - 2]["stage"]:
        for ax in fig.axes[:2]:
            ax.axvline(h["epoch"] - 0.5, color="grey", ls=":", lw=1)
save_figure(fig, OUT / "training_curves")
print("stages:", {s: sum(1 for h in history if h["stage"] == s) for s in dict.fromkeys(h["stage"] for h in history)},
      "| train seconds per run:", [round(r.train_seconds, 1) for r in mia_runs])

# %% [markdown]
# ## 4. Retrieval metrics (text → image, test split)

# %%
PAPER_MIA = paper_numbers("mia", "table7_backbone")["VGG-16"]  # the paper's MIA (VGG-16), Table VII
main = ablation_table({"MIA (ours)": [r.metrics for r in mia_runs]}, {"MIA (ours)": PAPER_MIA})
n_ids = len({r.pid for r in test})
save_table(main, OUT / "metrics")
print(f"{len(test)} gallery images of {n_ids} identities: chance R1 ≈ {100 / n_ids:.1f}%; "
      "paper = CUHK-PEDES, VGG-16")
main

# %% [markdown]
# ## 5. Every ablation table of the paper
# Each row is an override in `tbpr/papers/mia/paper.yaml`, beside the paper's own numbers for it (its
# `paper:` entry, read with `tbpr.papers.paper_numbers`). Rows that differ only in the scoring
# (`score`, `lambda1`, `lambda2`: "MIA (G)", the λ sweeps) re-score one trained model, as in the paper,
# from the component scores `s_G, s_I, s_T, s_P, s_N` its own evaluation kept in its run folder
# (`tbpr.papers.mia.recipe.run_scores`): each trained model is encoded and scored pair by pair once.
# Table VII (ImageNet VGG-16 / ResNet-50 at CUHK-PEDES scale) is not runnable on CPU.

# %%
PAPER = {table: paper_numbers("mia", table) for table in TABLES}  # R@1, R@5, R@10 as printed
assert all(set(PAPER[t]) == set(ablation_rows("mia", t)) for t in TABLES), "a row without the paper's numbers"

_models = {}


def trained(result):
    """A run's trained model, loaded once."""
    if result.key not in _models:
        _models[result.key] = result.load_model(device)
    return _models[result.key]


def scored(result):
    """(model, pairwise scores {"G", "I", "T", "P", "N"}, eval set) of a run's test split: the scores
    its evaluation kept (read, not computed again; not held, one run's scores take ~70 MB at quick)."""
    model = trained(result)
    return (model, *run_scores(model, test, result.run_dir, device=device))


# every scoring each trained model is read under, then every (run, scoring) from one read of its scores
scorings = {}
for table in TABLES:
    for overrides in ablation_rows("mia", table).values():
        train, scoring = split_eval_overrides(overrides)
        scorings.setdefault(json.dumps(train, sort_keys=True), {})[json.dumps(scoring, sort_keys=True)] = scoring
rescored = {}
for train, wanted in scorings.items():
    for result in runs[names[train]]:
        model, scores, eval_set = scored(result)
        for name, scoring in wanted.items():
            rescored[result.key, name] = scoring_metrics(model, scores, eval_set, per_query=True, **scoring)
print(f"{len(rescored)} (trained model, scoring) pairs from the stored scores of "
      f"{len({key for key, _ in rescored})} trained models")


def row_metrics(overrides):
    """The row's metrics per seed of its trained model (rows of the headline models: headline_seeds),
    with their values per query for the verdicts."""
    train, scoring = split_eval_overrides(overrides)
    results = runs[names[json.dumps(train, sort_keys=True)]]
    return [rescored[r.key, json.dumps(scoring, sort_keys=True)] for r in results]


tables, ours = {}, {}
for table in TABLES:
    ours[table] = {label: row_metrics(ov) for label, ov in ablation_rows("mia", table).items()}
    tables[table] = ablation_table(ours[table], PAPER[table], metrics=("R1", "R5", "R10", "mAP", "mINP"), decimals=1)
    save_table(tables[table], OUT / table)

# %%
tables["table2_ablation"]

# %%
tables["table3_step_training"]

# %%
tables["table4_objectives"]

# %%
tables["table5_step_combination"]

# %%
tables["table6_phrases"]

# %%
tables["table8_lambda1"]

# %%
tables["table9_lambda2"]

# %% [markdown]
# ### Verdicts
# In each table the reference row (MIA, or the paper's chosen setting: Id / Id + Mat, step training,
# noun phrases, λ1 = 1.0, λ2 = 0.5) against every other row, paired by seed and test query
# (`tbpr.stats`); the headline (★, MIA against GC) at `headline_seeds`. Rows whose paper numbers equal
# the reference's (the identities below) have no direction to reproduce.

# %%
verdict_table, verdict_records = verdicts("mia", ours, OUT)
print(method_note())
verdict_table

# %% [markdown]
# ### Identities the paper's numbers imply
# Step 3 trains only the BFM MLPs, so "MIA (G)" must equal "GC + RGA (G)", "MIA (R)" equal "GC + RGA (R)"
# and MIA at λ1 = 1, λ2 = 0 equal GC + RGA. MIA here is trained from scratch, not branched from the
# GC + RGA checkpoint: the identities hold only because steps 0-2 are deterministic and identical.

# %%
def model_run(train_overrides, seed_index):
    return runs[names[json.dumps(train_overrides, sort_keys=True)]][seed_index]


def model_scores(train_overrides, seed_index):
    return scored(model_run(train_overrides, seed_index))


_encoded = {}


def model_features(train_overrides, seed_index):
    """(model, text feats, image feats) of a trained model's test split, for the figures; encoded once."""
    result = model_run(train_overrides, seed_index)
    if result.key not in _encoded:
        model = trained(result)
        text, image, _ = encode_split(model, test, model.cfg.data, device=device, progress=False)
        _encoded[result.key] = (model, text, image)
    return _encoded[result.key]


identity_checks = {}
for i, seed in enumerate(seeds):
    (mia, s_mia, ev), (gc_rga, s_gc_rga, _) = model_scores({}, i), model_scores({"bfm": "off"}, i)
    identity_checks[f"seed {seed}"] = {
        "s_G(MIA) == s_G(GC+RGA)": torch.equal(s_mia["G"], s_gc_rga["G"]),
        "s_R(MIA) == s_R(GC+RGA)": torch.equal(s_mia["I"], s_gc_rga["I"]) and torch.equal(s_mia["T"], s_gc_rga["T"]),
        "MIA(λ1=1, λ2=0) == GC+RGA": scoring_metrics(mia, s_mia, ev, lambda1=1.0, lambda2=0.0)
        == scoring_metrics(gc_rga, s_gc_rga, ev),
        "MIA(λ1=λ2=0) == MIA (G)": scoring_metrics(mia, s_mia, ev, lambda1=0.0, lambda2=0.0)
        == scoring_metrics(mia, s_mia, ev, score="G")}
identities = pd.DataFrame(identity_checks)
save_table(identities, OUT / "identities")
identities

# %% [markdown]
# ## 6. Figures from the model's internals
# Parts are the 6 horizontal stripes of the image (stripe k covers rows [(k-1)·H/6, k·H/6)). Colours as in
# the paper: red = largest weight, yellow = second; in Fig. 7(a) green / blue = second smallest / smallest.

# %%
eval_set = EvalSet(test)
caption_record = eval_set.caption_image_idx.tolist()
first_caption = {}
for j, i in enumerate(caption_record):
    first_caption.setdefault(i, j)
gt = None
if dataset == "synthpedes":
    from tbpr.synthpedes import load_ground_truth
    gt = load_ground_truth(root)


def display_image(i):
    return np.asarray(Image.open(eval_set.image_paths[i]).convert("RGB"))


def colour_stripes(ax, image, weights, ranks=("red", "yellow", None, None, "green", "blue"), values=True):
    """Draw ``image`` with its stripes filled by the rank of ``weights`` (largest first)."""
    ax.imshow(image)
    H, n = image.shape[0], len(weights)
    for rank, k in enumerate(np.argsort(-np.asarray(weights))):
        colour = ranks[rank] if rank < len(ranks) else None
        if colour:
            ax.add_patch(Rectangle((0, k * H / n), image.shape[1] - 1, H / n, color=colour, alpha=0.35, lw=0))
        if values:
            ax.text(2, (k + 0.6) * H / n, f"{weights[k]:.2f}", fontsize=7, color="white",
                    bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0))
    ax.set_xticks([])
    ax.set_yticks([])


def phrases_of(model, j):
    return [text for _, _, text in model.phrases_of(eval_set.captions[j])]


examples = [first_caption[i] for i in list(first_caption)[: 4 if profile != "smoke" else 2]]

# %% [markdown]
# ### Fig. 7(a) — relation attention of RGA (I→T, Eq. 6), model "GC + RGA"
# For each description and its own image, the stripes ranked by `v_k`. Under the image: the phrases
# whose BFM arg-max part is one of the two top stripes (the paper underlines these words by hand).

# %%
rga_model, rga_text, rga_image = model_features({"bfm": "off"}, 0)
mia_model, mia_text, mia_image = model_features({}, 0)
fig, axes = plt.subplots(1, len(examples), figsize=(3.1 * len(examples), 5.2), squeeze=False)
for ax, j in zip(axes[0], examples):
    i = caption_record[j]
    with torch.no_grad():
        v = rga_model.relation_attention({"T": rga_text["T"][j:j + 1]}, {"P_rga": rga_image["P_rga"][i:i + 1]})[0, 0]
        alpha = mia_model.phrase_part_attention(mia_text, {"P_bfm": mia_image["P_bfm"][i:i + 1]}, j)[0]
    top2 = set(torch.topk(v, 2).indices.tolist())
    linked = [p for p, k in zip(phrases_of(mia_model, j), alpha.argmax(-1).tolist()) if k in top2]
    colour_stripes(ax, display_image(i), v.numpy())
    ax.set_xlabel(textwrap.fill(eval_set.captions[j], 34) + "\n→ " + textwrap.fill(", ".join(linked) or "-", 34),
                  fontsize=7)
fig.suptitle("Fig. 7(a): RGA relation attention v_k (red > yellow > … > green > blue)")
fig.tight_layout()
save_figure(fig, OUT / "fig7a_relation_attention")

# %% [markdown]
# ### Fig. 7(b) — phrase → part matching of BFM (P→N, Eq. 13), model "GC + BFM"

# %%
bfm_model, bfm_text, bfm_image = model_features({"rga": False, "bfm": "joint"}, 0)
j = examples[0]
i = caption_record[j]
with torch.no_grad():
    alpha = bfm_model.phrase_part_attention(bfm_text, {"P_bfm": bfm_image["P_bfm"][i:i + 1]}, j)[0].numpy()
phrases = phrases_of(bfm_model, j)
fig, axes = plt.subplots(1, len(phrases) + 1, figsize=(2.0 * len(phrases) + 3.5, 4.2), squeeze=False,
                         gridspec_kw={"width_ratios": [1] * len(phrases) + [2.2]})
for ax, phrase, a in zip(axes[0], phrases, alpha):
    colour_stripes(ax, display_image(i), a, ranks=("red", "yellow"), values=False)
    ax.set_title(textwrap.fill(phrase, 16), fontsize=8)
heat = axes[0, -1]
heat.imshow(alpha.T, cmap="viridis", aspect="auto")
heat.set(xticks=range(len(phrases)), yticks=range(alpha.shape[1]), ylabel="stripe (top = 0)", title="α (phrase × stripe)")
heat.set_xticklabels([textwrap.shorten(p, 14) for p in phrases], rotation=60, fontsize=7)
fig.suptitle(textwrap.shorten(eval_set.captions[j], 110), fontsize=8)
fig.tight_layout()
save_figure(fig, OUT / "fig7b_phrase_part_matching")

# %% [markdown]
# ### Fig. 8 — retrieval by GC, GC + BFM, GC + RGA and MIA (top 10, green = same identity)

# %%
FIG8_MODELS = {"GC": {"rga": False, "bfm": "off"}, "GC + BFM": {"rga": False, "bfm": "joint"},
               "GC + RGA": {"bfm": "off"}, "MIA": {}}
fused = {}
for label, train in FIG8_MODELS.items():
    model, scores, _ = model_scores(train, 0)
    fused[label] = fuse(scores, model.cfg.score, model.cfg.lambda1, model.cfg.lambda2)
first_hit = {}
for label, s in fused.items():
    order = s.argsort(dim=1, descending=True)
    hits = eval_set.image_pids[order] == eval_set.caption_pids[:, None]
    first_hit[label] = hits.float().argmax(1) + 1
# queries where MIA finds the person in its top 10 and GC does not, else any query
better = ((first_hit["MIA"] <= 10) & (first_hit["GC"] > first_hit["MIA"])).nonzero().flatten().tolist()
queries = (better or list(range(len(eval_set.captions))))[:2]
for q in queries:
    top = {label: s[q].argsort(descending=True)[:10] for label, s in fused.items()}
    fig = retrieval_grid(eval_set.captions[q], [torch.stack([torch.from_numpy(display_image(g)) for g in idx.tolist()])
                                                .permute(0, 3, 1, 2).float() / 255 for idx in top.values()],
                         [(eval_set.image_pids[idx] == eval_set.caption_pids[q]).tolist() for idx in top.values()],
                         row_labels=list(top), image_kwargs=dict(mean=(0, 0, 0), std=(1, 1, 1)))
    save_figure(fig, OUT / f"fig8_retrieval_query{q}")
    i = caption_record[q]
    with torch.no_grad():
        v = rga_model.relation_attention({"T": rga_text["T"][q:q + 1]}, {"P_rga": rga_image["P_rga"][i:i + 1]})[0, 0]
    fig, ax = plt.subplots(figsize=(1.8, 4.2))
    colour_stripes(ax, display_image(i), v.numpy())
    ax.set_title("GT + RGA v_k", fontsize=8)
    save_figure(fig, OUT / f"fig8_ground_truth_query{q}")
    print(f"query {q}: rank of the first correct image —",
          ", ".join(f"{label} {int(first_hit[label][q])}" for label in fused))

# %% [markdown]
# ### Fig. 9 — failure cases of MIA (first correct image below rank 10)

# %%
ranks = first_hit["MIA"]
failures = (ranks > 10).nonzero().flatten().tolist()
fig, ax = plt.subplots(figsize=(5, 2.8))
ax.hist(ranks.numpy(), bins=np.arange(1, int(ranks.max()) + 2) - 0.5 if ranks.max() < 60 else 40)
ax.axvline(10.5, color="red", ls="--")
ax.set(xlabel="rank of the first correct image (MIA)", ylabel="queries", title=f"{len(failures)} of {len(ranks)} queries beyond rank 10")
save_figure(fig, OUT / "fig9_first_correct_rank")
for q in failures[:2]:
    idx = fused["MIA"][q].argsort(descending=True)[:10]
    fig = retrieval_grid(eval_set.captions[q], torch.stack([torch.from_numpy(display_image(g)) for g in idx.tolist()])
                         .permute(0, 3, 1, 2).float() / 255,
                         (eval_set.image_pids[idx] == eval_set.caption_pids[q]).tolist(),
                         row_labels=[f"MIA, first correct at {int(ranks[q])}"], image_kwargs=dict(mean=(0, 0, 0), std=(1, 1, 1)))
    save_figure(fig, OUT / f"fig9_failure_query{q}")

# %% [markdown]
# ## 7. Checking the figures against SynthPedes ground truth
# The generator records, for each caption, which characters name which attribute and in which body
# region it is drawn (a box in the 384×128 render). A stripe **covers** a region when at least half of
# the stripe's rows lie inside the region's box; chance = the share of stripes that cover it.
#
# - **Fig. 7(b)**: for every test phrase that names an attribute, does the stripe with the largest BFM
#   weight `α` cover that attribute's region?
# - **Fig. 7(a)**: the paper says the stripes of attributes the description does not mention get the
#   smallest RGA weights. For captions that leave some stripes uncovered by every mentioned region: is
#   the smallest-`v` stripe one of those, and the largest-`v` stripe a mentioned one?
# - **Fig. 9**: do failed queries mention fewer attributes ("incomplete coverage")?

# %%
def covered(regions, n=6, height=384):
    """[n] bool: stripes with >= 1/2 of their rows inside any of the boxes."""
    out = np.zeros(n, bool)
    for x0, y0, x1, y1 in regions:
        for k in range(n):
            top, bottom = k * height / n, (k + 1) * height / n
            out[k] |= max(0.0, min(bottom, y1) - max(top, y0)) >= height / n / 2
    return out


def caption_gt(j):
    i = caption_record[j]
    record = test[i]
    return gt.images[record.file_path], gt.captions[(record.file_path, j - first_caption[i])]


def phrase_part_accuracy(model, text, image):
    hits = chance = total = 0
    for j in range(len(eval_set.captions)):
        i = caption_record[j]
        gimg, gcap = caption_gt(j)
        with torch.no_grad():
            best = model.phrase_part_attention(text, {"P_bfm": image["P_bfm"][i:i + 1]}, j)[0].argmax(-1).tolist()
        for (start, end, _), k in zip(model.phrases_of(eval_set.captions[j]), best):
            named = [region for a0, a1, _, region in gcap.attributes if a0 < end and a1 > start and region in gimg.regions]
            if not named:
                continue
            cover = covered([gimg.regions[r] for r in named])
            hits, chance, total = hits + cover[k], chance + cover.mean(), total + 1
    return 100 * hits / max(total, 1), 100 * chance / max(total, 1), total


def relation_check(model, text, image):
    """% of captions whose largest-v stripe is a mentioned one and whose smallest-v stripe is not,
    with the chance rates, over captions that leave at least one stripe unmentioned."""
    top = bottom = top_chance = bottom_chance = n = 0
    for j in range(len(eval_set.captions)):
        i = caption_record[j]
        gimg, gcap = caption_gt(j)
        cover = covered([gimg.regions[r] for *_, r in gcap.attributes if r in gimg.regions])
        if cover.all() or not cover.any():
            continue
        with torch.no_grad():
            v = model.relation_attention({"T": text["T"][j:j + 1]}, {"P_rga": image["P_rga"][i:i + 1]})[0, 0]
        top, bottom = top + cover[int(v.argmax())], bottom + (not cover[int(v.argmin())])
        top_chance, bottom_chance, n = top_chance + cover.mean(), bottom_chance + 1 - cover.mean(), n + 1
    n = max(n, 1)
    return 100 * top / n, 100 * top_chance / n, 100 * bottom / n, 100 * bottom_chance / n, n


checks = {}
if gt is not None:
    for label, train in {"GC + BFM": {"rga": False, "bfm": "joint"}, "MIA": {}}.items():
        per_seed = []
        for s in range(len(seeds)):
            model, text, image = model_features(train, s)
            per_seed.append(phrase_part_accuracy(model, text, image))
        acc, chance, total = np.array(per_seed).mean(0)
        checks[f"Fig. 7(b) {label}: arg-max stripe covers the phrase's region (%)"] = (acc, chance, int(total))
    per_seed = [relation_check(*model_features({"bfm": "off"}, s)) for s in range(len(seeds))]
    top, top_chance, bottom, bottom_chance, n = np.array(per_seed).mean(0)
    checks["Fig. 7(a) GC + RGA: largest-v stripe is a mentioned one (%)"] = (top, top_chance, int(n))
    checks["Fig. 7(a) GC + RGA: smallest-v stripe is an unmentioned one (%)"] = (bottom, bottom_chance, int(n))
    mentioned = np.array([len({a[2] for a in caption_gt(j)[1].attributes}) for j in range(len(eval_set.captions))])
    fail = (ranks > 10).numpy()
    checks["Fig. 9: attributes mentioned, failed queries"] = (mentioned[fail].mean() if fail.any() else float("nan"),
                                                              mentioned.mean(), int(fail.sum()))
    checks["Fig. 9: attributes mentioned, successful queries"] = (mentioned[~fail].mean(), mentioned.mean(), int((~fail).sum()))
gt_checks = pd.DataFrame(checks, index=["ours", "chance / all queries", "count"]).T
save_table(gt_checks.round(2), OUT / "figure_checks")
gt_checks.round(2)

# %% [markdown]
# ## 8. What this run shows
# Sentences below are generated from the numbers above: the verdicts (paired intervals over seeds and
# queries) and means over seeds.

# %%
lines = [f"- MIA reaches R1 {main.attrs['mean']['MIA (ours)']['R1']:.1f} ± {main.attrs['std']['MIA (ours)']['R1']:.1f} "
         f"on SynthPedes-{profile} (chance ≈ {100 / n_ids:.1f}%; paper {PAPER_MIA['R1']:.1f} on CUHK-PEDES)."]
lines += conclusion_lines(verdict_records)
for table, name in (("table8_lambda1", "λ1"), ("table9_lambda2", "λ2")):
    means = {k: v["R1"] for k, v in tables[table].attrs["mean"].items()}
    paper_r1 = {k: v["R1"] for k, v in PAPER[table].items()}
    best, paper_best = max(means, key=means.get), max(paper_r1, key=paper_r1.get)
    lines.append(f"- {name} sweep: best R1 at {name} = {best} here, {paper_best} in the paper "
                 f"(R1 spread {max(means.values()) - min(means.values()):.1f} here vs "
                 f"{max(paper_r1.values()) - min(paper_r1.values()):.1f}).")
t2, p2 = tables["table2_ablation"].attrs["mean"], PAPER["table2_ablation"]
if t2["MIA (L)"]["R1"] > t2["MIA"]["R1"]:  # why the local-score rows and larger λ2 go the other way here
    lines.append(f"- The local score s_L alone (phrase ↔ part) gives R1 {t2['MIA (L)']['R1']:.1f}, above the fused "
                 f"MIA ({t2['MIA']['R1']:.1f}) and the global s_G ({t2['MIA (G)']['R1']:.1f}); in the paper it is the "
                 f"weakest ({p2['MIA (L)']['R1']:.1f} vs {p2['MIA (G)']['R1']:.1f} and {p2['MIA']['R1']:.1f}). SynthPedes "
                 f"captions name one attribute per body region, drawn independently of the others (notebook 02 "
                 f"measures it), which is what phrase-part matching reads directly: this is where the opposite "
                 f"rows of Tables II-III (L) and the larger best λ2 (Table IX) come from.")
ok = identities.values.all()
lines.append(f"- The paper's identities (MIA (G) = GC + RGA (G), …) {'hold exactly' if ok else 'FAIL'} in every seed.")
if checks:
    acc, chance, _ = checks["Fig. 7(b) MIA: arg-max stripe covers the phrase's region (%)"]
    lines.append(f"- Fig. 7(b): the BFM arg-max stripe covers the phrase's ground-truth region for {acc:.0f}% of "
                 f"phrases (chance {chance:.0f}%) — {'above' if acc > chance + 5 else 'NOT clearly above'} chance.")
    top = checks["Fig. 7(a) GC + RGA: largest-v stripe is a mentioned one (%)"]
    bottom = checks["Fig. 7(a) GC + RGA: smallest-v stripe is an unmentioned one (%)"]
    lines.append(f"- Fig. 7(a): the largest-weight RGA stripe shows a mentioned attribute in {top[0]:.0f}% of captions "
                 f"(chance {top[1]:.0f}%), the smallest-weight stripe an unmentioned one in {bottom[0]:.0f}% "
                 f"(chance {bottom[1]:.0f}%) — the paper's pattern "
                 f"{'reproduces' if top[0] > top[1] + 5 and bottom[0] > bottom[1] + 5 else 'does NOT clearly reproduce'}.")
    f_fail, f_ok = checks["Fig. 9: attributes mentioned, failed queries"][0], checks["Fig. 9: attributes mentioned, successful queries"][0]
    lines.append(f"- Fig. 9: failed queries mention {f_fail:.2f} attributes on average, successful ones {f_ok:.2f}.")
lines.append(f"- Notebook wall time: {time.time() - START:.0f} s.")
conclusions = "\n".join(lines)
(OUT / "conclusions.md").write_text(conclusions + "\n")
print(conclusions)

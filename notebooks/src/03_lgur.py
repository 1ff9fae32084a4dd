# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # LGUR — granularity-unified representations (Shao et al., ACM MM 2022)
#
# A caption says "a red jacket"; the image shows one exact shade of red, its folds and its zip. LGUR
# calls this the **granularity gap** and closes it on top of two independent encoders (a DeiT-Small
# for images; a frozen BERT followed by a trainable Bi-LSTM for text):
#
# 1. **DGA** (Dictionary-based Granularity Alignment). A learnable *Multi-modality Shared Dictionary*
#    𝒟 of atoms is the key/value of one cross-attention block. Words (Eq. 1) and patches (Eq. 2)
#    both query it, so both modalities are rebuilt from the same atoms. A learned **foreground mask**
#    ℳ down-weights background patches, and during training the patches are also rebuilt from the
#    paired caption's words (Eq. 3, **text guidance** G), with a ranking loss tying the two rebuilds.
# 2. **PGU** (Prototype-based Granularity Unification). K shared **prototypes** 𝒫 query the tokens
#    of either modality; each prototype has its own FC head, shared by images and text. Retrieval
#    ranks by the cosine of the concatenated K part features; images and captions are encoded alone.
#
# This notebook trains LGUR on SynthPedes (the synthetic CUHK-PEDES-format dataset whose generator
# knows the person masks, body-part regions and attribute phrases), reproduces the ablation tables
# 5–7 and the figures 3–4 from the model's internals, and checks each figure against ground truth.

# %% tags=["parameters"]
profile = "quick"
dataset = "synthpedes"
data_root = None
seeds = None
headline_seeds = None
device = "cpu"
out_dir = "../figures"

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from tbpr import experiments
from tbpr.cache import FeatureCache
from tbpr.data.datasets import load_eval_images
from tbpr.papers import ablation_rows, count_parameters, create_model, get_config, paper_numbers, parameter_table
from tbpr.stats import conclusion_lines, method_note
from tbpr.viz import (ablation_table, overlay_heatmap, plot_history, save_figure, save_table, to_display_image,
                      to_markdown, verdicts)

torch.set_num_threads(1)  # small tensors: a second thread buys little and hurts on a shared machine
seeds = experiments.default_seeds(profile) if seeds is None else list(seeds)
headline_seeds = experiments.headline_seeds(profile, seeds, headline_seeds)  # LGUR vs the baseline (Table 5)
fig_dir = Path(out_dir) / "lgur"
fig_dir.mkdir(parents=True, exist_ok=True)
root = experiments.resolve_data_root(dataset, data_root, profile)
records = experiments.load_records(dataset, root)
cfg = get_config("lgur", profile)
run_kw = dict(dataset=dataset, data_root=data_root, device=device, progress=False)
print(f"profile={profile}, seeds={seeds} (headline rows {headline_seeds}), data={root}")

# %% [markdown]
# ## 1. The data flow, shape by shape
# One batch of four test pairs goes through the model at this profile; the paper column is the same
# tensor at the paper's sizes (batch 64, 384×128 images, DeiT-S/16 → 24×8 = 192 patches, D = 384,
# 400 atoms, 6 prototypes × 512). L is the longest caption of the batch in WordPiece tokens.

# %%
def shape_walk(model, images, captions):
    """Every tensor of the training forward pass (Eqs. 1-5), by name."""
    with torch.no_grad():
        V = model.visual(images)
        T, pi = model.encode_words(captions)
        M = model.foreground_mask(V)
        T_D = model.reconstruct_text(T, pi)[0]
        V_D = model.reconstruct_visual(V, M)[0]
        V_T = model.text_guided_visual(V, M, T, pi)
        f = model.unify(V_D)[0]
    return {"image I": images, "V = backbone(I)": V, "mask ℳ": M, "T = BiLSTM(BERT(caption))": T,
            "T_𝒟 = Trans(T, 𝒟)  (Eq. 1)": T_D, "V_𝒟 = ℳ⊙Trans(V, 𝒟)  (Eq. 2)": V_D,
            "V_T = ℳ⊙Trans(V, T)  (Eq. 3, train only)": V_T, "f = PGU(·)  (Eq. 4)": f,
            "retrieval vector φ(f)": f.flatten(1)}


paper = get_config("lgur", "paper")
gh, gw = paper.data.image_size[0] // paper.patch_size, paper.data.image_size[1] // paper.patch_size
D, K, Dp = paper.dim, paper.num_prototypes, paper.part_dim
paper_shapes = [(64, 3, *paper.data.image_size), (64, gh * gw, D), (64, gh * gw, 1), (64, "L", D),
                (64, "L", D), (64, gh * gw, D), (64, gh * gw, D), (64, K, Dp), (64, K * Dp)]
model0 = experiments.build_model("lgur", cfg, records["train"]).eval()
test = records["test"]
batch_images = load_eval_images([r.image_path for r in test[:4]], cfg.data)
walk = shape_walk(model0, batch_images, [r.captions[0] for r in test[:4]])
shape_df = pd.DataFrame({"paper": [" × ".join(map(str, s)) for s in paper_shapes],
                         f"{profile} profile": [" × ".join(map(str, t.shape)) for t in walk.values()]},
                        index=list(walk))
shape_df.index.name = "tensor"
save_table(shape_df, fig_dir / "shapes")
display(shape_df)

# %% [markdown]
# ## 2. Parameters at the paper profile
# Built on the `meta` device (no memory, no download). The paper prints no parameter counts; the
# reference column is a budget worked out from the layer sizes of the official code. BERT is frozen.

# %%
# NBVAL_CHECK_OUTPUT
meta = create_model("lgur", "paper", device="meta")
ours = parameter_table(meta)
code_budget = {"visual": "≈19.9 M (DeiT-S, 11 blocks)", "text_encoder": "110 M (BERT, frozen)",
               "bilstm": "≈3.54 M", "dga": "≈1.18 M (Trans)", "pgu": "≈10.2 M (Trans_P)",
               "part_fcs": "≈1.18 M (6 FCs)", "dictionary": "153.6 k (𝒟)", "prototypes": "2.3 k (𝒫)",
               "mask_head": "385 (ℳ)", "classifiers": "≈33.9 M (6 ID classifiers, CUHK)"}
param_df = pd.DataFrame({"ours": {k: f"{v:,}" for k, v in ours.items()}, "official code": code_budget})
param_df.loc["total (trainable)"] = [f"{count_parameters(meta, trainable_only=True):,}", "≈70.0 M"]
param_df.loc["total"] = [f"{count_parameters(meta):,}", "≈180 M"]
param_df.index.name = "component"
save_table(param_df, fig_dir / "parameters_paper_profile")
display(param_df)

# %% [markdown]
# ## 3. Training at this profile
# Every run this notebook reads (the full model and each row of Tables 5–7, per seed) trains first, in
# one pool of worker processes, through `tbpr.experiments` (cached by config hash). The full model
# trains all six loss terms of Eq. 10 — ID and ranking on the raw branch (text-guided image rebuild
# V_T vs words T) and on the dictionary branch (V_𝒟 vs T_𝒟), the textual reconstruction term
# (T vs T_𝒟) and the guidance term L_g. Its curves below are seed 0's. LGUR and the baseline (Table 5
# No. 6 and No. 0, the headline comparison) run at `headline_seeds`, the other rows at `seeds`.

# %%
TABLES = ("table5", "table6", "table7")
t0 = time.perf_counter()
SEEDS = {name: experiments.seeds_by_row("lgur", name, ablation_rows("lgur", name), seeds, headline_seeds)
         for name in TABLES}
experiments.run_tables("lgur", {name: ablation_rows("lgur", name) for name in TABLES}, SEEDS, profile, **run_kw)
main = experiments.run("lgur", profile, seed=seeds[0], **run_kw)
print(f"one run trains in {main.train_seconds:.0f} s; every run of this notebook: "
      f"{time.perf_counter() - t0:.0f} s (≈ 0 when cached)")
fig = plot_history(main.history)
save_figure(fig, fig_dir / "training_curves")
plt.show()

# %%
chance = 100 * np.mean([sum(r.pid == q.pid for r in test) / len(test) for q in test])
metrics_df = pd.DataFrame([{k: main.metrics[k] for k in ("R1", "R5", "R10", "mAP", "mINP")}],
                          index=[f"LGUR ({profile}, seed {seeds[0]})"]).round(2)
metrics_df.loc["chance (expected R1 of a random ranking)"] = [round(chance, 2)] + [np.nan] * 4
paper_lgur = paper_numbers("lgur", "table5")["6 LGUR"]  # = Table 1, DeiT-Small
metrics_df.loc["paper, CUHK-PEDES (DeiT-S)"] = [paper_lgur.get(k, np.nan) for k in metrics_df.columns]
save_table(metrics_df, fig_dir / "metrics")
display(metrics_df)

# %% [markdown]
# **Table 4 (speed).** The paper times the ResNet-50 model on a Titan X at 384×128, batch 64: 886 ms
# per training batch, 26 ms per query (encode the caption, score it against the gallery). Ours are
# measured here, at this profile's sizes, on this machine — a scale reference, not a comparison.

# %%
trained = main.load_model(device)
test_captions = [c for r in test for c in r.captions]
with torch.no_grad():
    gallery = torch.cat([trained.encode_images(load_eval_images([r.image_path for r in test[i:i + 64]],
                                                                 trained.cfg.data).to(device))
                         for i in range(0, len(test), 64)])
    trained._text_cache = FeatureCache("lgur_text", None)  # time the frozen text encoder too, not its cache
    start = time.perf_counter()
    for i in range(0, len(test_captions), 64):
        trained.similarity(trained.encode_texts(test_captions[i:i + 64]), gallery)
    query_ms = 1000 * (time.perf_counter() - start) / len(test_captions)
train_ms = np.mean([1000 * cfg.data.batch_size / h["images_per_s"] for h in main.history])
speed_df = pd.DataFrame({"train (ms / batch)": [f"{train_ms:.0f} (batch {cfg.data.batch_size})", "886 (batch 64)"],
                         "inference (ms / query)": [f"{query_ms:.2f} (gallery {len(test)})",
                                                    "26 (gallery 3,074)"]},
                        index=[f"ours, {profile}, {device}", "paper, ResNet-50, Titan X"])
save_table(speed_df, fig_dir / "table4_speed")
display(speed_df)

# %% [markdown]
# ## 4. Ablations (Tables 5–7), ours as mean ± std over seeds beside the paper's CUHK-PEDES numbers
# Every row is a config override from `tbpr/papers/lgur/paper.yaml`, beside the paper's numbers for it;
# rows shared between tables (e.g. Table 6 "w/ shared" = Table 5 No. 3) are the same cached runs.
# Without PGU the K parts become one max-pooled part; without G the raw visual branch is V itself
# (the paper does not say what replaces them).

# %%
PAPER = {name: paper_numbers("lgur", name) for name in TABLES}  # Table 5: R@1/5/10; Tables 6, 7: R@1/5
tables, runs = {}, {}
for name in TABLES:
    runs[name] = experiments.run_many("lgur", ablation_rows("lgur", name), SEEDS[name], profile, **run_kw)
    tables[name] = ablation_table(experiments.metrics_of(runs[name]), paper=PAPER[name])
    save_table(tables[name], fig_dir / name)
    display(Markdown(f"**{name}**\n\n" + to_markdown(tables[name])))

# %% [markdown]
# ### Verdicts
# In each table the reference row (LGUR; Table 6: the shared dictionary; Table 7: shared prototypes)
# against every other row, paired by seed and test query (`tbpr.stats`); the headline (★, LGUR
# against the baseline) at `headline_seeds`.

# %%
verdict_table, verdict_records = verdicts("lgur", runs, fig_dir)
print(method_note())
display(Markdown(to_markdown(verdict_table)))

# %% [markdown]
# ## 5. Figure 3 — the foreground mask ℳ
# ℳ = σ(V w + b) per patch, learned without any supervision. Overlays use the raw values on a
# fixed 0–1 scale. The check: over the whole test split, the Pearson correlation between ℳ and the
# fraction of each patch covered by the person (from the generator's silhouettes), against two
# references — the same model before training, and the silhouette of another test image.

# %%
def patch_coverage(file_path, region, grid):
    """Fraction of each patch covered by ``region`` (ground truth), row-major [gh * gw]."""
    m = torch.from_numpy(region_mask(gt.images[file_path], region).astype(np.float32))
    return F.adaptive_avg_pool2d(m[None, None], grid).flatten()


def visual_internals_of(model, recs, batch=64):
    outs = [model.visual_internals(load_eval_images([r.image_path for r in recs[i:i + batch]],
                                                    model.cfg.data).to(device))
            for i in range(0, len(recs), batch)]
    return {k: (torch.cat([o[k] for o in outs]).cpu() if isinstance(outs[0][k], torch.Tensor) else outs[0][k])
            for k in outs[0] if outs[0][k] is not None}


def pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-12))


has_gt = dataset == "synthpedes"
if has_gt:
    from tbpr.synthpedes import load_ground_truth, region_mask
    gt = load_ground_truth(root)
vis = visual_internals_of(trained, test)
grid = vis["grid"]


def untrained_masks(init_seed):
    torch.manual_seed(init_seed)
    untrained = experiments.build_model("lgur", trained.cfg, records["train"]).eval()
    return visual_internals_of(untrained, test)["mask"]


masks0 = [untrained_masks(s) for s in range(3)]  # the untrained baseline pools three random inits

fig, axes = plt.subplots(2, 8, figsize=(12, 6))
for j, r in enumerate(test[:8]):
    image = to_display_image(load_eval_images([r.image_path], trained.cfg.data)[0])
    raw_mask = F.interpolate(vis["mask"][j].view(1, 1, *grid), size=image.shape[:2], mode="bilinear")[0, 0]
    axes[0, j].imshow(image)
    axes[1, j].imshow(image)
    axes[1, j].imshow(raw_mask, cmap="jet", alpha=0.5, vmin=0, vmax=1)  # raw values, not stretched
    axes[0, j].set_axis_off(), axes[1, j].set_axis_off()
fig.suptitle("Fig. 3: foreground mask ℳ (bottom, raw values, jet, 0–1) on test images (top)")
save_figure(fig, fig_dir / "fig3_foreground_mask")
plt.show()

if has_gt:
    cover = torch.stack([patch_coverage(r.file_path, "person", grid) for r in test])
    r_trained = np.array([pearson(vis["mask"][i], cover[i]) for i in range(len(test))])
    r_untrained = np.array([pearson(m[i], cover[i]) for m in masks0 for i in range(len(test))])
    r_shuffled = np.array([pearson(vis["mask"][i], cover[(i + 1) % len(test)]) for i in range(len(test))])
    iou = np.mean([float(((vis["mask"][i] > 0.5) & (cover[i] > 0.5)).sum()
                         / max(1, ((vis["mask"][i] > 0.5) | (cover[i] > 0.5)).sum())) for i in range(len(test))])
    mask_df = pd.DataFrame({"Pearson r (mean ± std over test images)": [
        f"{r_trained.mean():+.3f} ± {r_trained.std():.3f}", f"{r_untrained.mean():+.3f} ± {r_untrained.std():.3f}",
        f"{r_shuffled.mean():+.3f} ± {r_shuffled.std():.3f}"]},
        index=["trained ℳ vs its silhouette", "untrained ℳ vs its silhouette (3 inits)",
               "trained ℳ vs another image's silhouette"])
    mask_df.index.name = "Fig. 3 check"
    save_table(mask_df, fig_dir / "fig3_mask_check")
    display(mask_df)
    print(f"IoU of (ℳ > 0.5) with (coverage > 0.5): {iou:.3f}; mean ℳ on person patches "
          f"{vis['mask'][cover > 0.5].mean():.3f}, on background patches {vis['mask'][cover == 0].mean():.3f}")

# %% [markdown]
# ## 6. Figure 4 — dictionary attention of a phrase, its matching patch and an unrelated patch
# The attention of the DGA block over the atoms, averaged over heads and over the phrase's WordPiece
# tokens (text side) or the patches of a region (image side: ≥ 50 % covered). Bars at the phrase's
# top atoms. The check: over every attribute phrase of the test captions, how many of the phrase's
# top-k atoms are also top-k atoms of the described region, against another body part of the same
# image and against the background.

# %%
OTHER_PART = {"upper": "lower", "lower": "upper", "shoes": "upper", "head": "lower", "hat": "lower",
              "bag": "lower", "held": "upper"}
top_k = max(3, min(15, trained.cfg.num_atoms // 4))


def phrase_profile(txt, b, start, end):
    tokens = [j for j, (s, e) in enumerate(txt["offsets"][b]) if e > s and s >= start and e <= end]
    return txt["dga_attn"][b, :, tokens].mean(dim=(0, 1)) if tokens else None


def region_profile(i, cells):
    return vis["dga_attn"][i, :, cells].mean(dim=(0, 1)) if cells.any() else None


def top_overlap(a, b):
    return len(set(a.topk(top_k).indices.tolist()) & set(b.topk(top_k).indices.tolist()))


pairs = []  # (image index, caption, phrase span, region, phrase / matched / other-part / background profiles)
if has_gt:
    for i, r in enumerate(test):
        person = patch_coverage(r.file_path, "person", grid)
        txt = trained.text_internals(r.captions)
        for c, caption in enumerate(r.captions):
            for start, end, attr, region in gt.captions[(r.file_path, c)].attributes:
                if region not in OTHER_PART:
                    continue
                matched = patch_coverage(r.file_path, region, grid) >= 0.5
                other = patch_coverage(r.file_path, OTHER_PART[region], grid) >= 0.5
                a = phrase_profile(txt, c, start, end)
                profiles = (a, region_profile(i, matched), region_profile(i, other), region_profile(i, person == 0))
                if all(p is not None for p in profiles):
                    pairs.append((i, caption, (start, end), region, *[p.cpu() for p in profiles]))

# %%
if pairs:
    upper = [p for p in pairs if p[3] == "upper"] or pairs
    i, caption, (start, end), region, a, m, o, bg = max(upper, key=lambda p: p[2][1] - p[2][0])  # longest phrase
    order = a.topk(top_k).indices
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 3, 3]})
    image = to_display_image(load_eval_images([test[i].image_path], trained.cfg.data)[0])
    axes[0].imshow(image)
    H, W = image.shape[:2]
    for reg, colour in ((region, "red"), (OTHER_PART[region], "yellow")):
        x0, y0, x1, y1 = gt.images[test[i].file_path].regions[reg]
        sx, sy = W / 128, H / 384
        axes[0].add_patch(plt.Rectangle((x0 * sx, y0 * sy), (x1 - x0) * sx, (y1 - y0) * sy,
                                        fill=False, color=colour, lw=2))
    axes[0].set_axis_off()
    x = np.arange(top_k)
    for ax, other_profile, name in ((axes[1], m, "matching region (red)"), (axes[2], o, "unrelated region (yellow)")):
        ax.bar(x - 0.2, a[order], 0.4, label=f'phrase "{caption[start:end]}"', color="tab:red")
        ax.bar(x + 0.2, other_profile[order], 0.4, label=name, color="tab:blue")
        ax.set_xticks(x, [str(int(j)) for j in order], fontsize=7)
        ax.set_xlabel("atom (phrase's top atoms, descending)")
        ax.legend(fontsize=8)
    axes[1].set_ylabel("attention")
    fig.suptitle(caption[:start] + "[" + caption[start:end] + "]" + caption[end:], fontsize=9)
    save_figure(fig, fig_dir / "fig4_dictionary_attention")
    plt.show()

    overlap = np.array([[top_overlap(p[4], p[5]), top_overlap(p[4], p[6]), top_overlap(p[4], p[7])] for p in pairs])
    cosine = np.array([[float(F.cosine_similarity(p[4], q, dim=0)) for q in p[5:8]] for p in pairs])
    atoms_df = pd.DataFrame({f"shared top-{top_k} atoms (mean)": overlap.mean(0).round(2),
                             "cosine of the full profiles (mean)": cosine.mean(0).round(3),
                             "matched > this (share of pairs)": ["-", f"{np.mean(overlap[:, 0] > overlap[:, 1]):.2f}",
                                                                 f"{np.mean(overlap[:, 0] > overlap[:, 2]):.2f}"]},
                            index=["matching region", "another body part", "background"])
    atoms_df.index.name = f"phrase vs ({len(pairs)} phrase/image pairs)"
    save_table(atoms_df, fig_dir / "fig4_atom_check")
    display(atoms_df)
else:
    print("Figure 4 needs SynthPedes ground truth (phrase spans and part regions)")

# %% [markdown]
# ### Extra (not a paper figure): what each PGU prototype attends to
# The attention of the K prototypes over the patches (last Trans_P layer, head-averaged) on one test
# image — a view of how diverse the parts are.

# %%
if "pgu_attn" in vis:
    maps = vis["pgu_attn"][0].mean(0)
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(1.6 * (len(maps) + 1), 3.6))
    image = load_eval_images([test[0].image_path], trained.cfg.data)[0]
    axes[0].imshow(to_display_image(image)), axes[0].set_axis_off()
    for k, (ax, heat) in enumerate(zip(axes[1:], maps)):
        overlay_heatmap(ax, image, heat.view(grid))
        ax.set_title(f"prototype {k}", fontsize=8)
    fig.suptitle("PGU prototype attention (per-map min-max stretch)")
    save_figure(fig, fig_dir / "extra_pgu_prototypes")
    plt.show()

# %% [markdown]
# ## 7. Conclusions, computed from this run

# %%
lines = [f"- LGUR at `{profile}` reaches R@1 {main.metrics['R1']:.1f} / mAP {main.metrics['mAP']:.1f} "
         f"(chance ≈ {chance:.1f}); {'it clearly learns' if main.metrics['R1'] > 5 * chance else 'it barely beats chance at this profile'}."]
lines += conclusion_lines(verdict_records)
if has_gt:
    lines.append(f"- Fig. 3: the unsupervised mask correlates with the person silhouette at r = {r_trained.mean():+.2f} "
                 f"(untrained {r_untrained.mean():+.2f}, another image's silhouette {r_shuffled.mean():+.2f}); "
                 + ("it does pick out the person." if r_trained.mean() > max(r_untrained.mean(), r_shuffled.mean()) + 0.1
                    else "it does NOT clearly pick out the person here."))
if pairs:
    gain = overlap[:, 0].mean() - overlap[:, 1].mean()
    lines.append(f"- Fig. 4: a phrase shares {overlap[:, 0].mean():.2f} of its top-{top_k} atoms with the region it "
                 f"describes vs {overlap[:, 1].mean():.2f} with another body part ({gain:+.2f}) and "
                 f"{overlap[:, 2].mean():.2f} with the background; "
                 + ("matching phrase/region pairs do share more atoms." if gain > 0
                    else "matching pairs do NOT share more atoms than unrelated ones here."))
conclusions = "\n".join(lines)
(fig_dir / "conclusions.md").write_text(conclusions + "\n")
display(Markdown(conclusions))

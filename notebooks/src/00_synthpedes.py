# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · SynthPedes, the benchmark every notebook trains on
#
# The real text-based person retrieval datasets (CUHK-PEDES, ICFG-PEDES, RSTPReid) must be requested
# from their authors, so tbpr ships a procedurally rendered one, written in the CUHK-PEDES format
# (`reid_raw.json` + `imgs/`). It is built to be hard in the ways the real task is hard: people
# come in families that differ in one or two small attributes, colour words cover ranges of shades,
# captions mention a random subset of attributes in random order with synonyms, distractor clauses
# and rare typos, bags and held objects move between images, backgrounds are cluttered, and view,
# framing and lighting vary.
#
# Unlike a real dataset it also keeps ground truth: person masks, attribute regions, and for every
# caption the attribute spans, noun phrases and POS tags. Later notebooks use these to *measure*
# the papers' qualitative figures (attention maps, word→stripe assignments).
#
# To run every notebook on a real dataset instead, set `dataset` to `cuhk-pedes`, `icfg-pedes` or
# `rstpreid` and `data_root` to its folder (see the README).

# %% tags=["parameters"]
profile = "quick"
dataset = "synthpedes"
data_root = None
seeds = [0]
device = "cpu"
out_dir = "../figures"

# %%
import time
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from PIL import Image

from tbpr import synthpedes, zoo
from tbpr.data import formats, text
from tbpr.evaluate import chance_rank1, evaluate, retrieval_metrics
from tbpr.papers import create_model
from tbpr.synthpedes.baseline import baseline_rank1, text_oracle_rank1
from tbpr.viz import save_figure, save_table
from tbpr.pretrain import corpus, probe

figdir = Path(out_dir) / "synthpedes"
synth = dataset == "synthpedes"
start = time.perf_counter()
root = synthpedes.ensure(profile, seeds[0]) if synth and data_root is None else Path(data_root)
print(f"{dataset} at {root} (ready in {time.perf_counter() - start:.1f} s)")
splits = formats.load(dataset, root)
gt = synthpedes.load_ground_truth(root) if synth else None

# %% [markdown]
# ## Splits, next to CUHK-PEDES
# Identities are disjoint between splits. The profiles keep CUHK-PEDES' shape (about three images
# per identity, two captions per image) at a size a laptop trains on; `large` matches its scale.

# %%
# NBVAL_CHECK_OUTPUT
CUHK_PEDES = {"train": (11003, 34054, 68108), "val": (1000, 3078, 6158),
              "test": (1000, 3074, 6156)}  # ids / images / captions, the official split (Li et al., CVPR 2017)
stats = formats.split_statistics(splits)
table = pd.DataFrame({
    **{f"{dataset} {k}": {s: stats[s][k] for s in stats} for k in ("ids", "images", "captions")},
    **{f"CUHK-PEDES {k}": {s: CUHK_PEDES[s][i] for s in stats}
       for i, k in enumerate(("ids", "images", "captions"))}})
table.index.name = "split"
save_table(table, figdir / "splits")
table

# %% [markdown]
# ## A grid of people with one of their captions

# %%
def show(ax, record, title=None):
    ax.imshow(Image.open(record.image_path))
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7, wrap=True)


def wrap(caption, width=30):
    words, lines, line = caption.split(), [], ""
    for w in words:
        if len(line) + len(w) > width:
            lines.append(line)
            line = ""
        line += (" " if line else "") + w
    return "\n".join(lines + [line])


test = splits["test"]
people = {}
for r in test:
    people.setdefault(r.orig_id, r)
shown = list(people.values())[:8]
fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 6))
for ax, r in zip(np.atleast_1d(axes), shown):
    show(ax, r)
    ax.set_xlabel(wrap(r.captions[0]), fontsize=6.5)
fig.tight_layout()
save_figure(fig, figdir / "grid")
plt.show()

# %% [markdown]
# ## A family: near-identical people
# Members share their founder's attributes except one or two, often a small one (shoes, bag, hat,
# glasses, a held object). Their shades are drawn afresh, yet the caption words stay the same: the
# granularity gap. Retrieval must rank the right sibling first.

# %%
if synth:
    test_ids = {r.orig_id for r in test}
    family_of = {i: gt.identities[i]["family"] for i in test_ids}
    family = Counter(family_of.values()).most_common(1)[0][0]
    members = sorted(i for i, f in family_of.items() if f == family)
    founder = gt.identities[members[0]]
    keys = [k for k in founder if k not in ("split", "family", "skin")]
    diff = pd.DataFrame({i: {k: gt.identities[i][k] for k in keys} for i in members})
    diff = diff[diff.nunique(axis=1) > 1]
    fig, axes = plt.subplots(1, len(members), figsize=(2.2 * len(members), 6))
    for ax, i in zip(np.atleast_1d(axes), members):
        r = people[i]
        show(ax, r, f"id {i}")
        ax.set_xlabel(wrap(r.captions[0]), fontsize=6.5)
    fig.tight_layout()
    save_figure(fig, figdir / "family")
    plt.show()
    display(diff)

# %% [markdown]
# ## Ground truth: person mask, attribute regions, and what each caption word refers to

# %%
if synth:
    colours = {"head": "tab:orange", "hat": "tab:purple", "upper": "tab:red", "lower": "tab:blue",
               "shoes": "tab:brown", "bag": "tab:green", "held": "tab:pink"}
    fig, axes = plt.subplots(1, 6, figsize=(13, 6))
    for ax, r in zip(axes, shown[:6]):
        img = gt.images[r.file_path]
        ax.imshow(Image.open(r.image_path))
        ax.contour(img.mask, levels=[.5], colors="white", linewidths=.8)
        for region, (x0, y0, x1, y1) in img.regions.items():
            if region in colours:
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.2,
                                           color=colours[region]))
        cap = gt.captions[(r.file_path, 0)]
        spans = " | ".join(f"{cap.text[a:b]}→{region}" for a, b, _, region in cap.attributes)
        ax.set_title(f"{img.view} view", fontsize=8)
        ax.set_xlabel(wrap(spans, 34), fontsize=6)
        ax.set_xticks([]), ax.set_yticks([])
    handles = [plt.Line2D([], [], color=c, label=k) for k, c in colours.items()]
    fig.legend(handles=handles, loc="upper center", ncol=7, fontsize=8)
    save_figure(fig, figdir / "ground_truth")
    plt.show()
    cap = gt.captions[(shown[0].file_path, 0)]
    print(cap.text)
    print("noun phrases:", [cap.text[a:b] for a, b in cap.noun_phrases])
    print("POS:", " ".join(f"{w}/{t}" for w, t in zip(cap.tokens, cap.pos)))

# %% [markdown]
# ## Caption statistics against CUHK-PEDES
# CUHK-PEDES captions are 23.5 words long on average with 9,408 distinct words (SSAN, MIA). Ours are
# shorter and use a far smaller vocabulary: the benchmark's difficulty lies in which attributes are
# mentioned and how fine they are, not in language variety.

# %%
train_captions = [c for r in splits["train"] for c in r.captions]
all_captions = [c for rs in splits.values() for r in rs for c in r.captions]
lengths = [len(text.word_tokenize(c)) for c in all_captions]
vocab = Counter(w for c in all_captions for w in text.word_tokenize(c))
ours = {"captions": len(all_captions), "mean words / caption": float(np.mean(lengths)),
        "distinct words": len(vocab),
        "train vocabulary (count ≥ 2)": len(text.Vocabulary.build(train_captions)) - 2}
cuhk = {"captions": 80412, "mean words / caption": 23.5, "distinct words": 9408,
        "train vocabulary (count ≥ 2)": 4593}
fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else f"{v:,}"
caption_stats = pd.DataFrame({dataset: {k: fmt(v) for k, v in ours.items()},
                              "CUHK-PEDES": {k: fmt(v) for k, v in cuhk.items()}})
save_table(caption_stats, figdir / "caption_statistics")
display(caption_stats)

fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
axes[0].hist(lengths, bins=range(0, max(lengths) + 2), color="tab:blue")
axes[0].axvline(23.5, color="k", ls="--", label="CUHK-PEDES mean (23.5)")
axes[0].set_xlabel("words per caption"), axes[0].legend()
if synth:
    mentioned = Counter(a[2] for c in gt.captions.values() for a in c.attributes)
    names, counts = zip(*mentioned.most_common())
    axes[1].barh(names[::-1], np.array(counts[::-1]) / len(gt.captions))
    axes[1].set_xlabel("mentions per caption")
    axes[1].set_title("attribute frequency", fontsize=9)
else:
    words = vocab.most_common(25)
    axes[1].barh([w for w, _ in words][::-1], [n for _, n in words][::-1])
    axes[1].set_title("most frequent words", fontsize=9)
fig.tight_layout()
save_figure(fig, figdir / "caption_statistics")
plt.show()

# %% [markdown]
# ## Noun phrases: offline tagger vs gold
# MIA, CADA and IVT mask or encode noun/attribute phrases. Without NLTK's tagger data tbpr tags
# with a lexicon + suffix tagger and chunks with NLTK's `RegexpParser`; here is its phrase F1
# against the generator's gold phrases.

# %%
if synth:
    caps = list(gt.captions.values())
    p, r_, f1 = text.phrase_f1([text.noun_phrases(c.text) for c in caps],
                               [c.noun_phrases for c in caps])
    print(f"noun-phrase precision {p:.3f}, recall {r_:.3f}, F1 {f1:.3f} over {len(caps)} captions "
          f"(tagger: {'nltk' if text.nltk_tagger_available() else 'offline lexicon'})")

# %% [markdown]
# ## How hard is it? A floor and a ceiling
# *Floor*: bag-of-words captions against colour histograms of six body stripes, matched with a CCA
# learned on the training pairs (chance rank-1 is about one over the number of test identities).
# *Ceiling* (SynthPedes only): a reader that knows every gallery image's true attributes and ranks
# at random among the images consistent with everything the caption says. Family members that
# differ only in what the caption leaves out stay tied, so even perfect perception stays well below
# 100 %, as on the real datasets.

# %%
metrics = baseline_rank1(root, dataset)
n_ids = stats["test"]["ids"]
print(f"BoW × colour-histogram CCA on {dataset} test: R1 {metrics['R1']:.1f}  R5 {metrics['R5']:.1f}"
      f"  R10 {metrics['R10']:.1f}  mAP {metrics['mAP']:.1f}  (chance R1 ≈ {100 / n_ids:.1f})")
if synth:
    print(f"attribute-oracle ceiling: R1 {text_oracle_rank1(root):.1f}")

# %% [markdown]
# ## The pre-training zoo: what the quick profiles start from
# Every paper fine-tunes pre-trained weights: MIA and SSAN an ImageNet CNN, LGUR an ImageNet DeiT and
# BERT, IVT an ImageNet ViT and BERT, CADA a whole BLIP, IRRA a whole CLIP. Nothing can be downloaded
# here, so tbpr ships small members of those families pre-trained on SynthPedes renders that share
# no identity, family or image with any benchmark split (`tbpr/zoo/README.md`; `tbpr pretrain NAME`
# re-creates one). Each row below is read from the member's manifest.

# %%
members = zoo.available()
zoo_table = pd.DataFrame({name: {
    "stands in for": m["role"], "objective": m["kind"], "corpus": m["corpus"]["synthpedes_profile"],
    "steps × batch": f"{m['recipe']['steps']:,} × {m['recipe']['batch_size']}",
    "final loss": m.get("final_loss"), "wall s": m.get("wall_seconds"), "MB": round(m["bytes"] / 2**20, 1)}
    for name in members for m in [zoo.manifest(name)]}).T
zoo_table.index.name = "member"
save_table(zoo_table, figdir / "zoo_members")
zoo_table

# %% [markdown]
# ### Two corpora, and how they differ from the benchmark
# `pretrain` is rendered by the benchmark's own generator (same look, same caption templates), so
# only the *image-only* members (ImageNet's role: 22 attribute heads) and the *text-only* one (BERT's
# role: masked language modelling on its captions) learn from it. An image-text model pre-trained on
# it would already solve the benchmark zero-shot, and fine-tuning would then measure the
# pre-training. The aligned member `blip-s` (BLIP's role for CADA, CLIP's for IRRA) learns from
# `pretrain-shifted` instead, shifted the way web data differs from CUHK-PEDES: tags, alt text and
# short sentences with other words for the same things ("crimson", "kicks"), some captions about
# nothing, other framing, backgrounds, lighting, resolution and JPEG quality. The first people of
# each corpus are read from the cached render, or rendered alone in memory (the same bytes).

# %%
start = time.perf_counter()
corpora = {"pretrain": corpus.sample("pretrain", 6), "pretrain-shifted": corpus.sample("pretrain-shifted", 6)}
print("; ".join(f"{name}: {source}" for name, (_, source) in corpora.items())
      + f" ({time.perf_counter() - start:.1f} s)")
rows = [(f"{dataset} test (benchmark)", [(Image.open(r.image_path), r.captions[0]) for r in shown[:6]])] + [
    (name, [(p["image"], p["caption"]) for p in people]) for name, (people, _) in corpora.items()]
fig, axes = plt.subplots(len(rows), 6, figsize=(13, 5.2 * len(rows)))
for row_axes, (name, items) in zip(axes, rows):
    row_axes[0].set_ylabel(name, fontsize=11)
    for ax, (image, caption) in zip(row_axes, items):
        ax.imshow(image)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel(wrap(caption), fontsize=6.5)
fig.tight_layout()
save_figure(fig, figdir / "zoo_corpora")
plt.show()

# %% [markdown]
# ### Pre-training curves
# The losses each member's manifest recorded during pre-training (`history`, every 250 steps; the
# aligned member's total is ITC + ITM + MLM). A member whose recipe ran before the manifests kept a
# history shows its final loss only.

# %%
fig, axes = plt.subplots(1, len(members), figsize=(2.3 * len(members), 2.6), sharex=False)
for ax, name in zip(np.atleast_1d(axes), members):
    m = zoo.manifest(name)
    history = pd.DataFrame(m.get("history") or [])
    if len(history):
        for key in [k for k in history if k not in ("step", "temperature")]:
            ax.plot(history["step"], history[key], marker=".", label=key)
        ax.legend(fontsize=6)
    else:
        steps, final = m["recipe"]["steps"], m["final_loss"]
        ax.plot([steps], [final], "o", color="k")
        ax.set_xlim(0, 1.1 * steps), ax.set_ylim(0, 1.6 * final)
        ax.text(0.5, 0.8, f"no history recorded\nfinal loss {final:.2f}", transform=ax.transAxes,
                ha="center", fontsize=7, color="grey")
    ax.set_title(f"{name} ({m['corpus']['synthpedes_profile']})", fontsize=8)
    ax.set_xlabel("step", fontsize=7)
    ax.tick_params(labelsize=6)
np.atleast_1d(axes)[0].set_ylabel("training loss")
fig.tight_layout()
save_figure(fig, figdir / "zoo_curves")
plt.show()

# %% [markdown]
# ### What a frozen trunk knows: linear probes on the test people
# Each vision member is read out of the paper model that loads it (`create_model(paper, "quick")`,
# so the same trunk, input size and normalisation), pooled as that paper pools it (IVT's and CADA's
# [CLS], the mean of LGUR's patch tokens, SSAN's global max, MIA's global mean), and compared with
# the same trunk at random init. A logistic regression per ground-truth attribute is fitted on half
# of the test split's identities and scored on the other half (`tbpr.pretrain.probe`); bars are
# the accuracy averaged per attribute group, then over groups. The image-only members were trained
# on these very attributes (of other people, in another render), so this measures how that transfers,
# not a general feature quality; `blip-s`'s image encoder learned from shifted captions instead.
# (`vit-s-mlp4` initialised `blip-s`'s image encoder: both sit in CADA's ViT, so their random arms
# are the same trunk.)

# %%
if synth:
    start = time.perf_counter()
    probe_table = pd.DataFrame(probe.probe_members(root, dataset=dataset)).set_index(["member", "arm"])
    print(f"probes of {len(probe.PROBES)} members × 2 inits on {stats['test']['ids']} test identities "
          f"({stats['test']['images']} images): {time.perf_counter() - start:.0f} s")
    floor = probe_table.loc[("majority class", "floor"), "mean"]
    means = probe_table["mean"].drop(("majority class", "floor")).unstack("arm")[["zoo", "random"]]
    means = means.loc[list(probe.PROBES)]
    fig, ax = plt.subplots(figsize=(7.5, 3))
    x = np.arange(len(means))
    ax.bar(x - 0.2, means["zoo"], 0.4, label="from the zoo member")
    ax.bar(x + 0.2, means["random"], 0.4, label="same trunk, random init", color="tab:grey")
    ax.axhline(floor, color="k", ls="--", lw=1, label=f"majority class ({floor:.2f})")
    ax.set_xticks(x, [f"{m}\n({probe.PROBES[m].paper})" for m in means.index], fontsize=8)
    ax.set_ylabel("probe accuracy"), ax.set_ylim(0, 1), ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, figdir / "zoo_probe")
    plt.show()
    save_table(probe_table.round(3), figdir / "zoo_probe")
    display(probe_table.round(3))

# %% [markdown]
# ### The aligned member zero-shot: our analogue of CLIP's zero-shot number
# CADA at the quick profile loads `blip-s` whole; before any fine-tuning step it can already rank
# the test split by its ITC similarity. CLIP's zero-shot R1 on CUHK-PEDES is far below the 68.19 that
# fine-tuning it reaches (IRRA's ITC baseline), which is why the papers' ablations measure their
# modules and not the pre-training; the member must play that role, so its zero-shot number has to
# stay far below what CADA and IRRA reach fine-tuned from it (notebooks 05 and 06).

# %%
start = time.perf_counter()
torch.manual_seed(seeds[0])
cada = create_model("cada", "quick", device=device)  # the zoo member's sizes, whatever the data profile
zero = evaluate(cada, test, cada.cfg.data, device=device, progress=False)
query_pids = [r.pid for r in test for _ in r.captions]
gallery_pids = [r.pid for r in test]
random_scores = torch.rand(len(query_pids), len(gallery_pids), generator=torch.Generator().manual_seed(0))
random_ranking = retrieval_metrics(random_scores, query_pids, gallery_pids)
recorded = zoo.manifest("blip-s").get("zero_shot_quick", {})
zero_table = pd.DataFrame({
    f"blip-s zero-shot, {dataset} {profile} test": {k: zero[k] for k in ("R1", "R5", "R10", "mAP")},
    "recorded in the manifest (quick test)": {k: recorded.get(k) for k in ("R1", "R5", "R10", "mAP")},
    "a random ranking": {k: random_ranking[k] for k in ("R1", "R5", "R10", "mAP")}}).T.astype(float).round(2)
save_table(zero_table, figdir / "zoo_zero_shot")
print(f"{len(query_pids)} queries, {len(gallery_pids)} gallery images; chance R1 (expected) "
      f"{chance_rank1(query_pids, gallery_pids):.2f}; {time.perf_counter() - start:.0f} s")
zero_table

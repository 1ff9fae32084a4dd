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
from IPython.display import display
from PIL import Image

from tbpr import synthpedes
from tbpr.data import formats, text
from tbpr.synthpedes.baseline import baseline_rank1, text_oracle_rank1
from tbpr.viz import save_figure, save_table

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

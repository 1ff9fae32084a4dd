# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Attention explorer
#
# Type a description (or pick a test caption) and see what each trained model retrieves from the
# SynthPedes test gallery, true matches of a test caption in green; then pick a word or phrase and
# see that model's **own** explanation of it on each retrieved image:
#
# | model | map | from |
# |---|---|---|
# | MIA | BFM phrase→part weights α (Eq. 13) per noun phrase; `[sentence]`: RGA relation attention v_k (Eq. 6) | `MIA.phrase_part_attention`, `MIA.relation_attention` (Fig. 7) |
# | SSAN | WAM word→stripe probabilities s_i^k (Eq. 8), as stripes and as bars | `SSAN.wam_word_scores` (Fig. 8) |
# | LGUR | agreement of the word's and each patch's attention over the shared dictionary, × foreground mask ℳ (contour at 0.5) | `LGUR.text_internals`, `LGUR.visual_internals` (Figs. 3–4) |
# | IVT | cos(text [CLS] of the word or attribute phrase, visual token) per patch | as `IVT.alignment_maps` (Figs. 4/6) |
# | CADA | decoder cross-attention of the word's tokens over the patches | `CADA.word_patch_attention` (Fig. 5) |
#
# Maps are min–max stretched per image unless "one colour scale across images" is ticked (SSAN's
# bars show the raw probabilities). Search with Enter or the button; a test caption also shows the
# true person's images and their ranks; "all models" puts every model side by side with its R@1;
# "enlarge" shows one result beside its map with a colour bar. The models are the full
# configurations of notebooks 01–06 at the same profile: from the run cache, else from
# `checkpoints` (a folder of `<model>/model.safetensors` or `<model>.safetensors`), else the
# model shipped in the repository (`tbpr/shipped/`, made by `tbpr ship`; quick only), else trained
# now (`train`); the first cell prints where each came from. A model is built when first shown, and
# on a fresh clone only the test split (the gallery) is rendered, so the widget answers within ~30 s
# at quick (README, "Explore attention"). `Explorer.from_checkpoints` takes any
# other `model.safetensors` the same way. `images` (a folder of your own pedestrian photos, or the
# widget's "images" box) replaces the test gallery; unreadable files are named and skipped.

# %% tags=["parameters"]
profile = "quick"
dataset = "synthpedes"
data_root = None
seeds = None
device = "cpu"
out_dir = "../figures"
checkpoints = None  # a folder of <model>/model.safetensors to use when the run cache has none
train = True        # train what none of them holds (at quick: minutes per model)
images = None       # a folder of your own pedestrian images to search instead of the test split

# %%
from pathlib import Path

from tbpr.explorer import Explorer
from tbpr.viz import save_figure

figdir = Path(out_dir) / "explorer"
explorer = Explorer.from_runs(profile, dataset=dataset, data_root=data_root, device=device, train=train,
                              fallback=checkpoints, images=images)
for m in explorer.models:
    print(f"{m:5s} R@1 {explorer.r1(m):5.1f}  from the {explorer.sources[m]}")

# %% [markdown]
# ## Interactive (JupyterLab)

# %%
panel = explorer.widget()
words = [v for _, v in explorer.controls["word"].options]
explorer.controls["word"].value = next((w for w in words if " " in w), words[-1])  # a phrase, to start
panel

# %% [markdown]
# ## The same, headless: one test caption, a garment or bag word it contains, every model
# MIA explains noun phrases, so its map is that of the phrase holding the word (named in the title).

# %%
import re
import time

NOUNS = ("jacket", "shirt", "coat", "sweater", "dress", "backpack", "jeans", "pants", "shorts")
words_of = lambda c: re.findall(r"[a-z]+", c.lower())  # noqa: E731
caption = next((c for c in explorer.example_captions if set(NOUNS) & set(words_of(c))),
               explorer.example_captions[0])
word = next((w for w in words_of(caption) if w in NOUNS), words_of(caption)[-1])
print(caption, "| word:", word)
for name in explorer.models:
    explorer.gallery(name)  # encoded once per model, then every query reuses it
    start = time.perf_counter()
    explorer.search(name, caption, k=5)
    answer = time.perf_counter() - start
    fig = explorer.figure(name, caption, k=5, word=word)
    drawn = time.perf_counter() - start - answer
    print(f"{name:5s} query {answer:.3f} s, explained and drawn {drawn:.2f} s: {explorer.last['kind']}")
    save_figure(fig, figdir / f"{name}_{word}")

# %% [markdown]
# ## Every model side by side for the same caption and word

# %%
fig = explorer.compare_figure(caption, k=5, word=word)
save_figure(fig, figdir / f"all_{word}")

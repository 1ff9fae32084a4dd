# %% [markdown]
# # 07 · Attention explorer
#
# Type a description and see what each trained model retrieves from the SynthPedes test gallery,
# and where a chosen word lands on the retrieved images. Maps come from the model's own internals
# when it exposes them (`model.explain`: SSAN's WAM word→stripe probabilities, IVT's word-level
# alignment, CADA's word→patch cross-attention, …); otherwise from a model-agnostic word-ablation
# saliency (the gradient of what the word adds to the similarity, times the image).
#
# The models are the full configurations of notebooks 01–05 at the same profile (cached runs).

# %% tags=["parameters"]
profile = "quick"
dataset = "synthpedes"
data_root = None
seeds = None
device = "cpu"
out_dir = "../figures"

# %%
from pathlib import Path

from tbpr import experiments
from tbpr.data.formats import load
from tbpr.explorer import Explorer
from tbpr.models import available_models
from tbpr.viz import save_figure

figdir = Path(out_dir) / "explorer"
root = experiments.resolve_data_root(dataset, data_root, profile)
test = load(dataset, root)["test"]
models = {m: experiments.run(m, profile, dataset=dataset, data_root=data_root, device=device).load_model(device)
          for m in available_models()}
explorer = Explorer(models, test)

# %% [markdown]
# ## Interactive (JupyterLab)

# %%
explorer.widget()

# %% [markdown]
# ## The same, headless: one test caption, a garment or bag word it contains, every model

# %%
import re

NOUNS = ("jacket", "shirt", "coat", "sweater", "dress", "backpack", "jeans", "pants", "shorts")
words_of = lambda c: re.findall(r"[a-z]+", c.lower())  # noqa: E731
caption = next((c for c in explorer.eval_set.captions if set(NOUNS) & set(words_of(c))),
               explorer.eval_set.captions[0])
word = next((w for w in words_of(caption) if w in NOUNS), words_of(caption)[-1])
query_pid = int(explorer.eval_set.caption_pids[explorer.eval_set.captions.index(caption)])
print(caption, "| word:", word)
for name in models:
    fig = explorer.figure(name, caption, k=5, word=word, query_pid=query_pid)
    save_figure(fig, figdir / f"{name}_{word}")

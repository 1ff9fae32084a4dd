"""The attention explorer: type a description, see what a trained model retrieves and where each
word or phrase of the description lands on the retrieved images, in that model's own terms.

An *explanation* of (model, caption, image) is a dict::

    {"tokens": [str, ...],                   # the words / phrases the model explains
     "maps":   Tensor [n_tokens, h, w],      # one map per token over the image (h x w grid;
                                             # [n_tokens, n_parts, 1] for horizontal stripes)
     "kind":   str,                          # what the maps are, in the paper's terms
     "bars":   Tensor [n_tokens, n_parts],   # optional: per-part values drawn as bars (SSAN)
     "mask":   Tensor [h, w]}                # optional: a foreground mask (LGUR's ℳ)

Each paper's recipe (``tbpr/papers/<paper>/recipe.py``, ``Recipe.explain``) gives its own, read from
the model's internals (the methods its notebook draws the paper's figures with):

- ``ssan``: WAM word→part probabilities s_i^k (Eq. 8, Fig. 8) as stripes, and as bars.
- ``lgur``: DGA dictionary attention (Fig. 4): per patch, the cosine of its attention profile over
  the shared atoms with the word's profile, times the foreground mask ℳ (Fig. 3; Eq. 2 scales the
  rebuilt patches by it), which is also returned as ``mask``.
- ``ivt``: cos(f_txt(word or phrase), visual token) per patch (Figs. 4/6, ``IVT.alignment_maps``).
- ``cada``: decoder word→patch cross-attention (Fig. 5, ``CADA.word_patch_attention``), per word
  and per attribute chunk (the spans ARA masks).
- ``mia``: BFM phrase→part weights α (Eq. 13, Fig. 7b) per noun phrase, and the RGA relation
  attention v_k (Eq. 6, Fig. 7a) of the whole sentence as token ``[sentence]``, as stripes.

A configuration without the module its paper's map reads (e.g. SSAN without PFL) gets a
model-agnostic *word-ablation saliency*: for word w, the gradient with respect to the image of
``s(caption) - s(caption without w)``, times the image.

    explorer = Explorer.from_checkpoints({"ssan": "runs/ssan/model.safetensors"})
    explorer.widget()          # in JupyterLab
    explorer.figure("ssan", "a man in a red jacket and black shorts", word="red")  # headless
"""
from __future__ import annotations

import textwrap
from collections import OrderedDict
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import ipywidgets as w
from IPython.display import display

from . import experiments
from .data.datasets import EvalSet, load_eval_images
from .data.text import caption_word_spans
from .engine import read_checkpoint
from .papers import MODEL_NAMES, recipe
from .papers.base import SENTENCE
from .viz import overlay_heatmap, to_display_image

__all__ = ["SENTENCE", "Explorer", "explain", "token_map", "word_ablation_saliency"]

# ----------------------------------------------------------------------------- any model
def word_ablation_saliency(model, caption: str, image: torch.Tensor) -> dict:
    """Per-word saliency maps [n_words, H, W] of ``model.similarity`` for one image."""
    words = caption.split()
    variants = [caption] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
    with torch.no_grad():
        text = model.encode_texts(variants)
    image = image.detach().clone().to(model.device).requires_grad_(True)
    maps = []
    for i in range(len(words)):
        sim = model.similarity(_row(text, 0), model.encode_images(image[None]))[0, 0]
        drop = model.similarity(_row(text, i + 1), model.encode_images(image[None]))[0, 0]
        grad, = torch.autograd.grad(sim - drop, image)
        maps.append((grad * image).sum(0).clamp(min=0).detach().cpu())
    return {"tokens": words, "maps": torch.stack(maps), "kind": "word-ablation saliency"}


def _row(feats, i: int):
    if isinstance(feats, dict):
        return {k: v[i:i + 1] for k, v in feats.items()}
    return feats[i:i + 1]


def explain(model, caption: str, image: torch.Tensor) -> dict:
    """The paper's explanation (``recipe(name).explain``), else the word-ablation saliency
    (also for configurations without the module the paper's explanation reads, e.g. SSAN w/o PFL)."""
    out = recipe(model.name).explain(model, caption, image) if model.name in MODEL_NAMES else None
    return out if out is not None else word_ablation_saliency(model, caption, image)


def _norm(text: str) -> str:
    return " ".join(w for w, _, _ in caption_word_spans(text.replace("##", "")))


def _token_rows(tokens: list[str], query: str) -> list[int]:
    """Rows of ``tokens`` that explain ``query``: the token itself; else the first phrase token
    holding the word (MIA explains phrases); else the word tokens of a phrase (averaged); else the
    first WordPiece of the word."""
    keys, key = [_norm(t) for t in tokens], _norm(query)
    if key and key in keys:
        return [keys.index(key)]
    padded = f" {key} "
    holding = [i for i, k in enumerate(keys) if " " in k and padded in f" {k} "]
    if holding:
        return holding[:1]
    inside = [i for i, k in enumerate(keys) if k and " " not in k and f" {k} " in padded]
    if len(key.split()) > 1 and inside:
        return inside
    for i, k in enumerate(keys):
        if k and key.startswith(k):
            return [i]
    raise ValueError(f"{query!r} is not among the model's tokens {tokens}")


def _token_index(tokens: list[str], word: str) -> int:
    return _token_rows(tokens, word)[0]


def token_map(exp: dict, query: str) -> torch.Tensor:
    """The map of ``query`` (a token, a word inside a phrase token, or a phrase of word tokens)."""
    return exp["maps"][_token_rows(exp["tokens"], query)].float().mean(0)


# ----------------------------------------------------------------------------- the explorer
class Explorer:
    """Retrieval + the models' own word maps for one or more trained models over a test split."""

    def __init__(self, models: dict, records, batch_size: int = 64):
        self.models = {name: m.eval() for name, m in models.items()}
        self.eval_set = EvalSet(records)
        self.batch_size = batch_size
        self._gallery: dict[str, tuple] = {}
        self._explained: OrderedDict = OrderedDict()  # (model, caption, image index) -> explanation
        self._pid_of = dict(zip(self.eval_set.captions, (int(p) for p in self.eval_set.caption_pids)))
        self.last: dict = {}  # what the latest figure showed (the widget's state, for tests)

    @classmethod
    def from_checkpoints(cls, checkpoints: dict, dataset: str = "synthpedes", data_root=None,
                         profile: str = "quick", split: str = "test", device: str = "cpu") -> "Explorer":
        """Models rebuilt from tbpr checkpoints ``{name: model.safetensors or its run folder}``
        (each with the vocabulary saved in it); ``split`` of the dataset is the gallery."""
        root = experiments.resolve_data_root(dataset, data_root, profile)
        records = experiments.load_records(dataset, root)
        models = {}
        for name, path in checkpoints.items():
            path = Path(path) / "model.safetensors" if Path(path).is_dir() else Path(path)
            meta = read_checkpoint(path)
            cfg = experiments.get_config(meta["model"], "paper", meta["config"])
            models[name] = experiments.load_trained(meta["model"], cfg, path).to(device)
        return cls(models, records[split])

    def gallery(self, name: str):
        """Gallery images and features of model ``name``, encoded once."""
        if name not in self._gallery:
            model = self.models[name]
            images = load_eval_images(self.eval_set.image_paths, model.cfg.data)
            with torch.no_grad():
                feats = [model.encode_images(images[i:i + self.batch_size].to(model.device))
                         for i in range(0, len(images), self.batch_size)]
            if isinstance(feats[0], dict):
                feats = {k: torch.cat([f[k] for f in feats]) for k in feats[0]}
            else:
                feats = torch.cat(feats)
            self._gallery[name] = (images, feats)
        return self._gallery[name]

    def search(self, name: str, caption: str, k: int = 5):
        """Top-k gallery indices and scores of ``caption`` under model ``name``."""
        model = self.models[name]
        _, feats = self.gallery(name)
        with torch.no_grad():
            scores = model.similarity(model.encode_texts([caption]), feats)[0].cpu()
        top = torch.topk(scores, min(k, len(scores)))
        return top.indices, top.values

    def explain(self, name: str, caption: str, index: int) -> dict:
        """The explanation of gallery image ``index`` for ``caption`` under model ``name`` (cached)."""
        key = (name, caption, index)
        if key not in self._explained:
            images, _ = self.gallery(name)
            self._explained[key] = explain(self.models[name], caption, images[index])
            while len(self._explained) > 64:
                self._explained.popitem(last=False)
        return self._explained[key]

    def tokens(self, name: str, caption: str) -> list[str]:
        """The words / phrases model ``name`` explains for ``caption``."""
        return self.explain(name, caption, int(self.search(name, caption, 1)[0][0]))["tokens"]

    def figure(self, name: str, caption: str, k: int = 5, word: str | None = None,
               query_pid: int | None = None):
        """Top-k images for ``caption`` (true matches green, others red when ``query_pid`` is known,
        as it is for a test caption); with ``word``, the model's map of that word on each image."""
        index, scores = self.search(name, caption, k)
        images, _ = self.gallery(name)
        query_pid = self._pid_of.get(caption) if query_pid is None else query_pid
        exps = [self.explain(name, caption, i) for i in index.tolist()] if word else []
        bars = exps[0].get("bars") if exps else None
        n = len(index) + (bars is not None)
        fig, axes = plt.subplots(1, n, figsize=(max(1.6 * n, 4.5), 4.6), squeeze=False, layout="constrained")
        shown = []
        for j, (ax, i, s) in enumerate(zip(axes[0], index.tolist(), scores.tolist())):
            pid = int(self.eval_set.image_pids[i])
            heat = None
            if word:
                try:
                    heat = token_map(exps[j], word)
                except ValueError:
                    pass
            if heat is not None:
                if heat.shape[-1] == 1:  # stripes: hard edges between the parts
                    heat = F.interpolate(heat[None, None], size=(images.shape[-2], 1), mode="nearest")[0, 0]
                overlay_heatmap(ax, images[i], heat, mean=self.models[name].cfg.data.mean,
                                std=self.models[name].cfg.data.std)
                if "mask" in exps[j]:
                    _contour(ax, exps[j]["mask"], images.shape[-2:])
            else:
                ax.imshow(to_display_image(images[i], mean=self.models[name].cfg.data.mean,
                                           std=self.models[name].cfg.data.std))
                ax.set_axis_off()
            match = None if query_pid is None else pid == query_pid
            colour = {None: "black", True: "green", False: "red"}[match]
            ax.set_title(f"id {pid}\n{s:.3f}", fontsize=8, color=colour)
            shown.append({"index": i, "pid": pid, "score": s, "match": match,
                          "map": None if heat is None else heat.shape})
        if bars is not None:
            try:
                _bars(axes[0, -1], bars, exps[0]["tokens"], word)
            except ValueError:  # a word the model does not explain
                axes[0, -1].set_axis_off()
        kind, width = (exps[0]["kind"] if exps else ""), int(15 * fig.get_figwidth())
        title = f"{name}: “{textwrap.shorten(caption, width)}”"
        if word:
            try:
                used = [exps[0]["tokens"][r] for r in _token_rows(exps[0]["tokens"], word)]
            except ValueError:
                used = ["no map: not among the model's tokens"]
            note = "" if used == [word] else f" (→ {' + '.join(used)})"
            title += "\n" + textwrap.shorten(f"map of “{word}”{note}: {kind}", width)
        fig.suptitle(title, fontsize=8)
        self.last = {"model": name, "caption": caption, "word": word, "kind": kind, "results": shown}
        return fig

    def widget(self):
        """An ipywidgets panel: model, description (free text or a test caption), top-k, and a word
        or phrase the model explains. ``self.controls`` holds the inputs, ``self.last`` the state."""

        captions = list(dict.fromkeys(self.eval_set.captions))[:200]
        c = self.controls = {
            "model": w.Dropdown(options=list(self.models), description="model"),
            "example": w.Dropdown(options=captions, description="example", layout=w.Layout(width="95%")),
            "query": w.Textarea(value=captions[0], description="query", layout=w.Layout(width="95%")),
            "k": w.IntSlider(value=5, min=1, max=10, description="top-k"),
            "word": w.Dropdown(options=["(none)"], description="word"),
        }
        info, out = w.HTML(), w.Output()
        busy = False

        def update(change=None):
            nonlocal busy
            if busy:
                return
            busy = True
            try:
                owner = change["owner"] if change else None
                if owner is c["example"]:
                    c["query"].value = change["new"]
                name, caption = c["model"].value, c["query"].value.strip()
                if owner in (None, c["example"], c["query"], c["model"]):
                    options = ["(none)"] + (self.tokens(name, caption) if caption else [])
                    word = c["word"].value if c["word"].value in options else "(none)"
                    c["word"].options, c["word"].value = options, word
                word = None if c["word"].value == "(none)" else c["word"].value
                out.clear_output(wait=True)
                with out:
                    if not caption:
                        print("type a description")
                        return
                    display(self.figure(name, caption, c["k"].value, word))
                    plt.close("all")
                ids = ", ".join(f"{r['pid']}{'✓' if r['match'] else ''}" for r in self.last["results"])
                info.value = f"<b>{name}</b> top-{len(self.last['results'])}: {ids}" + (
                    f" — <i>{self.last['kind']}</i>" if word else "")
            except ValueError as err:  # e.g. a description the tokenizer rejects
                with out:
                    print(err)
            finally:
                busy = False

        for box in c.values():
            box.observe(update, names="value")
        update()
        return w.VBox([c["model"], c["example"], c["query"], w.HBox([c["k"], c["word"]]), info, out])


def _contour(ax, mask: torch.Tensor, size) -> None:
    """The 0.5 level of a foreground mask, upsampled to the image."""
    up = F.interpolate(mask.float()[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    if up.min() < 0.5 < up.max():
        ax.contour(up.numpy(), levels=[0.5], colors="white", linewidths=0.8)


def _bars(ax, bars: torch.Tensor, tokens: list[str], word: str) -> None:
    """Per-part values of ``word`` as horizontal bars, part 1 on top like the stripes."""
    rows = _token_rows(tokens, word)
    values = bars[rows].float().mean(0).numpy()
    ax.barh(range(len(values)), values, color="tab:orange")
    ax.set_yticks(range(len(values)), [f"part {k + 1}" for k in range(len(values))], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.tick_params(labelsize=7)
    ax.set_title(f"“{word}”", fontsize=8)

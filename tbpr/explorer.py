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

    explorer = Explorer.from_runs("quick")          # the run cache, else the shipped models (train=True: train the rest)
    explorer = Explorer.from_folder("checkpoints")  # or <name>/model.safetensors (+ metrics.json) in a folder
    explorer = Explorer.from_checkpoints({"ssan": "runs/ssan/model.safetensors"})
    explorer = Explorer.from_runs("quick", images="my_photos")  # your own images as the gallery
    explorer.use_images("other_photos")   # or None: the test split again (the widget's "images" box)
    explorer.widget()          # in JupyterLab: search on Enter, one model or all side by side, click to enlarge
    explorer.figure("ssan", "a man in a red jacket and black shorts", word="red")  # headless
    explorer.compare_figure("a man in a red jacket", word="jacket")                # every model
    explorer.words_figure("ssan", "a man in a red jacket", k=10)  # top-10, a row of maps per word (tbpr search)
"""
from __future__ import annotations

import html
import io
import json
import re
import textwrap
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

import ipywidgets as w

from . import experiments, shipped
from .data.datasets import EvalSet, load_eval_images
from .data.formats import Record
from .data.transforms import decode_image
from .data.text import Vocabulary, caption_word_spans, word_tokenize
from .engine import read_checkpoint
from .evaluate import concat_features, score_features
from .papers import MODEL_NAMES, recipe
from .papers.base import SENTENCE
from .viz import to_display_image

__all__ = ["SENTENCE", "Explorer", "explain", "token_map", "unknown_words", "word_ablation_saliency",
           "word_choices"]

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


# ----------------------------------------------------------------------------- the word list
_WORDLIKE = re.compile(r"[a-z0-9]")


def word_choices(tokens: list[str]) -> list[str]:
    """The words / phrases of an explanation worth offering: each once, in reading order, normalised
    (lower case, no punctuation); no punctuation-only chunks (``!!!``), no WordPiece continuations."""
    out = []
    for token in tokens:
        if token == SENTENCE:
            out.append(token)
        elif not token.startswith("##") and _WORDLIKE.search(token.lower()):
            out.append(_norm(token))
    return [t for t in dict.fromkeys(out) if t]


def unknown_words(model, text: str) -> list[str]:
    """Words of ``text`` outside the vocabulary ``model`` was trained with (SSAN drops them, MIA maps
    them to <unk>); [] for WordPiece models (every word has pieces) and models without a vocabulary."""
    vocab = getattr(model, "vocab", None)
    if isinstance(vocab, Vocabulary):
        known = vocab.stoi
    elif isinstance(vocab, (list, tuple)) and vocab and isinstance(vocab[0], str):
        known = set(vocab)
    else:
        return []
    return list(dict.fromkeys(w for w in word_tokenize(text) if w not in known))


def _in_caption(word: str, caption: str) -> bool:
    key = _norm(word)
    return bool(key) and f" {key} " in f" {_norm(caption)} "


# ----------------------------------------------------------------------------- your own images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def read_image_folder(folder) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files of ``folder`` (by suffix, sorted, not its subfolders) that decode, and those
    that do not with the reason; other files are not images and are left alone."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise NotADirectoryError(f"images={str(folder)!r} is not a folder; give the folder holding your "
                                 f"pedestrian images ({', '.join(IMAGE_SUFFIXES)})")
    readable, skipped = [], []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        try:
            decode_image(path)  # a full decode: a truncated file passes PIL's verify()
        except Exception as err:  # PIL raises many kinds (OSError, SyntaxError, DecompressionBombError)
            reason = str(err).splitlines()[0] if str(err) else ""
            skipped.append((path, f"{type(err).__name__}: {reason}" if reason else type(err).__name__))
        else:
            readable.append(path)
    if not readable:
        raise FileNotFoundError(f"{folder}: no readable image ({', '.join(IMAGE_SUFFIXES)})"
                                + (f"; {len(skipped)} could not be read" if skipped else ""))
    return readable, skipped


# ----------------------------------------------------------------------------- maps on images
def _heat(exp: dict, word: str, size) -> torch.Tensor | None:
    """The map of ``word`` upsampled to the image (stripes with hard edges), raw values; None when
    the model does not explain the word."""
    try:
        heat = token_map(exp, word)
    except ValueError:
        return None
    if heat.shape[-1] == 1:
        return F.interpolate(heat[None, None], size=tuple(size), mode="nearest")[0, 0]
    return F.interpolate(heat[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def _scaled(heats: dict, shared: bool) -> tuple[dict, Normalize, str]:
    """Per-image min–max stretch (each map to [0, 1]) or one scale over all maps (raw values)."""
    maps = [h for h in heats.values() if h is not None]
    if shared and maps:
        lo, hi = min(float(h.min()) for h in maps), max(float(h.max()) for h in maps)
        return heats, Normalize(lo, hi if hi > lo else lo + 1e-6), "one scale across images"

    def stretch(h):
        span = h.max() - h.min()
        return (h - h.min()) / span if span > 0 else torch.zeros_like(h)
    return ({i: None if h is None else stretch(h) for i, h in heats.items()}, Normalize(0, 1),
            "per image: 0 its lowest, 1 its highest")


def _tile(ax, image, heat, norm, data_cfg, title="", colour="black", mask=None):
    """One image, its map on top (when given), a coloured frame (green true match / red other)."""
    ax.imshow(to_display_image(image, mean=data_cfg.mean, std=data_cfg.std))
    drawn = None
    if heat is not None:
        drawn = ax.imshow(heat.numpy(), cmap="jet", alpha=0.5, norm=norm)
        if mask is not None:
            _contour(ax, mask, image.shape[-2:])
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3 if colour != "black" else 0.5)
    ax.set_title(title, fontsize=9, color=colour)
    return drawn


def _colourbar(fig, cax, norm, label):
    fig.colorbar(ScalarMappable(norm=norm, cmap="jet"), cax=cax)
    cax.tick_params(labelsize=8)
    cax.set_ylabel(label, fontsize=8)


MATCH = {None: "black", True: "#2ca02c", False: "#d62728"}
# left out of a grid's default words: they say little about a person's look
FUNCTION_WORDS = frozenset("a an the in on of at to for by from with and or but is are was be been being "
                           "has have had his her hers its it he she they their them this that these those "
                           "who which while".split())


# ----------------------------------------------------------------------------- models on demand
class LazyModels(Mapping):
    """``{name: model}`` whose models are built from their checkpoints when first looked up (each
    takes ~1 s and ~100 MB; a fresh start shows one model first), then kept. Iterating gives the
    names without loading anything; ``loaded`` names those built so far."""

    def __init__(self, loaders: dict, device: str = "cpu"):
        self._loaders = dict(loaders)  # name -> checkpoint path, or a zero-argument function
        self._device = device
        self._models: dict = {}

    def __getitem__(self, name: str):
        if name not in self._models:
            source = self._loaders[name]
            model = source() if callable(source) else _load_checkpoint(source, self._device)
            self._models[name] = model.eval()
        return self._models[name]

    def __iter__(self):
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    @property
    def loaded(self) -> list[str]:
        return [n for n in self._loaders if n in self._models]


def _load_checkpoint(path, device: str):
    meta = read_checkpoint(path)
    cfg = experiments.get_config(meta["model"], "paper", meta["config"])
    return experiments.load_trained(meta["model"], cfg, path).to(device)


# ----------------------------------------------------------------------------- the explorer
class Explorer:
    """Retrieval + the models' own word maps for one or more trained models over a test split.

    ``metrics`` (``{name: {"R1": ...}}``, e.g. a run's result) is shown beside each model; missing
    ones are computed on the gallery when first shown (``r1``)."""

    COLUMNS = 5   # result tiles per row: more results add rows, so tiles, ids and scores keep their size
    TILE = 2.3    # inches: the height of one result tile
    DPI = 90      # of the widget's images (ids and scores at 9 pt stay readable)

    def __init__(self, models: dict, records=None, batch_size: int = 64, metrics: dict | None = None,
                 images=None):
        """``records``: the split whose images are the gallery (its captions are the example queries);
        ``images``: a folder of your own images searched instead (``use_images``)."""
        if records is None and images is None:
            raise ValueError("Explorer needs a gallery: records (a split) or images= (a folder of images)")
        # checkpoints are built when first shown (LazyModels); models given built are used as they are
        self.models = models if isinstance(models, LazyModels) else {name: m.eval() for name, m in models.items()}
        self.batch_size = batch_size
        self.metrics = {name: dict(m) for name, m in (metrics or {}).items() if m}
        self._split = list(records or [])
        self._explained: OrderedDict = OrderedDict()  # (model, caption, image index) -> explanation
        self._ranked: OrderedDict = OrderedDict()     # (model, caption) -> (scores, order, ranks)
        self.last: dict = {}  # what the latest figure showed (the widget's state, for tests)
        self.sources: dict[str, str] = {}  # where each model came from (from_runs: run cache / shipped)
        self.searches = self.redraws = 0  # the widget's counters: rankings asked for, figures drawn
        self.use_images(images)

    def use_images(self, images=None) -> list[tuple[Path, str]]:
        """Search the image files in folder ``images`` (your own pedestrian photos; resized to each
        model's input) instead of the split, or the split again with None. Returns the files that
        could not be read, with why; they are skipped (also kept in ``skipped``)."""
        if images is None:
            if not self._split:
                raise ValueError("no split to go back to: this explorer was made for a folder of images")
            records, self.skipped, self.folder = self._split, [], None
        else:
            paths, self.skipped = read_image_folder(images)
            records, self.folder = [Record(-1, p, [], p.name, -1) for p in paths], Path(images)
        self.eval_set = EvalSet(records)
        self._pid_of = dict(zip(self.eval_set.captions, (int(p) for p in self.eval_set.caption_pids)))
        self._gallery: dict[str, tuple] = {}
        self._explained.clear()
        self._ranked.clear()
        return self.skipped

    @property
    def example_captions(self) -> list[str]:
        """The split's captions, each once (queries whose person is known), also while a folder is searched."""
        return list(dict.fromkeys(c for r in self._split for c in r.captions))

    def label(self, index: int) -> str:
        """How gallery image ``index`` is named in titles: its person id, or its file name."""
        if self.folder is not None:
            return textwrap.shorten(Path(self.eval_set.image_paths[index]).name, 22, placeholder="…")
        return f"id {int(self.eval_set.image_pids[index])}"

    # -- where models come from
    @classmethod
    def from_checkpoints(cls, checkpoints: dict, dataset: str = "synthpedes", data_root=None,
                         profile: str = "quick", split: str = "test", device: str = "cpu",
                         metrics: dict | None = None, images=None) -> "Explorer":
        """Models rebuilt from tbpr checkpoints ``{name: model.safetensors or its run folder}``
        (each with the vocabulary saved in it; built when first shown, ``LazyModels``); ``split`` of
        the dataset is the gallery (SynthPedes: that split alone when the cache has no full render: ``shipped.split_records``),
        or the folder ``images``. A model's
        metrics come from ``metrics`` or else from the ``result.json`` / ``metrics.json`` beside its
        checkpoint (a run folder of the cache holds the first)."""
        paths, found = {}, dict(metrics or {})
        for name, path in checkpoints.items():
            paths[name] = path = Path(path) / "model.safetensors" if Path(path).is_dir() else Path(path)
            read_checkpoint(path)  # a missing or damaged file is named now, not when its model is first shown
            found.setdefault(name, _metrics_beside(path))
        records = shipped.split_records(dataset, data_root, profile, split)
        return cls(LazyModels(paths, device), records, metrics=found, images=images)

    @classmethod
    def from_folder(cls, folder, models=None, **kwargs) -> "Explorer":
        """Every checkpoint in ``folder`` (shipped or copied models): ``<name>/model.safetensors`` or
        ``<name>.safetensors``, optionally with ``metrics.json`` beside it; ``models`` picks names."""
        folder = Path(folder)
        paths = {p.parent.name: p for p in sorted(folder.glob("*/model.safetensors"))}
        paths.update({p.stem: p for p in sorted(folder.glob("*.safetensors")) if p.stem not in paths})
        paths = {n: p for n, p in paths.items() if models is None or n in models}
        if not paths:
            raise FileNotFoundError(f"no checkpoint (<name>/model.safetensors or <name>.safetensors) in {folder}")
        return cls.from_checkpoints(paths, **kwargs)

    @classmethod
    def from_runs(cls, profile: str = "quick", models=None, *, dataset: str = "synthpedes",
                  data_root=None, device: str = "cpu", train: bool = False, fallback=None,
                  progress: bool = True, images=None) -> "Explorer":
        """The full configuration of each model at ``profile`` (seed 0): its run in the cache, else
        ``<name>/model.safetensors`` or ``<name>.safetensors`` in ``fallback`` (a folder of
        checkpoints), else the shipped model of that config (``tbpr.shipped``), else trained now when
        ``train``. Models found nowhere are left out, named in a warning; ``sources`` says where each
        came from. ``images``: a folder of your own images as the gallery."""
        checkpoints, metrics, sources, missing = {}, {}, {}, []
        for name in models or MODEL_NAMES:
            result = experiments.run(name, profile, cache_only=True, dataset=dataset, data_root=data_root,
                                     device=device, progress=progress)
            copied = None if fallback is None else next(
                (p for p in (Path(fallback) / name / "model.safetensors", Path(fallback) / f"{name}.safetensors")
                 if p.is_file()), None)
            ready = shipped.find(name, profile) if dataset == "synthpedes" and result is None and copied is None else None
            if result is None and copied is None and ready is None and train:
                result = experiments.run(name, profile, dataset=dataset, data_root=data_root, device=device,
                                         progress=progress)
            if result is not None:
                checkpoints[name], metrics[name], sources[name] = result.run_dir, result.metrics, f"run cache {result.run_dir}"
            elif copied is not None:
                checkpoints[name], sources[name] = copied, str(copied)
            elif ready is not None:
                checkpoints[name], metrics[name] = ready, shipped.manifest(name)["metrics"]
                sources[name] = shipped.describe(name)
            else:
                missing.append(name)
        if missing:
            warnings.warn(f"no trained {', '.join(missing)} at profile {profile!r} in the run cache"
                          + ("" if fallback is None else f" or in {fallback}") + " and none shipped"
                          + f"; train with experiments.run(name, {profile!r}) or pass train=True")
        if not checkpoints:
            raise FileNotFoundError(f"no trained model at profile {profile!r} to explore")
        explorer = cls.from_checkpoints(checkpoints, dataset=dataset, data_root=data_root, profile=profile,
                                        device=device, metrics=metrics, images=images)
        explorer.sources = sources
        return explorer

    # -- retrieval
    def gallery(self, name: str):
        """Gallery images and features of model ``name``, encoded once."""
        if name not in self._gallery:
            model = self.models[name]
            images = load_eval_images(self.eval_set.image_paths, model.cfg.data)
            with torch.no_grad():
                feats = [model.encode_images(images[i:i + self.batch_size].to(model.device))
                         for i in range(0, len(images), self.batch_size)]
            self._gallery[name] = (images, concat_features(feats))
        return self._gallery[name]

    def _ranking(self, name: str, caption: str):
        """(scores, gallery order best first, 0-based rank of each image) of ``caption``, cached."""
        key = (name, caption)
        if key not in self._ranked:
            model = self.models[name]
            _, feats = self.gallery(name)
            with torch.no_grad():
                scores = model.similarity(model.encode_texts([caption]), feats)[0].float().cpu()
            order = torch.argsort(scores, descending=True, stable=True)
            ranks = torch.empty_like(order)
            ranks[order] = torch.arange(len(order))
            self._ranked[key] = (scores, order, ranks)
            while len(self._ranked) > 256:
                self._ranked.popitem(last=False)
        return self._ranked[key]

    def search(self, name: str, caption: str, k: int = 5):
        """Top-k gallery indices and scores of ``caption`` under model ``name``."""
        scores, order, _ = self._ranking(name, caption)
        index = order[:min(k, len(order))]
        return index, scores[index]

    def truth(self, name: str, caption: str, k: int = 5, query_pid: int | None = None) -> list[dict] | None:
        """The gallery images of the caption's person (known for a test caption, or ``query_pid``),
        best ranked first: ``{"index", "rank" (1 = top), "in_top_k"}``; None when the person is unknown."""
        pid = self._pid_of.get(caption) if query_pid is None else query_pid
        if pid is None:
            return None
        _, _, ranks = self._ranking(name, caption)
        rows = [{"index": i, "rank": int(ranks[i]) + 1, "in_top_k": int(ranks[i]) < k}
                for i in (self.eval_set.image_pids == pid).nonzero().flatten().tolist()]
        return sorted(rows, key=lambda r: r["rank"])

    def r1(self, name: str) -> float | None:
        """R@1 (%) of model ``name`` on the split: from ``metrics``, else computed once on the split's
        gallery; None when unknown while a folder of images is the gallery (no captions to score)."""
        if "R1" not in self.metrics.get(name, {}) and self.folder is not None:
            return None
        if "R1" not in self.metrics.get(name, {}):
            model, (_, feats) = self.models[name], self.gallery(name)
            captions = self.eval_set.captions
            with torch.no_grad():
                text = concat_features([model.encode_texts(captions[i:i + self.batch_size])
                                        for i in range(0, len(captions), self.batch_size)])
            found = score_features(model, text, feats, self.eval_set.caption_pids, self.eval_set.image_pids)
            self.metrics.setdefault(name, {})["R1"] = float(found["R1"])
        return float(self.metrics[name]["R1"])

    # -- explanations
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
        """The words / phrases model ``name`` explains for ``caption`` (as the model gives them)."""
        return self.explain(name, caption, int(self.search(name, caption, 1)[0][0]))["tokens"]

    def words(self, caption: str, names=None, keep: str | None = None) -> list[tuple[str, str]]:
        """The word list of ``caption`` for models ``names``: ``(label, word)`` pairs, each word once,
        labelled when a model does not know it; ``keep`` (a word of the caption) stays listed."""
        names = list(names or self.models)
        values = list(dict.fromkeys(v for n in names for v in word_choices(self.tokens(n, caption))))
        if keep and keep not in values and _in_caption(keep, caption):
            values.append(keep)
        unknown = {n: unknown_words(self.models[n], caption) for n in names}
        values += [u for u in dict.fromkeys(u for n in names for u in unknown[n]) if u not in values]  # marked
        unknown = {n: set(u) for n, u in unknown.items()}
        pairs = []
        for value in values:
            strangers = [n for n in names if set(word_tokenize(value)) & unknown[n]]
            pairs.append((f"{value}  ⚠ unknown to {', '.join(strangers)}" if strangers else value, value))
        return pairs

    # -- figures
    def figure(self, name: str, caption: str, k: int = 5, word: str | None = None,
               query_pid: int | None = None, shared_scale: bool = False):
        """Top-k images for ``caption`` in rows of ``COLUMNS`` (true matches framed green, others red
        when the person is known, as for a test caption), then a row with the true person's images
        and their ranks; with ``word``, the model's map of that word on each image and a colour bar
        (per-image stretch, or ``shared_scale``: one scale across the images)."""
        model = self.models[name]
        images, _ = self.gallery(name)
        index, scores = self.search(name, caption, k)
        index = index.tolist()
        truth = self.truth(name, caption, k, query_pid)
        pid = self._pid_of.get(caption) if query_pid is None else query_pid
        cols = min(len(index), self.COLUMNS)
        true_shown = [t["index"] for t in (truth or [])][:cols]
        exps = {i: self.explain(name, caption, i) for i in dict.fromkeys(index + true_shown)} if word else {}
        heats, norm, scale = _scaled({i: _heat(e, word, images.shape[-2:]) for i, e in exps.items()}, shared_scale)
        bars = exps[index[0]].get("bars") if word else None
        rows = -(-len(index) // cols) + bool(truth)
        extra = [0.12] * bool(word) + [1.8] * (bars is not None)  # colour bar, SSAN's bars
        tile_w = self.TILE * max(images.shape[-1] / images.shape[-2], 0.5) + 0.25
        fig = plt.figure(figsize=(tile_w * cols + sum(extra) + 0.8, self.TILE * rows + 1.0), layout="constrained")
        grid = fig.add_gridspec(rows, cols + len(extra), width_ratios=[1] * cols + [e / tile_w for e in extra])
        shown, maps = [], 0
        for r, (i, s) in enumerate(zip(index, scores.tolist())):
            ax = fig.add_subplot(grid[r // cols, r % cols])
            gallery_pid = int(self.eval_set.image_pids[i])
            match = None if pid is None else gallery_pid == pid
            heat = heats.get(i)
            _tile(ax, images[i], heat, norm, model.cfg.data, f"#{r + 1} · {self.label(i)}\n{s:.3f}",
                  MATCH[match], exps[i].get("mask") if word else None)
            maps += heat is not None
            shown.append({"index": i, "pid": gallery_pid, "label": self.label(i), "score": s, "match": match,
                          "rank": r + 1, "map": None if heat is None else tuple(heat.shape)})
        if truth:
            for j, t in enumerate(truth[:cols]):
                ax = fig.add_subplot(grid[rows - 1, j])
                _tile(ax, images[t["index"]], heats.get(t["index"]), norm, model.cfg.data,
                      f"rank {t['rank']}" + ("" if t["in_top_k"] else f"\nnot in top-{k}"),
                      MATCH[t["in_top_k"]], exps[t["index"]].get("mask") if word else None)
                if j == 0:
                    ax.set_ylabel(f"true person\nid {pid}", fontsize=9)
        if word and maps:
            _colourbar(fig, fig.add_subplot(grid[:, cols]), norm, scale)
        if bars is not None:
            ax = fig.add_subplot(grid[0, -1])
            try:
                _bars(ax, bars, exps[index[0]]["tokens"], word)
            except ValueError:  # a word the model does not explain
                ax.set_axis_off()
        kind = exps[index[0]]["kind"] if exps else ""
        title = f"{name}: “{textwrap.shorten(caption, int(14 * fig.get_figwidth()))}”"
        if truth is not None:
            title += "\n" + _truth_line(truth, k, pid)
        if word:
            title += "\n" + _map_line(exps[index[0]], word, kind, int(14 * fig.get_figwidth()))
        fig.suptitle(title, fontsize=9)
        self.last = {"view": "one", "model": name, "caption": caption, "word": word, "kind": kind, "k": k,
                     "results": shown, "truth": truth, "shared_scale": shared_scale,
                     "figsize": tuple(fig.get_size_inches())}
        return fig

    def compare_figure(self, caption: str, k: int = 5, word: str | None = None, names=None,
                       query_pid: int | None = None, shared_scale: bool = False):
        """Every model (or ``names``) side by side for one query: a block of top-k rows per model,
        headed by the model's R@1 on the gallery and the rank of the true person (when known)."""
        names = list(names or self.models)
        pid = self._pid_of.get(caption) if query_pid is None else query_pid
        cols = min(k, self.COLUMNS)
        per = -(-k // cols)
        first = self.gallery(names[0])[0]
        tile_w = self.TILE * max(first.shape[-1] / first.shape[-2], 0.5) + 0.25
        found, heats, exps = {}, {}, {}
        for name in names:
            index, scores = self.search(name, caption, k)
            found[name] = (index.tolist(), scores.tolist())
            if word:
                for i in found[name][0]:
                    exps[name, i] = self.explain(name, caption, i)
                    heats[name, i] = _heat(exps[name, i], word, self.gallery(name)[0].shape[-2:])
        heats, norm, scale = _scaled(heats, shared_scale)
        fig = plt.figure(figsize=(tile_w * cols + 1.6 + 0.12 * bool(word), self.TILE * per * len(names) + 0.8),
                         layout="constrained")
        grid = fig.add_gridspec(per * len(names), cols + 1 + bool(word),
                                width_ratios=[1.4 / tile_w] + [1] * cols + [0.12 / tile_w] * bool(word))
        rows = {}
        for m, name in enumerate(names):
            images, model = self.gallery(name)[0], self.models[name]
            truth = self.truth(name, caption, k, query_pid)
            head = fig.add_subplot(grid[m * per:(m + 1) * per, 0])
            head.set_axis_off()
            r1 = self.r1(name)
            note = "" if truth is None else ("\n" + (f"true: rank {truth[0]['rank']}" if truth else "true: not in gallery"))
            head.text(1, 0.5, f"{name}\n{_r1_text(r1)}{note}", ha="right", va="center", fontsize=10,
                      transform=head.transAxes)
            shown = []
            for r, (i, s) in enumerate(zip(*found[name])):
                ax = fig.add_subplot(grid[m * per + r // cols, 1 + r % cols])
                gallery_pid = int(self.eval_set.image_pids[i])
                match = None if pid is None else gallery_pid == pid
                _tile(ax, images[i], heats.get((name, i)), norm, model.cfg.data,
                      f"#{r + 1} · {self.label(i)}\n{s:.3f}", MATCH[match],
                      exps[name, i].get("mask") if word else None)
                shown.append({"index": i, "pid": gallery_pid, "label": self.label(i), "score": s, "match": match, "rank": r + 1,
                              "map": None if heats.get((name, i)) is None else tuple(heats[name, i].shape)})
            rows[name] = {"R1": r1, "results": shown, "truth": truth}
        if word and any(h is not None for h in heats.values()):
            _colourbar(fig, fig.add_subplot(grid[:, -1]), norm, scale)
        title = f"“{textwrap.shorten(caption, int(14 * fig.get_figwidth()))}”" + (f" · map of “{word}”" if word else "")
        fig.suptitle(title, fontsize=10)
        self.last = {"view": "all", "caption": caption, "word": word, "k": k, "models": rows,
                     "shared_scale": shared_scale, "figsize": tuple(fig.get_size_inches())}
        return fig

    def detail_figure(self, name: str, caption: str, index: int, word: str | None = None,
                      k: int = 5, shared_scale: bool = False):
        """Gallery image ``index`` enlarged: the raw image, beside it the map of ``word`` on it, and a
        colour bar; ``shared_scale`` takes the scale over the top-k images of ``caption``."""
        model, (images, _) = self.models[name], self.gallery(name)
        _, _, ranks = self._ranking(name, caption)
        exp = self.explain(name, caption, index) if word else None
        heat = _heat(exp, word, images.shape[-2:]) if word else None
        if shared_scale and heat is not None:
            others = {i: _heat(self.explain(name, caption, i), word, images.shape[-2:])
                      for i in self.search(name, caption, k)[0].tolist()}
            others[index] = heat
            scaled, norm, scale = _scaled(others, True)
        else:
            scaled, norm, scale = _scaled({index: heat}, False)
        width = self.TILE * 2 * images.shape[-1] / images.shape[-2]
        fig, axes = plt.subplots(1, 3, figsize=(2 * width + 1.4, self.TILE * 2 + 0.8), layout="constrained",
                                 gridspec_kw={"width_ratios": [1, 1, 0.08]})
        pid = self._pid_of.get(caption)
        gallery_pid = int(self.eval_set.image_pids[index])
        match = None if pid is None else gallery_pid == pid
        _tile(axes[0], images[index], None, norm, model.cfg.data, "image", MATCH[match])
        _tile(axes[1], images[index], scaled[index], norm, model.cfg.data,
              f"map of “{word}”" if heat is not None else ("no map: pick a word" if not word else
                                                            f"no map: “{word}” not explained"),
              MATCH[match], exp.get("mask") if exp else None)
        if heat is not None:
            _colourbar(fig, axes[2], norm, scale)
        else:
            axes[2].set_axis_off()
        title = f"{name} · {self.label(index)} · rank {int(ranks[index]) + 1} · score {float(self._ranking(name, caption)[0][index]):.3f}"
        if exp:
            title += "\n" + _map_line(exp, word, exp["kind"], 60)
        fig.suptitle(title, fontsize=9)
        self.last["enlarged"] = {"model": name, "index": index, "pid": gallery_pid, "rank": int(ranks[index]) + 1,
                                 "word": word, "map": None if heat is None else tuple(heat.shape),
                                 "scale": scale if heat is not None else None}
        return fig

    def query_words(self, name: str, caption: str) -> list[str]:
        """The words / phrases of ``caption`` that model ``name`` explains, without function words
        (articles, prepositions, pronouns, forms of be / have) and without MIA's whole-sentence map."""
        return [w for w in word_choices(self.tokens(name, caption))
                if w != SENTENCE and not set(w.split()) <= FUNCTION_WORDS]

    def words_figure(self, name: str, caption: str, k: int = 10, words=None):
        """The top-k images of ``caption`` in one row (rank, file or id, score), then one row per word
        (default ``query_words``) with model ``name``'s map of it on each image, stretched per image.
        Words the model has no map for get no row; ``self.last["no_map"]`` names them."""
        model, (images, _) = self.models[name], self.gallery(name)
        index, scores = self.search(name, caption, k)
        index, scores = index.tolist(), scores.tolist()
        words = list(dict.fromkeys(words or self.query_words(name, caption)))
        exps = {i: self.explain(name, caption, i) for i in index}
        rows, no_map = {}, []
        for word in words:
            heats = {i: _heat(exps[i], word, images.shape[-2:]) for i in index}
            if all(h is None for h in heats.values()):
                no_map.append(word)
            else:
                rows[word] = _scaled(heats, False)[0]
        tile_h = self.TILE * 0.75
        tile_w = max(tile_h * max(images.shape[-1] / images.shape[-2], 0.5) + 0.15, 1.3)  # 16-character names fit
        fig, axes = plt.subplots(1 + len(rows), len(index), squeeze=False, layout="constrained",
                                 figsize=(tile_w * len(index) + 0.9, tile_h * (1 + len(rows)) + 0.9))
        for c, (i, s) in enumerate(zip(index, scores)):
            _tile(axes[0, c], images[i], None, None, model.cfg.data,
                  f"#{c + 1} · {s:.3f}\n{textwrap.shorten(self.label(i), 16, placeholder='…')}")
            for r, heats in enumerate(rows.values(), start=1):
                _tile(axes[r, c], images[i], heats[i], Normalize(0, 1), model.cfg.data, mask=exps[i].get("mask"))
        axes[0, 0].set_ylabel("image", fontsize=9)
        for r, word in enumerate(rows, start=1):
            axes[r, 0].set_ylabel(textwrap.fill(word, 14), fontsize=9)
        kind = exps[index[0]]["kind"]
        title = f"{name}: “{textwrap.shorten(caption, int(14 * fig.get_figwidth()))}”"
        if rows:
            title += f"\n{textwrap.shorten(kind, int(14 * fig.get_figwidth()))}; each map stretched to its image's range"
        fig.suptitle(title, fontsize=9)
        self.last = {"view": "words", "model": name, "caption": caption, "kind": kind, "words": list(rows),
                     "no_map": no_map, "results": [{"index": i, "label": self.label(i), "score": s, "rank": c + 1,
                                                    "path": str(self.eval_set.image_paths[i])}
                                                   for c, (i, s) in enumerate(zip(index, scores))]}
        return fig

    # -- the widget
    def widget(self, k: int = 5):
        """An ipywidgets panel. Search on Enter in the query box or with the button (or by picking a
        test caption); the view shows one model (results clickable: ``enlarge``) or all models side by
        side. ``self.controls`` holds the inputs, ``self.panels`` the outputs, ``self.last`` the state."""
        captions = self.example_captions[:200]
        names = list(self.models)
        wide = w.Layout(width="95%")
        c = self.controls = {
            "model": w.Dropdown(options=names, description="model"),
            "view": w.ToggleButtons(options=[("one model", "one"), ("all models", "all")], value="one",
                                    description="view", style={"button_width": "90px"}),
            "example": w.Dropdown(options=captions, description="test caption", layout=wide),
            "query": w.Text(value=captions[0] if captions else "a woman in a red jacket", description="query", continuous_update=False,
                            placeholder="describe a person, then press Enter", layout=w.Layout(width="80%")),
            "search": w.Button(description="search", button_style="primary", icon="search"),
            "k": w.IntSlider(value=k, min=1, max=10, description="top-k", continuous_update=False),
            "word": w.Dropdown(options=[("(none)", "")], value="", description="word"),
            "shared": w.Checkbox(value=False, description="one colour scale across images", indent=False),
            "enlarge": w.ToggleButtons(options=[], description="enlarge", style={"button_width": "auto"}),
            "images": w.Text(value="" if self.folder is None else str(self.folder), description="images",
                             continuous_update=False, layout=w.Layout(width="80%"),
                             placeholder="a folder of your own pedestrian images, then Enter (empty: the test split)"),
        }
        p = self.panels = {"info": w.HTML(), "results": w.Image(format="png"), "detail": w.Image(format="png")}
        state = {"busy": False}

        def guarded(fn):
            def handler(change=None):
                if state["busy"]:
                    return
                state["busy"] = True
                try:
                    fn(change)
                except (ValueError, OSError) as err:  # a description the tokenizer rejects, a wrong folder
                    _show(p["results"], None)
                    p["info"].value = f"<span style='color:#d62728'>{html.escape(str(err))}</span>"
                finally:
                    state["busy"] = False
            return handler

        def shown_models():
            return [c["model"].value] if c["view"].value == "one" else names

        def clear():
            for box in ("results", "detail"):
                _show(p[box], None)
            c["enlarge"].options = []
            c["word"].options, c["word"].value = [("(none)", "")], ""
            p["info"].value = "<i>type a description and press Enter</i>"
            self.last = {}

        def search(_=None):
            caption = c["query"].value.strip()
            if not caption:
                return clear()
            self.searches += 1
            start = time.perf_counter()
            for name in shown_models():
                self._ranking(name, caption)
            keep = c["word"].value
            pairs = [("(none)", "")] + self.words(caption, shown_models(), keep=keep or None)
            c["word"].options = pairs
            c["word"].value = keep if keep in [v for _, v in pairs] else ""
            draw(start=start)

        def draw(_=None, start=None):
            caption = c["query"].value.strip()
            if not caption:
                return clear()
            start = time.perf_counter() if start is None else start
            word = c["word"].value or None
            one = c["view"].value == "one"
            c["model"].disabled = not one
            if one:
                fig = self.figure(c["model"].value, caption, c["k"].value, word, shared_scale=c["shared"].value)
            else:
                fig = self.compare_figure(caption, c["k"].value, word, shared_scale=c["shared"].value)
            _show(p["results"], fig)
            self.redraws += 1
            _show(p["detail"], None)
            c["enlarge"].options = [(f"#{r['rank']} {r['label']}", r["index"]) for r in self.last["results"]] if one else []
            c["enlarge"].layout.display = None if one else "none"
            self.last["seconds"] = seconds = time.perf_counter() - start
            p["info"].value = _info_html(self, caption, word, seconds)

        def enlarge(change=None):
            index = c["enlarge"].value
            if index is None or c["view"].value != "one" or not self.last:
                return
            word = c["word"].value or None
            fig = self.detail_figure(c["model"].value, c["query"].value.strip(), index, word, c["k"].value,
                                     c["shared"].value)
            _show(p["detail"], fig)

        def redraw(change=None):
            index = c["enlarge"].value
            draw()
            if index is not None and index in [v for _, v in c["enlarge"].options]:
                c["enlarge"].value = index
                enlarge()

        def pick_images(change):
            folder = c["images"].value.strip()
            if (Path(folder).expanduser() if folder else None) != self.folder:
                self.use_images(folder or None)
            search()

        def pick_example(change):
            c["query"].value = change["new"]
            search()

        c["example"].observe(guarded(pick_example), names="value")
        c["images"].observe(guarded(pick_images), names="value")
        c["query"].observe(guarded(search), names="value")  # Enter (or leaving the box), not keystrokes
        c["search"].on_click(guarded(search))
        for box in ("model", "view"):
            c[box].observe(guarded(search), names="value")
        for box in ("k", "word", "shared"):
            c[box].observe(guarded(redraw), names="value")
        c["enlarge"].observe(guarded(enlarge), names="value")
        guarded(search)()
        return w.VBox([w.HBox([c["model"], c["view"]]), c["images"], c["example"], w.HBox([c["query"], c["search"]]),
                       w.HBox([c["k"], c["word"], c["shared"]]), p["info"], p["results"], c["enlarge"],
                       p["detail"]])


def _show(image: w.Image, fig) -> None:
    """Put ``fig`` into an image widget as PNG (swapped in whole: no flicker), or empty and hide it."""
    if fig is None:
        image.value, image.layout.display = b"", "none"
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=Explorer.DPI)
    plt.close(fig)
    image.value, image.layout.display = buffer.getvalue(), None


def _r1_text(r1: float | None) -> str:
    return "R@1 n/a" if r1 is None else f"R@1 {r1:.1f} %"


def _metrics_beside(path: Path) -> dict:
    """Metrics saved beside a checkpoint: a run's ``result.json``, a ``metrics.json``, or the manifest
    ``<name>.json`` of a shipped ``<name>.safetensors``."""
    for name, pick in (("result.json", lambda d: d.get("metrics")), ("metrics.json", lambda d: d),
                       (f"{path.stem}.json", lambda d: d.get("metrics"))):
        try:
            found = pick(json.loads((path.parent / name).read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(found, dict) and "R1" in found:
            return found
    return {}


def _truth_line(truth: list[dict], k: int, pid) -> str:
    if not truth:
        return f"true person id {pid}: no image in the gallery"
    ranks = ", ".join(str(t["rank"]) for t in truth[:8])
    found = "found" if truth[0]["in_top_k"] else f"not in top-{k}"
    return f"true person id {pid}: {found} (rank {ranks})"


def _map_line(exp: dict, word: str, kind: str, width: int) -> str:
    try:
        used = [exp["tokens"][r] for r in _token_rows(exp["tokens"], word)]
    except ValueError:
        used = ["no map: not among the model's tokens"]
    note = "" if [_norm(u) for u in used] == [_norm(word)] else f" (→ {' + '.join(used)})"
    return textwrap.shorten(f"map of “{word}”{note}: {kind}", width)


def _info_html(explorer: Explorer, caption: str, word, seconds: float) -> str:
    """The line under the controls: what was found, the true person's rank, unknown words, timing."""
    last, esc = explorer.last, html.escape
    if last["view"] == "one":
        name = last["model"]
        ids = ", ".join(f"{r['pid'] if explorer.folder is None else r['label']}{'✓' if r['match'] else ''}"
                        for r in last["results"])
        r1 = explorer.metrics.get(name, {}).get("R1")
        parts = [f"<b>{esc(name)}</b>" + (f" (R@1 {r1:.1f} %)" if r1 is not None else ""),
                 f"top-{len(last['results'])}: {ids}"]
        if last["truth"] is not None:
            parts.append(esc(_truth_line(last["truth"], last["k"], explorer._pid_of.get(caption))))
        if word:
            parts.append(f"<i>{esc(last['kind'])}</i>")
        models = [name]
    else:
        parts = [" · ".join(f"<b>{esc(n)}</b> {_r1_text(row['R1'])}"
                            + ("" if not row["truth"] else f", true rank {row['truth'][0]['rank']}")
                            for n, row in last["models"].items())]
        models = list(last["models"])
    for name in models:
        unknown = unknown_words(explorer.models[name], caption)
        if unknown:
            parts.append(f"<span style='color:#d62728'>{esc(name)} does not know: {esc(', '.join(unknown))}</span>")
    if explorer.folder is not None:
        parts.append(esc(f"gallery: {len(explorer.eval_set.image_paths)} images of {explorer.folder}"))
    if explorer.skipped:
        names = ", ".join(p.name for p, _ in explorer.skipped[:10]) + (" …" if len(explorer.skipped) > 10 else "")
        parts.append(f"<span style='color:#d62728'>skipped (unreadable): {esc(names)}</span>")
    parts.append(f"answered in {seconds:.2f} s")
    return " — ".join(parts)


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

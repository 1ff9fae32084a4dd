"""The attention explorer: type a description, see what a trained model retrieves and where each
word of the description lands on the retrieved images.

Word maps come from the model's own internals when it has them (``model.explain(caption, image)``
returning ``{"tokens": [...], "maps": Tensor[n_tokens, h, w], "kind": "<what the maps are>"}``, e.g.
SSAN's WAM word→stripe probabilities or IVT's word-level alignment). Otherwise a model-agnostic
*word-ablation saliency* is used: for word w, the gradient with respect to the image of
``s(caption) - s(caption without w)``, times the image — the pixels whose change moves the
similarity that w contributes.

    explorer = Explorer({"ssan": model}, test_records)
    explorer.widget()          # in JupyterLab
    explorer.figure("ssan", "a man in a red jacket and black shorts", word="red")  # headless
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .viz import overlay_heatmap, to_display_image


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
    """The model's own word maps when it has them, else the word-ablation saliency."""
    if callable(getattr(model, "explain", None)):
        return model.explain(caption, image)
    return word_ablation_saliency(model, caption, image)


class Explorer:
    """Retrieval + word maps for one or more trained models over a test split."""

    def __init__(self, models: dict, records, batch_size: int = 64):
        from .data.datasets import EvalSet
        self.models = {name: m.eval() for name, m in models.items()}
        self.eval_set = EvalSet(records)
        self.batch_size = batch_size
        self._gallery: dict[str, tuple] = {}

    def gallery(self, name: str):
        """Gallery images and features of model ``name``, encoded once."""
        if name not in self._gallery:
            from .data.datasets import load_eval_images
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

    def figure(self, name: str, caption: str, k: int = 5, word: str | None = None,
               query_pid: int | None = None):
        """Top-k images for ``caption``; with ``word``, that word's map drawn on each image."""
        index, scores = self.search(name, caption, k)
        images, _ = self.gallery(name)
        fig, axes = plt.subplots(1, len(index), figsize=(1.6 * len(index), 4.2), squeeze=False)
        kind = ""
        for ax, i, s in zip(axes[0], index.tolist(), scores.tolist()):
            pid = int(self.eval_set.image_pids[i])
            if word:
                exp = explain(self.models[name], caption, images[i])
                j = _token_index(exp["tokens"], word)
                overlay_heatmap(ax, images[i], exp["maps"][j])
                kind = exp["kind"]
            else:
                ax.imshow(to_display_image(images[i]))
                ax.set_axis_off()
            colour = "black" if query_pid is None else ("green" if pid == query_pid else "red")
            ax.set_title(f"id {pid}\n{s:.3f}", fontsize=8, color=colour)
        title = f"{name}: “{caption}”" + (f" — map of “{word}” ({kind})" if word else "")
        fig.suptitle(title, fontsize=9, wrap=True)
        return fig

    def widget(self):
        """An ipywidgets panel: model, description (free text or a test caption), top-k, word."""
        import ipywidgets as w
        from IPython.display import display

        model_box = w.Dropdown(options=list(self.models), description="model")
        examples = w.Dropdown(options=list(dict.fromkeys(self.eval_set.captions))[:200],
                              description="example", layout=w.Layout(width="95%"))
        text = w.Textarea(value=examples.value, description="query", layout=w.Layout(width="95%"))
        k_box = w.IntSlider(value=5, min=1, max=10, description="top-k")
        word_box = w.Dropdown(options=["(none)"] + text.value.split(), description="word")
        out = w.Output()

        def redraw(*_):
            out.clear_output(wait=True)
            word = None if word_box.value == "(none)" else word_box.value
            with out:
                display(self.figure(model_box.value, text.value, k_box.value, word))
                plt.close("all")

        def new_example(change):
            text.value = change["new"]

        def new_text(change):
            word_box.options = ["(none)"] + change["new"].split()
            redraw()

        examples.observe(new_example, names="value")
        text.observe(new_text, names="value")
        for box in (model_box, k_box, word_box):
            box.observe(redraw, names="value")
        redraw()
        return w.VBox([model_box, examples, text, w.HBox([k_box, word_box]), out])


def _token_index(tokens: list[str], word: str) -> int:
    lowered = [t.lower().strip(".,") for t in tokens]
    key = word.lower().strip(".,")
    if key in lowered:
        return lowered.index(key)
    for i, t in enumerate(lowered):  # WordPiece tokens: the first piece of the word
        if key.startswith(t.lstrip("#")) and t:
            return i
    raise ValueError(f"word {word!r} is not among the model's tokens {tokens}")

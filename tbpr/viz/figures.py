"""Figures: heat-map overlays, WAM stripe bars, retrieval grids, training curves. Matplotlib only
through Figure/Axes objects (no ``plt.show``), so everything works headless under the Agg backend."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DataConfig defaults
MATCH_COLOURS = {True: "#2ca02c", False: "#d62728"}  # green = correct identity, red = wrong
METRIC_KEY = re.compile(r"^(R\d+|mAP|mINP|mAP_trapz|HMR1|num_queries|num_excluded|hmr_num_queries)$")
NOT_A_LOSS = {"epoch", "lr", "images_per_s", "seconds", "step"}


def save_figure(fig, path) -> Path:
    """Save ``fig`` as PNG (dpi 120) at ``path`` (``.png`` added when missing), creating folders."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def to_display_image(image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """An image as an HxWx3 (or HxW) float array in [0, 1].

    Accepts tensors or arrays, CHW or HWC; uint8 is scaled by 1/255, floats already in [0, 1] are
    kept, other floats are taken as normalised by ``mean``/``std`` (the data pipeline's default)."""
    arr = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be HxW, CxHxW or HxWxC, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8:
        return arr / 255.0
    arr = arr.astype(np.float64)
    if arr.min() < 0 or arr.max() > 1:
        channels = arr.shape[-1] if arr.ndim == 3 else 1
        arr = arr * np.asarray(std)[:channels] + np.asarray(mean)[:channels]
    return np.clip(arr, 0.0, 1.0)


def upsample_heat(heat, size: tuple[int, int]) -> np.ndarray:
    """A 2-D grid (e.g. attention over patches or stripes) bilinearly resized to ``size`` (H, W) and
    rescaled to [0, 1]."""
    grid = torch.as_tensor(np.asarray(heat.detach().cpu() if isinstance(heat, torch.Tensor) else heat),
                           dtype=torch.float32)
    if grid.ndim == 1:
        grid = grid[:, None]  # horizontal stripes: one value per row band
    if grid.ndim != 2:
        raise ValueError(f"heat must be a 2-D grid (rows x cols), got shape {tuple(grid.shape)}")
    up = F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    span = up.max() - up.min()
    return ((up - up.min()) / span if span > 0 else torch.zeros_like(up)).numpy()


def overlay_heatmap(ax, image, heat, alpha: float = 0.5, cmap: str = "jet", **image_kwargs):
    """Draw ``image`` with ``heat`` (any 2-D grid, upsampled bilinearly to the image) on top."""
    img = to_display_image(image, **image_kwargs)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    ax.imshow(upsample_heat(heat, img.shape[:2]), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    ax.set_axis_off()
    return ax


def stripe_bars(ax, probs, labels=None, stripe_names=None):
    """Bars of probabilities: 1-D ``probs`` one bar per label; 2-D ``probs`` [words, stripes] (SSAN's
    WAM word->stripe probabilities) one stacked horizontal bar per word, a colour per stripe."""
    p = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=float)
    if p.ndim == 1:
        names = list(labels) if labels is not None else [str(i) for i in range(len(p))]
        if len(names) != len(p):
            raise ValueError(f"{len(names)} labels for {len(p)} probabilities")
        ax.bar(range(len(p)), p, color="#1f77b4")
        ax.set_xticks(range(len(p)), names, rotation=45, ha="right")
        ax.set_ylabel("probability")
        return ax
    if p.ndim != 2:
        raise ValueError(f"probs must be 1-D or [words, stripes], got shape {p.shape}")
    words = list(labels) if labels is not None else [str(i) for i in range(p.shape[0])]
    stripes = list(stripe_names) if stripe_names is not None else [f"stripe {k + 1}" for k in range(p.shape[1])]
    if len(words) != p.shape[0] or len(stripes) != p.shape[1]:
        raise ValueError(f"probs has shape {p.shape} but {len(words)} word labels and "
                         f"{len(stripes)} stripe names were given")
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, p.shape[1]))
    left = np.zeros(p.shape[0])
    for k in range(p.shape[1]):
        ax.barh(range(p.shape[0]), p[:, k], left=left, color=colours[k], label=stripes[k])
        left += p[:, k]
    ax.set_yticks(range(p.shape[0]), words)
    ax.invert_yaxis()  # first word on top, reading order
    ax.set_xlabel("probability")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize="small",
              ncol=min(p.shape[1], 3))  # below the axes, so no bar is hidden
    return ax


def retrieval_grid(query_text, images, is_match, *, row_labels=None, scores=None, text_width=28,
                   image_kwargs=None):
    """A row per query (or per method): the query text, then its ranked images with green (same
    identity) or red (other identity) borders.

    ``query_text``: one string, or one per row; ``images``: per row a list / [K, C, H, W] batch of
    images; ``is_match``: per row K booleans; ``row_labels`` (e.g. method names) head the text
    cells; ``scores`` (per row K numbers) are printed under the images.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4 or (
            isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    rows = len(images)
    texts = [query_text] * rows if isinstance(query_text, str) else list(query_text)
    matches = [list(np.asarray(m, dtype=bool).reshape(-1)) for m in
               ([is_match] if rows == 1 and np.ndim(is_match) == 1 else is_match)]
    if len(texts) != rows or len(matches) != rows:
        raise ValueError(f"{rows} image rows but {len(texts)} query texts and {len(matches)} "
                         "is_match rows; give one of each per row")
    k = max(len(row) for row in images)
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.4 * k + 2.6, 2.9 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2] + [1] * k})
    for r in range(rows):
        if len(matches[r]) != len(images[r]):
            raise ValueError(f"row {r}: {len(images[r])} images but {len(matches[r])} is_match values")
        head = f"{row_labels[r]}\n\n" if row_labels is not None else ""
        axes[r, 0].text(0, 1, head + textwrap.fill(texts[r], text_width), va="top", fontsize=8,
                        transform=axes[r, 0].transAxes)
        axes[r, 0].set_axis_off()
        for c in range(k):
            ax = axes[r, c + 1]
            if c >= len(images[r]):
                ax.set_axis_off()
                continue
            ax.imshow(to_display_image(images[r][c], **(image_kwargs or {})))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(MATCH_COLOURS[bool(matches[r][c])])
                spine.set_linewidth(4)
            if scores is not None:
                ax.set_xlabel(f"{float(scores[r][c]):.3f}", fontsize=7)
            if r == 0:
                ax.set_title(f"#{c + 1}", fontsize=8)
    fig.tight_layout()
    return fig


def _flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[prefix + key] = value
    return flat


def plot_history(history: list[dict], keys=None):
    """Training curves from the engine's per-epoch logs: every loss part (or ``keys``), the learning
    rate and, when evaluated, R1 over epochs. Returns the Figure."""
    if not history:
        raise ValueError("history is empty: train at least one epoch (tbpr.engine.fit returns the logs)")
    records = [_flatten(r) for r in history]
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    names = list(dict.fromkeys(k for r in records for k in r))
    if keys is None:
        keys = [k for k in names if k not in NOT_A_LOSS and not METRIC_KEY.match(k.split("/")[-1])
                and all(isinstance(r.get(k, 0.0), (int, float)) for r in records)]
    else:
        missing = [k for k in keys if k not in names]
        if missing:
            raise KeyError(f"history has no {missing}; logged keys: {names}")
    r1_key = next((k for k in names if k.split("/")[-1] == "R1"), None)
    panels = ["loss", "lr"] + (["R1"] if r1_key else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    ax_loss, ax_lr = axes[0, 0], axes[0, 1]
    for key in keys:
        points = [(e, r[key]) for e, r in zip(epochs, records) if key in r]
        ax_loss.plot(*zip(*points), marker="o", ms=3, lw=2.2 if key == "loss" else 1.2, label=key)
    ax_loss.set(title="loss per part", xlabel="epoch")
    ax_loss.legend(fontsize="small")
    lr_points = [(e, r["lr"]) for e, r in zip(epochs, records) if "lr" in r]
    if lr_points:
        ax_lr.plot(*zip(*lr_points), marker="o", ms=3)
    ax_lr.set(title="learning rate", xlabel="epoch")
    if r1_key:
        ax = axes[0, 2]
        ax.plot(*zip(*[(e, r[r1_key]) for e, r in zip(epochs, records) if r1_key in r]), marker="o")
        ax.set(title=f"eval {r1_key} (%)", xlabel="epoch")
    fig.tight_layout()
    return fig

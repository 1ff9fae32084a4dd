"""Image transforms and image decoding.

Training: flip, pad-and-crop, random erasing (the papers' augmentations); evaluation: resize and
normalise only. Inputs are uint8 tensors [3, H, W], usually already decoded at the model's size.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2


def decode_image(path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 [3, H, W] RGB, resized (bicubic) to ``size`` = (H, W) when given."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BICUBIC)
        return torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous()


ERASING_FILLS = ("zero", "mean", "noise")


def pad_for(data_cfg) -> int:
    """Pad-and-crop margin in pixels: ``pad_crop`` is in pixels of the configured input (the papers
    pad 10 px of their own input, 384 or 224 high); the CPU profiles set their scaled margin
    explicitly."""
    return int(data_cfg.pad_crop)


class TrainAugment:
    """The papers' training augmentations on a uint8 [3, H, W] image already at the model's size:
    horizontal flip (p 0.5), zero-pad and random crop back, normalise, random erasing (torchvision's
    RandomErasing: area 2-33 %, aspect 0.3-3.3, erased to 0, up to 10 tries). Plain tensor slicing:
    the v2 pipeline costs ~4x more per image, a sixth of a CPU step for IVT's three views.

    Every draw comes from ``generator`` (torch's global generator when None, as torchvision draws),
    in torchvision's order, so ``aug(image, torch.Generator().manual_seed(s))`` draws what the v2
    pipeline draws after ``torch.manual_seed(s)``. The training loader passes a generator seeded
    per item, so an item's augmentation depends on its seed only, not on the process that makes it
    nor on what that process drew before."""

    def __init__(self, data_cfg):
        self.size = tuple(data_cfg.image_size)
        self.flip, self.pad, self.erasing = data_cfg.flip, pad_for(data_cfg), data_cfg.random_erasing
        if data_cfg.erasing_fill not in ERASING_FILLS:
            raise ValueError(f"data.erasing_fill={data_cfg.erasing_fill!r}; choose one of {ERASING_FILLS}")
        self.erasing_fill = data_cfg.erasing_fill
        self.erasing_scale = tuple(data_cfg.erasing_scale)
        self.mean = torch.tensor(data_cfg.mean).view(-1, 1, 1)
        std = torch.tensor(data_cfg.std).view(-1, 1, 1)
        self.scale = 1.0 / (255.0 * std)  # (x / 255 - mean) / std as one multiply-add
        self.shift = -torch.tensor(data_cfg.mean).view(-1, 1, 1) / std

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if image.shape[-2:] != self.size:
            image = v2.functional.resize(image, list(self.size), antialias=True)
        if self.flip and torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        if self.pad:
            image = pad_and_crop(image, self.pad, generator)
        x = image.float() * self.scale + self.shift
        if self.erasing > 0 and torch.rand((), generator=generator) < self.erasing:
            erase_random_box(x, scale=self.erasing_scale, generator=generator, fill=self.erasing_fill,
                             mean=self.mean)
        return x


def pad_and_crop(image: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    h, w = image.shape[-2:]
    i, j = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return torch.nn.functional.pad(image, (pad, pad, pad, pad))[:, i:i + h, j:j + w]


def erase_random_box(x: torch.Tensor, scale=(0.02, 0.33), ratio=(0.3, 3.3),
                     generator: torch.Generator | None = None, fill: str = "zero",
                     mean: torch.Tensor | None = None) -> None:
    """Erase one random box in place; no box when 10 draws do not fit (as torchvision). ``fill``:
    zero; mean = the values of ``mean`` [C, 1, 1] (torchvision ``value=mean`` after Normalize, CADA's
    code); noise = per-pixel standard normal drawn from ``generator`` (timm ``mode="pixel"``, IVT's
    code)."""
    h, w = x.shape[-2:]
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=generator).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0])
                          * torch.rand((), generator=generator).item())
        bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if bh < h and bw < w:
            i = int(torch.randint(0, h - bh + 1, (), generator=generator))
            j = int(torch.randint(0, w - bw + 1, (), generator=generator))
            if fill == "noise":
                x[:, i:i + bh, j:j + bw] = torch.randn((x.shape[0], bh, bw), generator=generator)
            elif fill == "mean":
                x[:, i:i + bh, j:j + bw] = mean.to(x.dtype)
            else:
                x[:, i:i + bh, j:j + bw] = 0
            return


def build_transforms(data_cfg, train: bool):
    """Training: :class:`TrainAugment`; evaluation: resize and normalise only."""
    if train:
        return TrainAugment(data_cfg)
    return v2.Compose([v2.Resize(tuple(data_cfg.image_size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(data_cfg.mean), list(data_cfg.std))])


def denormalize(images: torch.Tensor, data_cfg) -> torch.Tensor:
    """Undo ``Normalize`` for display: float in [0, 1], same shape."""
    mean = torch.tensor(data_cfg.mean).view(-1, 1, 1)
    std = torch.tensor(data_cfg.std).view(-1, 1, 1)
    return (images * std + mean).clamp(0, 1)


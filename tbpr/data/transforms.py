"""Image transforms (torchvision v2) and image decoding.

Training: flip, pad-and-crop, random erasing (the papers' augmentations); evaluation: resize and
normalise only. Inputs are uint8 tensors [3, H, W], usually already decoded at the model's size.
"""
from __future__ import annotations

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


def pad_for(data_cfg) -> int:
    """Pad-and-crop margin: ``pad_crop`` is given for 384-pixel-high images, scaled to the input."""
    if not data_cfg.pad_crop:
        return 0
    return max(1, round(data_cfg.pad_crop * data_cfg.image_size[0] / 384))


def build_transforms(data_cfg, train: bool) -> v2.Compose:
    size = tuple(data_cfg.image_size)
    ops = [v2.Resize(size, antialias=True)]
    if train and data_cfg.flip:
        ops.append(v2.RandomHorizontalFlip())
    if train and pad_for(data_cfg):
        ops += [v2.Pad(pad_for(data_cfg)), v2.RandomCrop(size)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data_cfg.mean),
                                                                list(data_cfg.std))]
    if train and data_cfg.random_erasing > 0:
        ops.append(v2.RandomErasing(p=data_cfg.random_erasing, value=0))
    return v2.Compose(ops)


def denormalize(images: torch.Tensor, data_cfg) -> torch.Tensor:
    """Undo ``Normalize`` for display: float in [0, 1], same shape."""
    mean = torch.tensor(data_cfg.mean).view(-1, 1, 1)
    std = torch.tensor(data_cfg.std).view(-1, 1, 1)
    return (images * std + mean).clamp(0, 1)


"""Pointing checks of word→patch attention against SynthPedes ground truth, shared by the papers
whose figures draw such maps (CADA's decoder, IRRA's IRR cross-attention): which caption spans name
a region of their image, which patches of a grid lie in that region, and the pointing accuracy of
the maps' peaks with its chance level (the hit rate of a uniformly random patch)."""
from __future__ import annotations

import torch

from ..data.datasets import load_eval_images
from .render import GroundTruth, GTImage, region_mask


def caption_pairs(records, data_cfg, limit: int | None = None) -> list[tuple]:
    """(image tensor, caption, file_path, caption index) for the captions of ``records``, the first
    ``limit`` of them; images at ``data_cfg``'s size and normalisation."""
    pairs = [(r, i) for r in records for i in range(len(r.captions))][:limit]
    images = load_eval_images([r.image_path for r, _ in pairs], data_cfg)
    return [(images[n], r.captions[i], r.file_path, i) for n, (r, i) in enumerate(pairs)]


def region_spans(gt: GroundTruth, file_path: str, caption_index: int) -> list[tuple[int, int, str]]:
    """(char start, char end, region) of each attribute span of the caption whose region the image
    shows (a caption may name a garment the view hides)."""
    image = gt.images[file_path]
    return [(start, end, region) for start, end, _, region in gt.captions[(file_path, caption_index)].attributes
            if region in image.regions]


def patches_in_region(gt_image: GTImage, region: str, grid: tuple[int, int]) -> torch.Tensor:
    """Bool [gh, gw]: the patches of a ``grid`` over the image whose centre pixel lies in ``region``
    (pixel-exact label map at 384×128)."""
    gh, gw = grid
    full = torch.from_numpy(region_mask(gt_image, region))
    rows = ((torch.arange(gh) + 0.5) * full.shape[0] / gh).long()
    cols = ((torch.arange(gw) + 0.5) * full.shape[1] / gw).long()
    return full[rows[:, None], cols[None, :]]


class PointingTally:
    """Pointing accuracy of attention maps: a map hits when its arg-max patch lies in the region;
    chance is the region's share of the patches (a uniformly random patch's hit rate). Regions smaller
    than a patch (no patch centre inside) are skipped: no map could point at them."""

    def __init__(self):
        self.hits: list[bool] = []
        self.chance: list[float] = []
        self.per_region: dict[str, list[bool]] = {}

    def add(self, attention: torch.Tensor, inside: torch.Tensor, region: str) -> bool | None:
        """Score one map ([gh, gw]) against its region's patches (bool [gh, gw]); None when skipped."""
        if not inside.any():
            return None
        hit = bool(inside.flatten()[attention.flatten().argmax()])
        self.hits.append(hit)
        self.chance.append(inside.float().mean().item())
        self.per_region.setdefault(region, []).append(hit)
        return hit

    def summary(self) -> dict:
        """Percentages: ``pointing_acc``, ``chance`` (mean region share), ``n_spans``, ``per_region``."""
        n = max(len(self.hits), 1)
        return {"pointing_acc": 100 * sum(self.hits) / n, "chance": 100 * sum(self.chance) / n,
                "n_spans": len(self.hits),
                "per_region": {k: 100 * sum(v) / len(v) for k, v in sorted(self.per_region.items())}}

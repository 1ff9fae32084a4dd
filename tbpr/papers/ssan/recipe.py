"""How SSAN trains beyond the shared loop: the vocabulary of the training captions, and for the
compound ranking loss the pool D' of each image's identity's other captions and the epoch length
(the loss's warm-up is counted in optimizer steps)."""
from __future__ import annotations

import os

import torch

from ...data.text import Vocabulary
from ..base import Recipe
from .model import SSAN, SSANConfig


class SSANRecipe(Recipe):
    def data_state(self, cfg: SSANConfig, train_records) -> dict:
        """Words seen at least ``min_word_count`` times in the training captions."""
        captions = [c for r in train_records for c in r.captions]
        return {"vocab": Vocabulary.build(captions, min_count=cfg.min_word_count)}

    def attach_training_data(self, model: SSAN, train_records) -> None:
        """Per training image the captions of the other images of its identity (the D' pool of the
        compound ranking loss), and the optimizer steps per epoch (shuffled caption pairs,
        drop_last), which time the loss's warm-up."""
        by_pid: dict[int, list[tuple[int, str]]] = {}
        for i, r in enumerate(train_records):
            by_pid.setdefault(r.pid, []).extend((i, c) for c in r.captions)
        model.cross_captions = [[c for j, c in by_pid[r.pid] if j != i] for i, r in enumerate(train_records)]
        n_captions = sum(len(r.captions) for r in train_records)
        world = int(os.environ.get("WORLD_SIZE", 1))
        model.steps_per_epoch = max(1, n_captions // (model.cfg.data.batch_size * world))

    @torch.no_grad()
    def explain(self, model, caption: str, image: torch.Tensor) -> dict | None:
        """WAM (Eq. 8): s_i^k = σ(W_p^k e_i) of each word over the K stripes. Text-side only: the same
        for every image, which is what SSAN does (a word picks its stripes before seeing the image)."""
        if not model.cfg.use_pfl:
            return None
        scored = model.wam_word_scores([caption])[0]
        bars = torch.stack([s for *_, s in scored]) if scored else torch.zeros(0, model.cfg.num_parts)
        return {"tokens": [w for w, *_ in scored], "maps": bars[:, :, None], "bars": bars,
                "kind": "SSAN WAM word→stripe probability s_i^k (Eq. 8)"}

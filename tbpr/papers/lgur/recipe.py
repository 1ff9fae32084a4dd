"""How LGUR is read beyond the shared loop: the explorer's dictionary-attention maps (Fig. 4).
LGUR trains in one stage from its config alone; its frozen text encoder's features are cached per
caption by ``tbpr.cache.FeatureCache``."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ...data.text import caption_word_spans
from ..base import Recipe


class LGURRecipe(Recipe):
    def attach_training_data(self, model, train_records) -> None:
        """The optimizer steps per epoch (shuffled caption pairs, drop_last), by which
        ``text_dropout_from_epoch`` counts epochs."""
        n_captions = sum(len(r.captions) for r in train_records)
        world = int(os.environ.get("WORLD_SIZE", 1))
        model.steps_per_epoch = max(1, n_captions // (model.cfg.data.batch_size * world))

    @torch.no_grad()
    def explain(self, model, caption: str, image: torch.Tensor) -> dict | None:
        """Words and patches both attend over the shared dictionary 𝒟 (Eqs. 1-2): a patch lights up
        for a word when their attention profiles over the atoms agree (cosine, heads averaged, a
        word's WordPiece tokens averaged), scaled by the foreground mask ℳ as the rebuild V_𝒟 is."""
        if model.cfg.recon_type == "none":
            return None
        vis, txt = model.visual_internals(image[None]), model.text_internals([caption])
        patches = vis["dga_attn"][0].mean(0)  # [N, N_a]
        pieces = txt["dga_attn"][0].mean(0)  # [L, N_a]
        tokens, profiles = [], []
        for word, start, end in caption_word_spans(caption):
            rows = [j for j, (s, e) in enumerate(txt["offsets"][0]) if e > s and s >= start and e <= end]
            if rows:  # words cut off by max_words have none
                tokens.append(word)
                profiles.append(pieces[rows].mean(0))
        mask = vis["mask"][0]
        if profiles:
            agree = F.cosine_similarity(torch.stack(profiles)[:, None], patches[None], dim=-1)  # [n, N]
            maps = (agree.clamp(min=0) * mask).view(len(tokens), *vis["grid"]).cpu()
        else:
            maps = torch.zeros(0, *vis["grid"])
        return {"tokens": tokens, "maps": maps, "mask": mask.view(vis["grid"]).cpu(),
                "kind": "LGUR dictionary-attention agreement × foreground mask ℳ (Eqs. 1-2)"}

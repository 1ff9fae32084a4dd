"""How IRRA is read beyond the shared loop: the explorer's map of each word is IRR's cross-attention
of that word, masked, over the image patches (the interaction encoder predicts the word from them).
IRRA trains in one stage from its config alone."""
from __future__ import annotations

import torch

from ...data.text import caption_word_spans
from ..base import Recipe


class IRRARecipe(Recipe):
    @torch.no_grad()
    def explain(self, model, caption: str, image: torch.Tensor) -> dict | None:
        """Mask each word of ``caption`` in turn and read the interaction encoder's cross-attention
        of its tokens over the patches (heads averaged, [CLS] left out)."""
        if "mlm" not in model.cfg.losses:
            return None
        enc = model.tokens.tok(caption, truncation=True, max_length=model.cfg.text_len,
                               padding="max_length", return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]], device=model.device)
        image_tokens = model.image_tokens(image[None].to(model.device))
        grid = model.image_encoder.patch_embed.grid_size
        tokens, maps = [], []
        for word, start, end in caption_word_spans(caption):
            rows = [j for j, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s >= start and e <= end]
            if not rows:  # cut off by text_len
                continue
            masked = ids.clone()
            masked[0, rows] = model.tokens.mask_id
            _, attn = model.predict_masked(masked, image_tokens, need_weights=True)  # [1, L, 1 + N]
            tokens.append(word)
            maps.append(attn[0, rows, 1:].mean(0).view(*grid).cpu())
        maps = torch.stack(maps) if maps else torch.zeros(0, *grid)
        return {"tokens": tokens, "maps": maps, "kind": "IRRA IRR cross-attention of the masked word (Sec. 3.3)"}

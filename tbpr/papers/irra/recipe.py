"""How IRRA is read beyond the shared loop: the explorer's map of each word is IRR's cross-attention
of that word, masked, over the image patches (the interaction encoder predicts the word from them).
IRRA trains in one stage from its config alone. ``irr_pointing`` checks those maps against
SynthPedes regions (does the masked attribute look at its garment)."""
from __future__ import annotations

import torch

from ...data.text import caption_word_spans
from ...synthpedes.pointing import PointingTally, caption_pairs, patches_in_region, region_spans
from ..base import Recipe


class IRRARecipe(Recipe):
    @torch.no_grad()
    def explain(self, model, caption: str, image: torch.Tensor) -> dict | None:
        """Mask each word of ``caption`` in turn and read the interaction encoder's cross-attention
        of its tokens over the patches (heads averaged, [CLS] left out)."""
        if "mlm" not in model.cfg.losses:
            return None
        ids, offsets = _token_ids(model, caption)
        words = [(word, _rows_inside(offsets, start, end)) for word, start, end in caption_word_spans(caption)]
        words = [(word, rows) for word, rows in words if rows]  # a word cut off by text_len has no rows
        image_tokens = model.image_tokens(image[None].to(model.device))[0]
        maps = masked_span_maps(model, ids, [rows for _, rows in words], image_tokens).cpu()
        return {"tokens": [word for word, _ in words], "maps": maps,
                "kind": "IRRA IRR cross-attention of the masked word (Sec. 3.3)"}


def _token_ids(model, caption: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The caption's ids [text_len] as IRRA reads them and each token's character span."""
    enc = model.tokens.tok(caption, truncation=True, max_length=model.cfg.text_len, padding="max_length",
                           return_offsets_mapping=True)
    return torch.tensor(enc["input_ids"], device=model.device), enc["offset_mapping"]


def _rows_inside(offsets, start: int, end: int) -> list[int]:
    """Token positions whose characters lie inside [start, end) (special tokens have empty spans)."""
    return [j for j, (s, e) in enumerate(offsets) if e > s and s >= start and e <= end]


def masked_span_maps(model, ids: torch.Tensor, spans: list[list[int]], image_tokens: torch.Tensor) -> torch.Tensor:
    """[S, gh, gw]: for each span (token positions of ``ids``), that span masked alone and the
    interaction encoder's cross-attention of its masked tokens over the patches, averaged over the
    span's tokens and the heads ([CLS] left out, so a map sums to at most 1). One batch of S copies;
    ``image_tokens`` [1 + N, d] are the image's projected tokens."""
    grid = model.image_encoder.patch_embed.grid_size
    if not spans:
        return torch.zeros(0, *grid, device=ids.device)
    masked = ids.repeat(len(spans), 1)
    for k, rows in enumerate(spans):
        masked[k, rows] = model.tokens.mask_id
    no_logits = torch.zeros_like(masked, dtype=torch.bool)  # the attention only: skip the vocabulary head
    _, attn = model.predict_masked(masked, image_tokens.expand(len(spans), -1, -1), need_weights=True,
                                   positions=no_logits)  # [S, L, 1 + N]
    return torch.stack([attn[k, rows, 1:].mean(0) for k, rows in enumerate(spans)]).view(len(spans), *grid)


# ----------------------------------------------------------------------------- figure check (SynthPedes)
@torch.no_grad()
def irr_pointing(model, records, gt, data_cfg, *, limit: int | None = None, batch_size: int = 64) -> dict:
    """IRR's figure checked against ground truth, as CADA's Fig. 5: for each attribute span of a test
    caption that names a region of its image (``tbpr.synthpedes.pointing``), the span is masked and the
    interaction encoder's cross-attention of its masked tokens over the patches is read; a hit when
    the peak patch's centre lies in the region. ``chance`` = the region's share of the patches (a
    uniformly random patch's hit rate). Needs IRR (``mlm`` in the losses)."""
    if "mlm" not in model.cfg.losses:
        raise ValueError(f"irr_pointing reads IRR's interaction encoder; this IRRA was trained with losses="
                         f"{model.cfg.losses!r} (add 'mlm')")
    grid = model.image_encoder.patch_embed.grid_size
    tally = PointingTally()
    pairs = caption_pairs(records, data_cfg, limit)
    for a in range(0, len(pairs), batch_size):
        chunk = pairs[a:a + batch_size]
        image_tokens = model.image_tokens(torch.stack([p[0] for p in chunk]).to(model.device))
        for (_, caption, fp, idx), tokens in zip(chunk, image_tokens):
            ids, offsets = _token_ids(model, caption)
            spans = [(rows, region) for start, end, region in region_spans(gt, fp, idx)
                     if (rows := _rows_inside(offsets, start, end))]
            maps = masked_span_maps(model, ids, [rows for rows, _ in spans], tokens).cpu()
            for amap, (_, region) in zip(maps, spans):
                tally.add(amap, patches_in_region(gt.images[fp], region, grid), region)
    return tally.summary()

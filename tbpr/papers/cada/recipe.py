"""How CADA trains and is checked beyond the shared loop: the word vocabulary of the training
captions (the CPU profiles' ``words`` tokenizer), the explorer's decoder word→patch maps (Fig. 5),
and the SynthPedes checks of Figs. 5 and 6 against ground truth (does the decoder's attention
point at the attribute's region; does ARA predict the masked attribute)."""
from __future__ import annotations

import torch

from ...data.text import is_caption_word
from ...synthpedes.pointing import PointingTally, caption_pairs, patches_in_region, region_spans
from ..base import Recipe
from .model import CADA, CADAConfig, build_word_vocab


class CADARecipe(Recipe):
    def data_state(self, cfg: CADAConfig, train_records) -> dict:
        """The ``words`` tokenizer's vocabulary; the ``bert`` tokenizer needs nothing from the data."""
        if cfg.text.tokenizer != "words":
            return {}
        return {"vocab": build_word_vocab(c for r in train_records for c in r.captions)}

    @torch.no_grad()
    def explain(self, model, caption: str, image: torch.Tensor) -> dict | None:
        """Decoder cross-attention of each text token over the patches (Fig. 5), heads and layers
        averaged; a word averages its tokens, an attribute chunk (the span ARA masks) its words."""
        if not model.has_decoder:
            return None
        amap = model.word_patch_attention(image[None].to(model.device), [caption])[0].cpu()  # [T, gh, gw]
        enc = model.tokenizer.encode(caption)
        tokens, maps = [], []
        for (word, _, _), pos in zip(enc.words, enc.word_pos):
            if pos and is_caption_word(word):
                tokens.append(word)
                maps.append(amap[pos].mean(0))
        for chunk in enc.chunks:
            words = [w for (w, _, _), pos in zip(enc.words, enc.word_pos) if pos and set(pos) <= set(chunk)]
            if len(words) > 1:
                tokens.append(" ".join(words))
                maps.append(amap[chunk].mean(0))
        maps = torch.stack(maps) if maps else amap[:0]
        return {"tokens": tokens, "maps": maps, "kind": "CADA decoder word→patch cross-attention (Fig. 5)"}


# ----------------------------------------------------------------------------- figure checks (SynthPedes)
def attention_pointing(model: CADA, records, gt, data_cfg, *, limit: int | None = None,
                       batch_size: int = 64) -> dict:
    """Fig. 5 check: for each ground-truth attribute span of a test caption, average the decoder's
    word->patch maps over the span's tokens and test whether the arg-max patch centre falls in the
    attribute's region (SynthPedes label map). ``chance`` = a uniformly random patch's hit rate."""
    grid = model.visual_encoder.grid
    tally = PointingTally()
    pairs = caption_pairs(records, data_cfg, limit)
    for a in range(0, len(pairs), batch_size):
        chunk = pairs[a:a + batch_size]
        maps = model.word_patch_attention(torch.stack([p[0] for p in chunk]).to(model.device),
                                          [p[1] for p in chunk])
        for (_, caption, fp, idx), amap in zip(chunk, maps):
            enc = model.tokenizer.encode(caption)
            for start, end, region in region_spans(gt, fp, idx):
                pos = [p for (w, s, e), ps in zip(enc.words, enc.word_pos) if s < end and e > start for p in ps]
                if pos:
                    tally.add(amap[pos].mean(0), patches_in_region(gt.images[fp], region, grid), region)
    return tally.summary()


def masked_attribute_accuracy(model: CADA, records, data_cfg, *, limit: int | None = None,
                              batch_size: int = 64, shuffle_images: bool = False, topk: int = 3) -> dict:
    """Fig. 6 check: mask one attribute phrase at a time and count how often the true token is the
    top-1 / in the top-``topk`` prediction. ``shuffle_images`` pairs each caption with another test
    image: the gap to the matched accuracy is what the image contributes."""
    pairs = caption_pairs(records, data_cfg, limit)
    jobs = [(n, chunk) for n, (_, caption, _, _) in enumerate(pairs)
            for chunk in model.tokenizer.encode(caption).chunks]
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)) if shuffle_images else None
    top1 = topn = total = 0
    for a in range(0, len(jobs), batch_size):
        chunk = jobs[a:a + batch_size]
        image_idx = [int(perm[n]) if perm is not None else n for n, _ in chunk]
        images = torch.stack([pairs[i][0] for i in image_idx]).to(model.device)
        preds = model.predict_masked(images, [pairs[n][1] for n, _ in chunk], [pos for _, pos in chunk], topk)
        for per_caption in preds:
            for _, true_id, top_ids, _ in per_caption:
                top1 += top_ids[0] == true_id
                topn += true_id in top_ids
                total += 1
    return {"top1": 100 * top1 / max(total, 1), f"top{topk}": 100 * topn / max(total, 1), "n_tokens": total}

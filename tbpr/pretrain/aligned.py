"""The aligned image-text zoo member (kind ``blip``): BLIP's role for CADA, CLIP's for IRRA.

CADA fine-tunes a whole BLIP ViT-B (image encoder, BERT text encoder with cross-attention, ITC / ITM
/ LM heads); IRRA a whole CLIP. Here one small BLIP stands in for both: CADA's own modules (its ViT,
its MED-style BERT, whose cross-attention layers make it the image-grounded encoder, its projections,
ITM head and tied MLM head) at CADA's quick sizes, with the bert-base-uncased WordPiece vocabulary,
pre-trained by BLIP's three objectives, its ViT initialised as BLIP's is from ImageNet: from the
zoo's image-only ``vit-s-mlp4`` (the same ViT; from random weights the ITC of this small model did
not leave chance in 1,400 steps, nor in 300 more from the ViT alone at first), its text side random:

* ITC: image-text contrastive loss of the projected [CLS] features, both directions, learned
  temperature (BLIP: 0.07, clamped to [0.001, 0.5]); another photo of the same person counts as a
  match, as in BLIP's retrieval fine-tuning;
* ITM: match / mismatch of the image-grounded encoder's [ENC] output, with one hard negative image
  per caption and one hard negative caption per image drawn from the ITC similarities (BLIP);
* MLM: 15 % of the caption pieces predicted by the image-grounded encoder (BERT's 80 / 10 / 10), the
  masked-modelling form of CADA's ARA (BLIP's third head is an LM decoder; CADA's shared design has
  none).

The corpus is SynthPedes ``pretrain-shifted`` (tbpr/synthpedes/render.py): no identity, family or
image shared with a benchmark split, and shifted from the benchmark the way web data is from
CUHK-PEDES (web-style captions and words, other framing, backgrounds, photometry and resolution). On
the benchmark's own generator the same pre-training solves the quick test split zero-shot (R1
16-18 measured in issue 18), and fine-tuning would then measure the pre-training.

The weights ship in BLIP's key layout (``visual_encoder.*``, ``text_encoder.embeddings.*``,
``text_encoder.encoder.layer.<i>.attention.self.query.*``, ``...crossattention...``, ``vision_proj``,
``text_proj``, ``itm_head``, ``text_decoder.cls.predictions.*``), so CADA reads it by the code path
that reads BLIP's ``model_base.pth`` (``blip_to_cada_names``) and IRRA maps its encoders onto its
CLIP-role modules (``tbpr.papers.irra.model.blip_to_irra``).
"""
from __future__ import annotations

import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import zoo
from ..data.formats import load
from ..evaluate import evaluate
from ..papers import get_config
from ..papers.cada.model import BLIP_BERT_NAMES, CADA, blip_to_cada_names
from ..synthpedes import ensure
from .common import batch_indices, seeded, train_steps
from .vision import CLIP_NORM, _augment, _load_images

# name -> recipe; ``role`` says which config fields load it and whose weights it stands in for
MEMBERS = {
    "blip-s": dict(
        kind="blip", role="BLIP ViT-B image-text weights (CADA: pretrained; IRRA's CLIP: "
                          "vision_pretrained / text_pretrained)",
        arch=dict(image_size=(96, 32), patch_size=8, width=64, depth=2, heads=4, mlp_ratio=4.0,
                  text_width=64, text_depth=2, text_heads=4, ffn=256, text_len=37, max_positions=64,
                  embed_dim=64, init_std=0.125),
        norm=CLIP_NORM, corpus=("pretrain-shifted", 0), init={"visual_encoder": "zoo:vit-s-mlp4"},
        steps=1400, batch_size=96, lr=5e-4, weight_decay=0.05, warmup=100, mask_ratio=0.15,
        temperature=0.07),
}


def member_config(arch: dict):
    """CADA's config at the member's sizes (paper profile otherwise: ATP's ITM head and ARA's tied
    MLM head exist, the text encoder has its cross-attention), WordPiece ids, no dropout, no
    pre-trained weights."""
    return get_config("cada", "paper", {
        "data": {"image_size": list(arch["image_size"]), "mean": list(CLIP_NORM[0]), "std": list(CLIP_NORM[1])},
        "vision": {"patch_size": arch["patch_size"], "width": arch["width"], "depth": arch["depth"],
                   "heads": arch["heads"], "mlp_ratio": arch["mlp_ratio"]},
        "text": {"tokenizer": "bert", "vocab_size": 30524, "text_len": arch["text_len"],
                 "width": arch["text_width"], "depth": arch["text_depth"], "heads": arch["text_heads"],
                 "ffn": arch["ffn"], "dropout": 0.0, "max_positions": arch["max_positions"]},
        "embed_dim": arch["embed_dim"], "init_std": arch["init_std"], "pretrained": None})


# --- BLIP's key layout ---------------------------------------------------------------------------
def _turned_around(pattern: str, name: str) -> tuple[str, str]:
    """One rename of CADA's loader (a MED BERT key pattern -> our name) the other way round."""
    return re.escape(name).replace(r"\\1", r"(\d+)"), pattern.replace(r"(\d+)", r"\1").replace(r"\.", ".")


# our TextTransformer names -> BLIP's MED BERT names: CADA's own renames turned around, the longer
# (more specific) patterns first, since "layers.0.self_attn." also begins "layers.0.self_attn.out."
_TO_BERT = sorted((_turned_around(p, n) for p, n in BLIP_BERT_NAMES), key=lambda rule: -len(rule[0]))
_TO_BLIP = [(rf"^text_encoder\.{a}", f"text_encoder.{b}") for a, b in _TO_BERT] + [
    (r"^mlm_head\.dense\.", "text_decoder.cls.predictions.transform.dense."),
    (r"^mlm_head\.norm\.", "text_decoder.cls.predictions.transform.LayerNorm."),
    (r"^mlm_head\.bias$", "text_decoder.cls.predictions.bias"),
    (r"^(visual_encoder|vision_proj|text_proj|itm_head)\.", r"\1."),
]


def cada_to_blip_names(state: dict) -> dict:
    """CADA's names -> BLIP's checkpoint names for the modules BLIP has (``itm_local_head`` is
    CADA's own and is left out); checked to map back exactly through ``blip_to_cada_names``."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _TO_BLIP:
            if re.search(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
    back = blip_to_cada_names(out)
    if len(back) != len(out) or any(back[k] is not state[k] for k in back):
        raise AssertionError("cada_to_blip_names does not invert blip_to_cada_names")
    return out


# --- the objectives ------------------------------------------------------------------------------
def mask_pieces(ids: torch.Tensor, special: torch.Tensor, ratio: float, mask_id: int, vocab: int,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``ratio`` of the non-special pieces (at least one per caption) are predicted;
    of them 80 % become [MASK], 10 % a random piece, 10 % stay. (masked ids, labels, -100 elsewhere)."""
    score = torch.rand(ids.shape, generator=g).masked_fill(special, 2.0)
    chosen = score < ratio
    chosen[torch.arange(len(ids)), score.argmin(1)] |= ~chosen.any(1)
    u = torch.rand(ids.shape, generator=g)
    masked = ids.masked_fill(chosen & (u < 0.8), mask_id)
    swap = chosen & (u >= 0.8) & (u < 0.9)
    masked = torch.where(swap, torch.randint(1000, vocab, ids.shape, generator=g), masked)  # not [unused*]
    return masked, ids.masked_fill(~chosen, -100)


def blip_losses(net: CADA, temp: nn.Parameter, images: torch.Tensor, ids: torch.Tensor,
                att: torch.Tensor, pids: torch.Tensor, recipe: dict, g: torch.Generator) -> dict:
    """ITC + ITM (hard negatives) + MLM of one batch (module docstring)."""
    V = net.encode_image_tokens(images)
    f_v = F.normalize(net.vision_proj(V[:, 0]), dim=-1)
    f_t = F.normalize(net.text_proj(net.text_encoder(ids, att)[0][:, 0]), dim=-1)
    with torch.no_grad():
        temp.clamp_(0.001, 0.5)
    same = (pids[:, None] == pids[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    logits = f_t @ f_v.T / temp  # [text, image]
    itc = -((F.log_softmax(logits, 1) * targets).sum(1).mean() + (F.log_softmax(logits.T, 1) * targets).sum(1).mean()) / 2
    with torch.no_grad():  # a hard negative per caption and per image, drawn by similarity (BLIP)
        w = F.softmax(logits.float(), 1).masked_fill(same.bool(), 0) + 1e-8 * (1 - same)
        neg_img = torch.multinomial(w, 1, generator=g)[:, 0]
        neg_txt = torch.multinomial(w.T.contiguous(), 1, generator=g)[:, 0]
    d, _ = net.decode(torch.cat([ids, ids, ids[neg_txt]]), torch.cat([att, att, att[neg_txt]]),
                      torch.cat([V, V[neg_img], V]))
    n = len(ids)
    labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long()
    itm = F.cross_entropy(net.itm_head(d[:, 0]), labels)
    tok = net.tokenizer
    special = (ids == tok.pad_id) | (ids == tok.cls_id) | (ids == tok.sep_id)
    masked, mlm_labels = mask_pieces(ids, special, recipe["mask_ratio"], tok.mask_id, 30522, g)
    d, _ = net.decode(masked, att, V)
    chosen = mlm_labels >= 0
    mlm = F.cross_entropy(net.mlm_head(d[chosen]), mlm_labels[chosen])
    return {"loss": itc + itm + mlm, "itc": itc, "itm": itm, "mlm": mlm}


# --- data ----------------------------------------------------------------------------------------
def corpus_pairs(profile: str, seed: int, size) -> tuple[torch.Tensor, list[list[str]], torch.Tensor]:
    """(images uint8 [N, 3, H, W], the captions of each image, person id of each image)."""
    root = ensure(profile, seed)
    records = load("synthpedes", root, verbose=False)["train"]
    images = _load_images(root, [r.file_path for r in records], size, progress=False)
    return images, [list(r.captions) for r in records], torch.tensor([r.pid for r in records])


def zero_shot(net: CADA, profile: str = "quick", seed: int = 0) -> dict:
    """R1 / mAP of the member's ITC similarity on the test split of SynthPedes ``profile`` (no
    training on it: our analogue of CLIP's zero-shot number on CUHK-PEDES)."""
    records = load("synthpedes", ensure(profile, seed), verbose=False)["test"]
    net.eval()
    metrics = evaluate(net, records, net.cfg.data, progress=False)
    return {k: round(float(metrics[k]), 2) for k in ("R1", "R5", "R10", "mAP")}


def initialise(net: CADA, init: dict) -> dict:
    """Load ``{module: "zoo:<name>"}`` (an image-only member into ``visual_encoder``, as BLIP starts
    from an ImageNet ViT); ``{module: {"member", "sha256"}}`` for the manifest."""
    done = {}
    for module, source in init.items():
        getattr(net, module).load_state_dict(zoo.load(source, net.visual_encoder.grid), strict=True)
        done[module] = {"member": source, "sha256": zoo.manifest(source)["sha256"]}
    return done


def train_blip(name: str, recipe: dict, seed: int, progress: bool) -> tuple[dict, dict]:
    """Pre-train the member of ``recipe``; (state dict in BLIP's key layout, manifest fields)."""
    g, t0 = seeded(seed)
    corpus_profile, corpus_seed = recipe["corpus"]
    arch = recipe["arch"]
    images, captions, pids = corpus_pairs(corpus_profile, corpus_seed, tuple(arch["image_size"]))
    net = CADA(member_config(arch))
    init = initialise(net, recipe.get("init", {}))
    tok = net.tokenizer
    encoded = [[torch.tensor(tok.encode(c).ids) for c in caps] for caps in captions]  # once, cached
    if not progress:
        print(f"pretrain {name}: {len(images)} images, {sum(map(len, captions))} captions, "
              f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in recipe["norm"])
    temp = nn.Parameter(torch.tensor(float(recipe["temperature"])))
    params = [p for n, p in net.named_parameters() if not n.startswith("itm_local_head")] + [temp]
    history, batches, latest = [], batch_indices(len(images), recipe["batch_size"], g), {}

    def loss_of_step(step: int) -> torch.Tensor:
        idx = next(batches)
        x = (_augment(images[idx].float() / 255.0, g) - mean) / std
        pick = torch.randint(0, 1 << 30, (len(idx),), generator=g)  # one caption of each image
        ids = torch.stack([encoded[i][int(k) % len(encoded[i])] for i, k in zip(idx.tolist(), pick)])
        att = (ids != tok.pad_id).long()
        latest.update(blip_losses(net, temp, x, ids, att, pids[idx], recipe, g))
        return latest["loss"]

    def record(step: int) -> None:  # each loss of BLIP's three, and the temperature after the step
        if (step + 1) % 250 == 0 or step + 1 == recipe["steps"]:
            history.append({"step": step + 1, **{k: round(v.item(), 4) for k, v in latest.items()},
                            "temperature": round(temp.item(), 4)})

    net.train()
    losses = train_steps(name, recipe, params, loss_of_step, progress, t0, after_step=record)
    train_seconds = time.time() - t0
    with torch.no_grad():
        temp.clamp_(0.001, 0.5)
    meta = {"layout": "blip", "arch": arch, "init": init, "vocab": "bert-base-uncased WordPiece + [DEC], [ENC] (30,524 ids)",
            "grid": [arch["image_size"][0] // arch["patch_size"], arch["image_size"][1] // arch["patch_size"]],
            "norm": {"mean": recipe["norm"][0], "std": recipe["norm"][1]},
            "corpus": {"synthpedes_profile": corpus_profile, "seed": corpus_seed, "images": len(images)},
            "final_loss": round(float(np.mean(losses[-50:])), 4), "temperature": round(float(temp), 4),
            "history": history, "pretrain_seconds": round(train_seconds, 1)}
    if recipe["steps"] == MEMBERS[name]["steps"]:  # the full recipe (the smoke profile skips it)
        meta["zero_shot_quick"] = zero_shot(net)
        if not progress:
            print(f"pretrain {name}: zero-shot on quick's test split {meta['zero_shot_quick']}",
                  file=sys.stderr, flush=True)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("itm_local_head")}
    return cada_to_blip_names(state), meta


TRAINERS = {"blip": train_blip}

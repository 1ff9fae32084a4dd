"""Text-only zoo members (kind ``bert-mlm``).

Text-only members play BERT's role (IVT initialises its text embedding and its text experts from
bert-base-uncased): a transformers ``BertForMaskedLM`` at the quick profile's width / depth / FFN
width and BERT's uncased WordPiece vocabulary (30,522 ids), trained by masked language modelling on
the captions of the ``pretrain`` corpus, which no benchmark split shares an identity, family or
image with (tbpr/synthpedes/render.py). BERT's masking: 15 % of the caption pieces predicted, of
them 80 % replaced by [MASK], 10 % by a random piece, 10 % kept. Only ``BertModel`` ships (no MLM
head, no pooler), in transformers' key layout (``embeddings.*``, ``encoder.layer.<i>.*``).
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..data.formats import load
from ..data.text import bert_tokenizer
from ..synthpedes import ensure
from .common import batch_indices, loss_history, seeded, train_steps

# name -> recipe; ``role`` says which config field loads it, and whose weights it stands in for
MEMBERS = {
    "bert-s": dict(
        kind="bert-mlm", role="bert-base-uncased weights (IVT: pretrained_bert)",
        arch=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                  vocab_size=30522, max_position_embeddings=512, type_vocab_size=2),
        corpus=("pretrain", 0), steps=3000, batch_size=128, lr=1e-3, weight_decay=0.01, warmup=150,
        mask_ratio=0.15, max_len=48),
}


def corpus_captions(profile: str, seed: int) -> list[str]:
    """Every caption of the corpus's training split (the corpus has no other split)."""
    records = load("synthpedes", ensure(profile, seed), verbose=False)["train"]
    return [c for r in records for c in r.captions]


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, ratio: float, tokenizer,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of ``ratio`` of the non-special pieces (at least one per caption): 80 % [MASK],
    10 % a random piece, 10 % unchanged. (masked ids, labels with -100 where nothing is predicted)."""
    score = torch.rand(ids.shape, generator=g).masked_fill(special, 2.0)
    chosen = score < ratio
    first = score.argmin(1)  # a caption whose draw chose nothing predicts its lowest-scored piece
    chosen[torch.arange(len(ids)), first] |= ~chosen.any(1)
    labels = ids.masked_fill(~chosen, -100)
    u = torch.rand(ids.shape, generator=g)
    masked = ids.masked_fill(chosen & (u < 0.8), tokenizer.mask_token_id)
    swap = chosen & (u >= 0.8) & (u < 0.9)
    random_ids = torch.randint(1000, len(tokenizer), ids.shape, generator=g)  # skip [unused*]
    return torch.where(swap, random_ids, masked), labels


def train_bert_mlm(name: str, recipe: dict, seed: int, progress: bool) -> tuple[dict, dict]:
    """MLM-train the BERT of ``recipe``; (BertModel state dict, manifest fields)."""
    from transformers import BertConfig, BertForMaskedLM  # imported where used (2 s)

    g, t0 = seeded(seed)
    corpus_profile, corpus_seed = recipe["corpus"]
    captions = corpus_captions(corpus_profile, corpus_seed)
    tokenizer = bert_tokenizer()
    enc = tokenizer([c.lower() for c in captions], padding="max_length", truncation=True,
                    max_length=recipe["max_len"], return_tensors="pt", return_special_tokens_mask=True)
    ids_all, att_all, special_all = enc["input_ids"], enc["attention_mask"], enc["special_tokens_mask"].bool()
    if not progress:
        print(f"pretrain {name}: {len(captions)} captions tokenized, {time.time() - t0:.0f} s",
              file=sys.stderr, flush=True)
    model = BertForMaskedLM(BertConfig(**recipe["arch"]))
    batches = batch_indices(len(captions), recipe["batch_size"], g)

    def loss_of_step(step: int) -> torch.Tensor:
        idx = next(batches)
        length = int(att_all[idx].sum(1).max())  # trim the batch to its longest caption
        ids, att, special = ids_all[idx, :length], att_all[idx, :length], special_all[idx, :length]
        masked, labels = mask_tokens(ids, special, recipe["mask_ratio"], tokenizer, g)
        hidden = model.bert(input_ids=masked, attention_mask=att).last_hidden_state
        predicted = labels != -100
        return F.cross_entropy(model.cls(hidden[predicted]), labels[predicted])  # masked pieces only

    model.train()
    losses = train_steps(name, recipe, model.parameters(), loss_of_step, progress, t0)
    model.eval()
    with torch.no_grad():  # masked-piece accuracy on (up to) 2,048 captions, one fixed masking
        idx = torch.arange(min(len(captions), 2048))
        masked, labels = mask_tokens(ids_all[idx], special_all[idx], recipe["mask_ratio"], tokenizer,
                                     torch.Generator().manual_seed(seed + 1))
        hidden = model.bert(input_ids=masked, attention_mask=att_all[idx]).last_hidden_state
        predicted = labels != -100
        accuracy = float((model.cls(hidden[predicted]).argmax(1) == labels[predicted]).float().mean())
    state = {k: v for k, v in model.bert.state_dict().items() if not k.startswith("pooler.")}
    meta = {"layout": "transformers-bert", "arch": recipe["arch"], "tokenizer": "bert-base-uncased (offline copy)",
            "corpus": {"synthpedes_profile": corpus_profile, "seed": corpus_seed, "captions": len(captions)},
            "mask_ratio": recipe["mask_ratio"], "max_len": recipe["max_len"],
            "final_loss": round(float(np.mean(losses[-50:])), 4), "history": loss_history(losses),
            "masked_accuracy": round(accuracy, 3)}
    return state, meta


TRAINERS = {"bert-mlm": train_bert_mlm}

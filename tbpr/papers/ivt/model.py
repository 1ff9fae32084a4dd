"""IVT — Implicit Visual-Textual framework.

Shu et al., *See Finer, See More: Implicit Modality Alignment for Text-based Person Retrieval*,
ECCV 2022 Workshops (arXiv 2208.08608). Official code:
github.com/TencentYoutuResearch/PersonRetrieval-IVT.

One ViT-B/16 encodes both modalities: every block shares its LayerNorms and self-attention, only the
MLP is duplicated into an image expert and a text expert (Eqs. 3-4). Images and texts still pass
through it separately, so retrieval is a cosine lookup between the two [CLS] outputs (Sec. 3.2). Two
training-only tricks add fine-grained alignment without annotations:

* **MLA** (multi-level alignment, Sec. 3.3): three augmented views of each image are paired with the
  sentence, one random clause (phrase level) and a random set of adjective/noun chunks (word level),
  all inside one identity-aware CMPM loss (Eqs. 5-7);
* **BMM** (bidirectional mask modelling, Sec. 3.3): up to ⌊rN⌋ image and text tokens are dropped before
  the encoder, so the global features must match on the remaining, often less salient, cues.

The optional "Pre" stage (Table 4; the paper does not describe it, the official code runs ALBEF-style
ITC + ITM + MLM with a fusion encoder) is
:class:`IVTPretrainer`; with ``pretrain=True`` the recipe (``recipe.py``) pre-trains it once (cached)
and the model starts from its encoder weights.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from safetensors.torch import load_file

from ...config import DataConfig, ModelConfig, TrainConfig, apply_overrides
from ...data.formats import clean_caption
from ...data.text import bert_tokenizer, chunk, pretrained_bert
from ... import zoo
from ...losses import cmpm_loss, itc_loss, itm_loss, mam_loss
from ...backbones import hub_weights
from ..base import TBPRModel


# ----------------------------------------------------------------------------------------------
# Config: the defaults are the paper profile; tbpr/papers/ivt/paper.yaml shrinks them for the CPU.
# ----------------------------------------------------------------------------------------------
def _paper_train() -> TrainConfig:
    # Sec. 4.1: SGD, lr 5e-3, wd 1e-4, cosine decay; the official code adds momentum 0.9, biases at 2×
    # (IVTConfig.bias_lr_factor), 120 epochs, 5-epoch linear warm-up from 1 % of the lr, cosine to
    # 1e-5, FP16 autocast. Its epochs count from 1 and it calls scheduler.step(epoch) before each
    # epoch, so the first epoch trains at warm-up step 1 (lr_epoch_offset=1), not at the start value.
    return TrainConfig(epochs=120, optimizer="sgd", lr=5e-3, weight_decay=1e-4, momentum=0.9,
                       schedule="cosine", warmup_epochs=5, warmup_factor=0.01, min_lr=1e-5,
                       amp="fp16", lr_epoch_offset=1)


def _paper_data() -> DataConfig:
    # Sec. 4.1: 28 pairs per GPU, flip and random crop; the official code: 7 identities × 4 pairs,
    # pad-10 crop, erasing 0.5 filled with per-pixel noise (timm RandomErasing(mode="pixel")),
    # mean=std=0.5; three independently augmented views per image for MLA.
    return DataConfig(image_size=(384, 128), batch_size=28, sampler="pk", num_instances=4,
                      flip=True, pad_crop=10, random_erasing=0.5, erasing_fill="noise", mean=(0.5, 0.5, 0.5),
                      std=(0.5, 0.5, 0.5), n_views=3, max_caption_len=100)


@dataclass
class IVTConfig(ModelConfig):
    # unified encoder (ViT-B/16), Sec. 3.2 and 4.1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    patch_stride: int = 16  # 16 gives Table 5's 166.45 M; the official fine-tuning scripts use 12
    drop_path: float = 0.1
    ln_eps: float = 1e-6
    # BERT text embedding, Eq. (2)
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    text_dropout: float = 0.1
    tokenizer: str | None = None  # BERT uncased WordPiece name/path; None = the offline copy
    # initialisation from ImageNet ViT + BERT (Sec. 4.2): timm / transformers name or local path;
    # None = random init
    pretrained_vit: str | None = "vit_base_patch16_224.orig_in21k_ft_in1k"
    pretrained_bert: str | None = "bert-base-uncased"
    # the paper's switches (Table 4, Fig. 5)
    mla: bool = True
    bmm: bool = True
    mask_ratio: float = 0.3  # r of BMM (Fig. 5 best)
    bmm_count: str = "uniform"  # k ~ U{0..⌊rN⌋} (official code) | "fixed" k = ⌊rN⌋
    # "nltk" adjective/noun chunks (Sec. 3.3) | "clause" random clauses (official code, ICFG/RSTPReid) |
    # "dictionary" the official code's per-caption attribute dictionary (CUHK-PEDES), read from
    # word_dictionary: its processed JSON (cuhk_pedes_att.json), each training caption's "att"
    word_level: str = "nltk"
    word_dictionary: str | None = None
    cmpm_q_norm: str = "l1"  # "l1" (paper Eq. 6) | "l2" (official code)
    bias_lr_factor: float = 2.0
    # "Pre" (Table 4, Sec. 4.1 corpora): start fine-tuning from a pre-trained IVT encoder
    pretrain: bool = True
    pretrain_checkpoint: str | None = None  # safetensors of a pre-trained IVT encoder, or the code's released one
    pretrain_corpus: str | None = None  # CUHK-format root or "synthpedes:<profile>:<seed>"
    pretrain_epochs: int = 120  # not in the paper; the code reuses the fine-tuning solver
    pretrain_batch_size: int = 48
    pretrain_lr: float = 5e-3
    fusion_layers: int = 6
    mlm_ratio: float = 0.25
    train: TrainConfig = field(default_factory=_paper_train)
    data: DataConfig = field(default_factory=_paper_data)

    @property
    def patch_grid(self) -> tuple[int, int]:
        (h, w), p, s = self.data.image_size, self.patch_size, self.patch_stride
        return (h - p) // s + 1, (w - p) // s + 1


# ----------------------------------------------------------------------------------------------
# Embeddings (modality-specific)
# ----------------------------------------------------------------------------------------------
class VisualEmbedding(nn.Module):
    """Eq. (1): Z^v_0 = [c^v; E_p x_1; ...; E_p x_K] + E^v_pos + E^v_type."""

    def __init__(self, cfg: IVTConfig):
        super().__init__()
        d = cfg.embed_dim
        n_tokens = cfg.patch_grid[0] * cfg.patch_grid[1] + 1
        self.patch_embed = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, d))
        self.type_embed = nn.Parameter(torch.zeros(1, n_tokens, d))  # f^v_type (Eq. 1): a row per position

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # row-major over the grid
        cls = self.cls_token.expand(len(images), -1, -1)
        return torch.cat([cls, patches], 1) + self.pos_embed + self.type_embed


class TextEmbedding(nn.Module):
    """Eq. (2): the BERT embedding layer, LN(W_word[t] + E_pos + E_type[0]) then dropout."""

    def __init__(self, cfg: IVTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.word_embeddings = nn.Embedding(cfg.vocab_size, d, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, d)
        self.LayerNorm = nn.LayerNorm(d, eps=1e-12)
        self.dropout = nn.Dropout(cfg.text_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings.weight[0])  # always segment 0: the textual type embedding
        return self.dropout(self.LayerNorm(x))


# ----------------------------------------------------------------------------------------------
# BMM: bidirectional mask modelling by token dropping (Sec. 3.3, as the official code)
# ----------------------------------------------------------------------------------------------
def bmm_keep_index(n_tokens: int, ratio: float, count: str = "uniform",
                   device=None) -> torch.Tensor:
    """Indices of the tokens kept: [CLS] always, minus k random others, k ≤ ⌊ratio·n_tokens⌋."""
    k_max = min(math.floor(ratio * n_tokens), n_tokens - 1)
    if count == "uniform":
        k = int(torch.randint(0, k_max + 1, ()).item())
    elif count == "fixed":
        k = k_max
    else:
        raise ValueError(f"IVTConfig.bmm_count={count!r}; use 'uniform' or 'fixed'")
    dropped = torch.randperm(n_tokens - 1)[:k] + 1
    keep = torch.ones(n_tokens, dtype=torch.bool)
    keep[dropped] = False
    return keep.nonzero().squeeze(1).to(device)


# ----------------------------------------------------------------------------------------------
# Unified visual-textual encoder (Sec. 3.2, Eqs. 3-4): shared LN + MSA, modality-specific MLP experts
# ----------------------------------------------------------------------------------------------
def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of a sample with probability p."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class MultiHeadSelfAttention(nn.Module):
    """MSA(X; a) = Concat_h softmax(Q_h K_h^T / sqrt(d_h) + β) V_h · W_O, β = -1e4 on padding keys."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = None if key_bias is None else key_bias[:, None, None, :].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    """MLP(u) = W_2 GELU(W_1 u + b_1) + b_2 (exact erf GELU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class IVTBlock(nn.Module):
    """Eqs. (3)-(4): U = Z + MSA(LN1(Z)); Z' = U + MLP^m(LN2(U)), m ∈ {img, txt}."""

    def __init__(self, cfg: IVTConfig, drop_path_rate: float):
        super().__init__()
        d, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(d, eps=cfg.ln_eps)  # shared
        self.attn = MultiHeadSelfAttention(d, cfg.num_heads)  # shared
        self.norm2 = nn.LayerNorm(d, eps=cfg.ln_eps)  # shared
        self.mlp_img = Mlp(d, hidden)  # the paper's "Img" expert
        self.mlp_txt = Mlp(d, hidden)  # the paper's "Txt" expert
        self.drop_path_rate = drop_path_rate

    def forward(self, x, modality: str, key_bias=None, n_image_tokens: int | None = None):
        """``modality`` "img" or "txt"; "joint" routes the first ``n_image_tokens`` to the image
        expert and the rest to the text expert (the single-stream cross-encoder of Table 5)."""
        x = x + drop_path(self.attn(self.norm1(x), key_bias), self.drop_path_rate, self.training)
        h = self.norm2(x)
        if modality == "img":
            h = self.mlp_img(h)
        elif modality == "txt":
            h = self.mlp_txt(h)
        else:
            h = torch.cat([self.mlp_img(h[:, :n_image_tokens]), self.mlp_txt(h[:, n_image_tokens:])], 1)
        return x + drop_path(h, self.drop_path_rate, self.training)


# ----------------------------------------------------------------------------------------------
# MLA texts (Sec. 3.3): phrase level and word level, re-sampled every iteration
# ----------------------------------------------------------------------------------------------
PERSON_WORDS = frozenset("""man woman person lady girl boy guy he she people picture image photo
pedestrian child kid male female gentleman individual someone adult teenager men women""".split())
# adjectives / participles then nouns: "black pants", "white striped shirt", "shoulder bag". VBG is
# left out of the tag set so that "wearing black pants" gives "black pants", not the verb.
ATTRIBUTE_GRAMMAR = r"ATT: {<JJ.*|VBN>*<NN.*>+}"


@lru_cache(maxsize=200_000)
def phrase_candidates(caption: str) -> tuple[str, ...]:
    """Phrase-level texts: per sentence, the longest comma clause and the rest re-joined (> 5 chars)."""
    text = caption.lower().strip().strip(".[]")
    pool = []
    for sentence in text.split("."):
        clauses = sentence.split(",")
        longest = max(range(len(clauses)), key=lambda i: (len(clauses[i]), -i))
        rest = ",".join(c for i, c in enumerate(clauses) if i != longest).strip(",")
        pool += [c.strip() for c in (clauses[longest], rest) if len(c.strip()) > 5]
    return tuple(pool) or (caption,)


@lru_cache(maxsize=200_000)
def attribute_phrases(caption: str) -> tuple[str, ...]:
    """Word-level texts: NLTK-chunked adjective/noun phrases ("black pants", "red backpack") whose
    head noun is not a generic person word, de-duplicated in caption order."""
    chunks = (text.lower() for _, _, text in chunk(caption, ATTRIBUTE_GRAMMAR))
    return tuple(dict.fromkeys(c for c in chunks if c.split()[-1] not in PERSON_WORDS))


def _random_subset(items) -> list:
    """q ~ U{1..len(items)} items without replacement, in random order."""
    q = int(torch.randint(1, len(items) + 1, ()).item())
    return [items[i] for i in torch.randperm(len(items))[:q].tolist()]


def phrase_level_text(caption: str) -> str:
    pool = phrase_candidates(caption)
    return pool[int(torch.randint(len(pool), ()).item())]


def word_level_text(caption: str, mode: str = "nltk", dictionary: dict | None = None) -> str:
    """A random non-empty subset of the caption's word-level attributes, joined by commas (the
    code joins by "," alone: the same WordPiece tokens); a phrase-level text when it has none."""
    if mode == "nltk":
        chunks = attribute_phrases(caption)
    elif mode == "clause":  # the official ICFG/RSTPReid behaviour: random comma clauses
        chunks = tuple(c.strip() for c in re.split(r"[.,]", caption) if c.strip())
    elif mode == "dictionary":  # the official CUHK-PEDES loader (datasets/bases.py:187-199)
        chunks = dictionary_attributes(caption, dictionary)
    else:
        raise ValueError(f"IVTConfig.word_level={mode!r}; use 'nltk', 'clause' or 'dictionary'")
    if not chunks:
        return phrase_level_text(caption)
    return ", ".join(_random_subset(chunks)) or caption  # all attributes empty: the caption (as the code)


def dictionary_key(caption: str) -> str:
    """How a caption is looked up in the word dictionary: cleaned as tbpr's readers clean captions,
    lower-cased (the code lower-cases before sampling)."""
    return clean_caption(caption).lower()


def load_word_dictionary(path: str) -> dict[str, tuple[str, ...]]:
    """The official code's processed CUHK-PEDES JSON (``datasets/cuhk_pedes_level.py:28``):
    ``{"train": [{"captions": str, "att": {key: phrase}, ...}]}``, one item per caption -> each
    training caption's attribute phrases, in the file's order."""
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"IVT word_dictionary={path!r} not found: the official code's processed "
                                "CUHK-PEDES JSON (cuhk_pedes_att.json, linked from its README); set "
                                "word_dictionary to its path, or word_level=nltk")
    data = json.loads(Path(path).read_text())
    items = data.get("train") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("captions"), str)
                                              and isinstance(i.get("att"), dict) for i in items):
        raise ValueError(f"IVT word_dictionary={path!r}: expected the official code's format, "
                         '{"train": [{"captions": str, "att": {key: phrase}}, ...]}')
    return {dictionary_key(i["captions"]): tuple(str(v) for v in i["att"].values()) for i in items}


def dictionary_attributes(caption: str, dictionary: dict | None) -> tuple[str, ...]:
    if dictionary is None:
        raise ValueError("IVT word_level=dictionary: no word dictionary attached; the training loop "
                         "attaches word_dictionary's (IVTRecipe.attach_training_data)")
    key = dictionary_key(caption)
    if key not in dictionary:
        raise ValueError(f"IVT word_dictionary has no entry for the training caption {caption[:60]!r}: "
                         "give the code's JSON of this dataset, or word_level=nltk")
    return dictionary[key]


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _tokenizer(name_or_path: str | None):
    return bert_tokenizer(name_or_path)


TEXT_BUCKET = 32  # texts per length bucket in encode_texts: fewer padded tokens vs smaller matmuls


class IVT(TBPRModel):
    """Implicit Visual-Textual framework: one encoder, two embedders, two MLP experts per block."""

    name = "ivt"

    def __init__(self, cfg: IVTConfig):
        super().__init__(cfg)
        self.visual_embed = VisualEmbedding(cfg)
        self.text_embed = TextEmbedding(cfg)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(IVTBlock(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)  # final LN_f, shared
        self.word_dictionary = None  # word_level=dictionary: attached for training, not saved
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.visual_embed.cls_token, std=0.02)
        nn.init.trunc_normal_(self.visual_embed.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.visual_embed.type_embed, std=0.02)
        if self.visual_embed.cls_token.is_meta:
            return  # counting parameters
        if cfg.pretrained_vit or cfg.pretrained_bert:
            load_vit_bert(self, cfg.pretrained_vit, cfg.pretrained_bert)

    # -- tokens ---------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS] t_1..t_M [SEP], padded to the longest text, truncated to data.max_caption_len."""
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("IVT.tokenize: every caption must be a non-empty string")
        enc = _tokenizer(self.cfg.tokenizer)([t.lower() for t in texts], padding="longest",
                                              truncation=True, max_length=self.cfg.data.max_caption_len,
                                              return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def _bmm_keep(self, n_tokens: int, device) -> torch.Tensor | None:
        """BMM's kept positions for this forward pass (Sec. 3.3); None when nothing is dropped."""
        if self.training and self.cfg.bmm and self.cfg.mask_ratio > 0:
            return bmm_keep_index(n_tokens, self.cfg.mask_ratio, self.cfg.bmm_count, device)
        return None

    def _encode(self, z, modality: str, attention_mask=None, keep=None) -> torch.Tensor:
        if keep is not None:
            z = z[:, keep]
            attention_mask = None if attention_mask is None else attention_mask[:, keep]
        key_bias = None if attention_mask is None else (1.0 - attention_mask.float()) * -1e4
        for block in self.blocks:
            z = block(z, modality, key_bias)
        return self.norm(z)

    def encode_tokens(self, z: torch.Tensor, modality: str, attention_mask=None) -> torch.Tensor:
        """Shared encoder over embedded tokens; BMM drops tokens first in training (Sec. 3.3).
        Returns Ẑ = LN_f(Z_L), [n, N - k, D] (the [CLS] output at index 0)."""
        return self._encode(z, modality, attention_mask, self._bmm_keep(z.shape[1], z.device))

    def text_cls_by_length(self, ids: torch.Tensor, mask: torch.Tensor,
                           bucket_size: int = TEXT_BUCKET) -> torch.Tensor:
        """Text [CLS] outputs of a batch padded to one length T, computed in buckets of similar
        length, each cut to its own longest text. Equal to encoding the batch at T (the official
        layout, Sec. 3.3): padding keys are masked out, and BMM draws its dropped positions over T once
        and every bucket keeps those below its length. MLA's word- and phrase-level texts are
        about a third of a sentence's length, so most of a joint batch is padding."""
        z = self.text_embed(ids)
        keep = self._bmm_keep(z.shape[1], z.device)
        positions = torch.arange(z.shape[1], device=z.device) if keep is None else keep
        order = mask.sum(1).argsort()
        cls = []
        for rows in order.split(bucket_size):
            length = int(mask[rows].sum(1).max())
            cols = positions[positions < length]
            cls.append(self._encode(z[rows][:, cols], "txt", mask[rows][:, cols])[:, 0])
        return torch.cat(cls)[order.argsort()]

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_tokens(self.visual_embed(images), "img")

    # -- the contract ---------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tokens(images)[:, 0]  # f_img: visual [CLS] after LN_f

    def encode_texts(self, captions: list[str]) -> torch.Tensor:
        return self.text_cls_by_length(*self.tokenize(list(captions)))  # f_txt

    def similarity(self, text_feats, image_feats) -> torch.Tensor:
        return F.normalize(text_feats.float(), dim=-1) @ F.normalize(image_feats.float(), dim=-1).T

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        images, pids, captions = batch["images"], batch["pids"].to(self.device), list(batch["captions"])
        if self.cfg.mla:  # view 1 ↔ word level, view 2 ↔ phrase level, view 3 ↔ sentence
            if images.dim() != 5 or images.shape[1] != 3:
                raise ValueError("IVT with mla=True needs three augmented views per image: "
                                 f"set data.n_views=3 (got images of shape {tuple(images.shape)})")
            images = torch.cat(images.unbind(1))
            texts = ([word_level_text(c, self.cfg.word_level, self.word_dictionary) for c in captions]
                     + [phrase_level_text(c) for c in captions] + captions)
            pids = pids.repeat(3)
        else:
            images = images[:, -1] if images.dim() == 5 else images
            texts = captions
        f_img = self.encode_images(images.to(self.device))
        f_txt = self.encode_texts(texts)
        with torch.autocast(self.device.type, enabled=False):  # CMPM in fp32 under FP16 training
            loss = cmpm_loss(f_img.float(), f_txt.float(), pids, q_norm=self.cfg.cmpm_q_norm)  # Eq. (7)
        return {"loss": loss, "cmpm": loss.detach()}

    # -- internals for the figures ----------------------------------------------------------------
    @torch.no_grad()
    def alignment_maps(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Figs. 4/6: cos(f_txt, Ẑ^v_k) for every patch token k, as [n, h, w] grids (Sec. 4.4)."""
        patches = self.image_tokens(images.to(self.device))[:, 1:]
        f_txt = self.encode_texts(texts)
        sim = torch.einsum("nkd,nd->nk", F.normalize(patches, dim=-1), F.normalize(f_txt, dim=-1))
        return sim.view(len(texts), *self.cfg.patch_grid)

    @torch.no_grad()
    def cross_encoder_scores(self, images: torch.Tensor, texts: list[str],
                             itm_head: nn.Linear) -> torch.Tensor:
        """Table 5's alternative: score each (image, text) pair jointly in one sequence through the
        same blocks (ViLT-style single stream). Returns the ITM logit of "match" per pair."""
        z_img = self.visual_embed(images.to(self.device))
        ids, mask = self.tokenize(texts)
        z = torch.cat([z_img, self.text_embed(ids)], 1)
        joint_mask = torch.cat([mask.new_ones(len(texts), z_img.shape[1]), mask], 1)
        key_bias = (1.0 - joint_mask.float()) * -1e4
        for block in self.blocks:
            z = block(z, "joint", key_bias, n_image_tokens=z_img.shape[1])
        return itm_head(self.norm(z)[:, 0])[:, 1]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------
# Initialisation from ImageNet ViT-B/16 + BERT (Sec. 4.2)
# ----------------------------------------------------------------------------------------------
def _state_dict(source: str, kind: str, grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    if zoo.is_zoo(source):  # pre-trained here (tbpr/zoo), checksum-verified; positions at ``grid``
        return zoo.load(source, grid)
    path = Path(source)
    if path.is_file():
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("model", state.get("state_dict", state))
    if kind == "vit":
        import timm  # imported where used: 3 s to import, and only hub weights need it here
        return hub_weights("pretrained_vit", source,
                           lambda: timm.create_model(source, pretrained=True).state_dict())
    if path.exists():  # a local folder
        return pretrained_bert(source, pooler=True).state_dict()
    return hub_weights("pretrained_bert", source, lambda: pretrained_bert(source, pooler=True).state_dict())


def _resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Class row copied, the square ViT grid bilinearly resized to the person grid h×w."""
    cls, patches = pos[:, :1], pos[:, 1:]
    if patches.shape[1] == grid[0] * grid[1]:  # already this grid (a zoo ViT)
        return pos
    side = int(math.isqrt(patches.shape[1]))
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).flatten(1, 2)], 1)


def load_vit_bert(model: IVT, vit: str | None, bert: str | None) -> None:
    """ViT → patch conv, c^v, E^v_pos, shared LN/MSA, image MLPs, LN_f; BERT → text embedding and
    the text MLPs (intermediate.dense / output.dense). BERT's own attention and LNs are discarded."""
    target = {}
    if vit:
        sd = _state_dict(vit, "vit", model.cfg.patch_grid)
        target["visual_embed.patch_embed.weight"] = sd["patch_embed.proj.weight"]
        target["visual_embed.patch_embed.bias"] = sd["patch_embed.proj.bias"]
        target["visual_embed.cls_token"] = sd["cls_token"]
        target["visual_embed.pos_embed"] = _resize_pos_embed(sd["pos_embed"], model.cfg.patch_grid)
        target["norm.weight"], target["norm.bias"] = sd["norm.weight"], sd["norm.bias"]
        for i in range(model.cfg.depth):
            for ours, theirs in (("norm1", "norm1"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"),
                                 ("norm2", "norm2"), ("mlp_img.fc1", "mlp.fc1"), ("mlp_img.fc2", "mlp.fc2")):
                for p in ("weight", "bias"):
                    target[f"blocks.{i}.{ours}.{p}"] = sd[f"blocks.{i}.{theirs}.{p}"]
    if bert:
        sd = {k.removeprefix("bert."): v for k, v in _state_dict(bert, "bert").items()}
        for name in ("word_embeddings.weight", "position_embeddings.weight",
                     "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias"):
            target[f"text_embed.{name}"] = sd[f"embeddings.{name}"]
        for i in range(model.cfg.depth):
            for ours, theirs in (("fc1", "intermediate.dense"), ("fc2", "output.dense")):
                for p in ("weight", "bias"):
                    target[f"blocks.{i}.mlp_txt.{ours}.{p}"] = sd[f"encoder.layer.{i}.{theirs}.{p}"]
    own = model.state_dict()
    bad = [k for k, v in target.items() if own[k].shape != v.shape]
    if bad:
        raise ValueError(f"IVT: pretrained shapes do not match the config at {bad[:3]}; "
                         f"use a checkpoint with embed_dim={model.cfg.embed_dim}, depth={model.cfg.depth}")
    model.load_state_dict(target, strict=False)


# ----------------------------------------------------------------------------------------------
# "Pre": ALBEF-style pre-training of the encoder (official code), cached per pre-training config
# ----------------------------------------------------------------------------------------------
class FusionLayer(nn.Module):
    """BERT-style fusion layer: text self-attention → cross-attention to visual tokens → FFN."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ffn = Mlp(dim, int(dim * mlp_ratio))
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim, eps=1e-12) for _ in range(3))

    def forward(self, t, t_pad, v):
        t = self.norm1(t + self.self_attn(t, t, t, key_padding_mask=t_pad, need_weights=False)[0])
        t = self.norm2(t + self.cross_attn(t, v, v, need_weights=False)[0])
        return self.norm3(t + self.ffn(t))


def pretrain_stage_config(cfg: IVTConfig) -> IVTConfig:
    """The encoder as pre-trained: same architecture and initialisation, no BMM, no recursion."""
    return apply_overrides(cfg, {"pretrain": False, "bmm": False, "mla": False,
                                 "train": {"epochs": cfg.pretrain_epochs, "lr": cfg.pretrain_lr},
                                 "data": {"n_views": 1, "batch_size": cfg.pretrain_batch_size,
                                          "sampler": "random"}})



class IVTPretrainer(TBPRModel):
    """The IVT encoder (without BMM) + fusion encoder F + ITM head + MLM head + temperature τ.
    Each pre-training image is its own identity (``batch["image_idx"]``)."""

    name = "ivt_pretrain"

    def __init__(self, cfg: IVTConfig):
        super().__init__(cfg)
        self.encoder = IVT(pretrain_stage_config(cfg))
        d = cfg.embed_dim
        self.fusion = nn.ModuleList(FusionLayer(d, cfg.num_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.fusion_layers))
        self.itm_head = nn.Linear(d, 2)
        self.mlm_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=1e-12),
                                      nn.Linear(d, cfg.vocab_size))
        self.temp = nn.Parameter(torch.tensor(0.5))
        self.fusion.apply(_init_weights)
        self.mlm_head.apply(_init_weights)
        self.itm_head.apply(_init_weights)

    def fuse(self, t, t_mask, v):
        for layer in self.fusion:
            t = layer(t, t_mask == 0, v)
        return t

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        enc, dev = self.encoder, self.device
        images = batch["images"][:, 0] if batch["images"].dim() == 5 else batch["images"]
        ids, mask = enc.tokenize(list(batch["captions"]))
        same = batch["image_idx"].to(dev)
        same = same[:, None] == same[None, :]
        v = enc.image_tokens(images.to(dev))
        t = enc.encode_tokens(enc.text_embed(ids), "txt", mask)
        temp = self.temp.clamp(0.01, 1.0)
        # L2-normalised as in ALBEF (the official code's ITC uses un-normalised features)
        sim = F.normalize(v[:, 0], dim=-1) @ F.normalize(t[:, 0], dim=-1).T / temp
        loss_itc = itc_loss(sim, same)
        # ITM with one hard negative image per text and one hard negative text per image
        with torch.no_grad():
            w_i2t = (sim.softmax(1) + 1e-4).masked_fill(same, 0)
            w_t2i = (sim.T.softmax(1) + 1e-4).masked_fill(same, 0)
            neg_text = torch.multinomial(w_i2t, 1).squeeze(1)
            neg_image = torch.multinomial(w_t2i, 1).squeeze(1)
        t_all = torch.cat([t, t[neg_text], t])
        m_all = torch.cat([mask, mask[neg_text], mask])
        v_all = torch.cat([v, v, v[neg_image]])
        itm_logits = self.itm_head(self.fuse(t_all, m_all, v_all)[:, 0])
        itm_labels = torch.cat([torch.ones(len(t)), torch.zeros(2 * len(t))]).long().to(dev)
        loss_itm = itm_loss(itm_logits, itm_labels)
        # MLM: masked caption through the encoder, fused with the un-masked image
        masked_ids, labels = mask_words(ids, mask, self.cfg.mlm_ratio, _tokenizer(self.cfg.tokenizer))
        t_masked = enc.encode_tokens(enc.text_embed(masked_ids), "txt", mask)
        predicted = labels != -100
        logits = self.mlm_head(self.fuse(t_masked, mask, v)[predicted])
        loss_mlm = mam_loss(logits, labels[predicted])  # MLM: cross-entropy over masked tokens
        loss = loss_itc + loss_itm + loss_mlm
        return {"loss": loss, "itc": loss_itc.detach(), "itm": loss_itm.detach(),
                "mlm": loss_mlm.detach()}


def mask_words(ids: torch.Tensor, mask: torch.Tensor, ratio: float, tokenizer,
               max_masked: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking of ≈ratio of each caption's words (1..max_masked; with prob. 0.2 a
    2-3-word span); chosen pieces → [MASK] 80 %, random token 10 %, unchanged 10 %.
    Returns (masked ids, labels with -100 where nothing is predicted)."""
    masked, labels = ids.clone(), torch.full_like(ids, -100)
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    for row in range(len(ids)):
        pieces = [j for j in range(ids.shape[1]) if mask[row, j] and int(ids[row, j]) not in special]
        words = []  # a word = its first piece and the following "##" pieces
        for j in pieces:
            token = tokenizer.convert_ids_to_tokens(int(ids[row, j]))
            if words and token.startswith("##"):
                words[-1].append(j)
            else:
                words.append([j])
        if not words:
            continue
        n = max(1, min(max_masked, round(ratio * len(words))))
        if torch.rand(()) < 0.2 and len(words) >= 2:
            span = int(torch.randint(2, 4, ()).item())
            start = int(torch.randint(0, max(len(words) - span, 0) + 1, ()).item())
            chosen = words[start:start + span]
        else:
            chosen = [words[i] for i in torch.randperm(len(words))[:n].tolist()]
        for j in (j for word in chosen for j in word):
            labels[row, j] = ids[row, j]
            u = float(torch.rand(()))
            if u < 0.8:
                masked[row, j] = tokenizer.mask_token_id
            elif u < 0.9:
                masked[row, j] = int(torch.randint(1000, len(tokenizer), ()))  # skip [unused*]
    return masked, labels

"""CADA — Cross-Modal Adaptive Dual Association (Lin, Peng, Meng, Zheng; IEEE TMM 2024, arXiv 2312.01745).

A BLIP-style dual encoder (ViT image encoder, BERT text encoder) aligned by the NDF loss, plus a
cross-modal *decoder* that is the same BERT with a cross-attention sub-layer switched on in every
layer (text tokens = queries, image tokens = keys/values). The decoder learns two "dual" associations:

* ATP (text tokens -> image patches): the decoder outputs, cut into fixed windows ("groups") and
  mean-pooled, plus the [ENC] output, are classified match / mismatch against in-batch hard negatives.
* ARA (image regions -> text attributes): adjective/noun attribute phrases are masked as whole
  phrases (rate r) and predicted from the image by a weight-tied MLM head (Masked Attribute Modeling).

The official code decodes ARA with a separate BLIP text decoder instead (causal self-attention, its own
weights, [CLS] first; 361 M parameters against the paper's 225 M): ``ara.decoder=separate``, the
``official`` profile.

Inference: CADA-G ranks the gallery by the global cosine; CADA-L re-scores each query's top-k gallery
images with the decoder's [ENC] match logit and adds it (``rerank``).

Section and equation numbers in square brackets refer to the paper; where its text leaves an
equation or a value out, it is rebuilt from the surrounding prose and the official code
(github.com/LinDixuan/CADA, built on BLIP).
"""
from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from ... import zoo
from ...config import DataConfig, ModelConfig, TrainConfig, apply_overrides
from ...data.text import Vocabulary, bert_tokenizer, pos_tag, wordpiece_words
from ...losses import atp_loss, cmpm_loss, mam_loss, ndf_loss
from ...backbones import building_on_meta
from ..base import TBPRModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- config
@dataclass
class VisionConfig:
    """ViT-B/16 image encoder (BLIP's visual encoder) [Sec. III-A1, IV-B]."""
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0


@dataclass
class TextConfig:
    """BERT-base text encoder = cross-modal decoder [Sec. III-A1, III-B]."""
    tokenizer: str = "bert"  # bert: WordPiece + [DEC]/[ENC] (30,524 ids) | words: training-word vocabulary
    vocab_size: int = 30524
    text_len: int = 73  # L + 1 token positions ([CLS]/[ENC] first)
    max_words: int = 72
    width: int = 768
    depth: int = 12
    heads: int = 12
    ffn: int = 3072
    dropout: float = 0.1
    max_positions: int = 512


@dataclass
class ATPConfig:
    """Association of text Tokens to image Patches [Sec. III-B]."""
    enabled: bool = True
    group_size: int = 36  # s
    group_stride: int = 36  # t
    masked_mean: bool = False  # the official code averages padding positions too
    hardneg_sim: str = "cosine"  # cosine ("highest global similarity") | dot (official code, un-normalised)


@dataclass
class ARAConfig:
    """Association of image Regions to text Attributes via Masked Attribute Modeling [Sec. III-C]."""
    enabled: bool = True
    mask_rate: float = 0.8  # r, per attribute phrase
    weight: float = 0.1  # lambda of Eq. (8)
    mask_mode: str = "phrase"  # phrase (paper) | word (the code's JJ/NN word masking, rate word_rate)
    word_rate: float = 0.4
    # shared (paper: the text encoder decodes, [ENC] first) | separate (official code: BLIP's text decoder,
    # its own BERT layers with causal self-attention, cross-attention and a tied LM head, [CLS] first)
    decoder: str = "shared"


def _paper_train() -> TrainConfig:
    # AdamW, wd 0.05, cosine decay, 40 epochs [Sec. IV-B]; lr 1e-5 on all parameters, per-epoch cosine
    # to 0, no warm-up (official code)
    return TrainConfig(epochs=40, optimizer="adamw", lr=1e-5, weight_decay=0.05, schedule="cosine",
                       step_per="epoch", warmup_epochs=0.0, min_lr=0.0)


def _paper_data() -> DataConfig:
    # batch 96, flip, crop, random erasing [Sec. IV-B]; 224x224, pad 10 px, erasing 0.5 of 2-40 % of the
    # image filled with the normalisation mean's values, CLIP normalisation (official code)
    return DataConfig(image_size=(224, 224), batch_size=96, sampler="random", flip=True, pad_crop=10,
                      random_erasing=0.5, erasing_fill="mean", erasing_scale=(0.02, 0.4),
                      mean=CLIP_MEAN, std=CLIP_STD, max_caption_len=72)


@dataclass
class CADAConfig(ModelConfig):
    train: TrainConfig = field(default_factory=_paper_train)
    data: DataConfig = field(default_factory=_paper_data)
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    atp: ATPConfig = field(default_factory=ATPConfig)
    ara: ARAConfig = field(default_factory=ARAConfig)
    embed_dim: int = 256  # d', shared latent width
    global_loss: str = "ndf"  # ndf | cmpm (Table IV baseline)
    ndf_variant: str = "paper"  # paper | official (the code adds a CE term and scales the KLs by 1/N)
    temperature: float = 0.02  # tau of Eq. (1)
    rerank_k: int = 32  # k of CADA-L (0 = CADA-G)
    local_score: str = "logit"  # logit (code) | prob (the paper's "matching probability")
    local_groups: str = "enc"  # enc | enc+groups (mean of the [ENC] and group heads)
    # BLIP ViT-B pre-trained weights, the paper's initialisation [Sec. IV-B]: the released file's name
    # (a path relative to the working directory), a local path, a zoo name, or None = random init
    pretrained: str | None = "model_base.pth"
    init_std: float = 0.02  # trunc-normal std of random initialisation (BERT/ViT: 0.02 at width 768)


# ----------------------------------------------------------------------------- text side
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")
_DROP = re.compile(r'[.!"()*#:;~]')  # characters the official preprocessing turns into spaces
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")  # BERT basic tokenizer: split on space and punctuation
_ATTR = re.compile(r"(?:JC?)*N?S?")  # chunk grammar ATTR: {(<JJ><CC>?)*<NN>?<NNS>?} over tag letters
_TAG_LETTER = {"JJ": "J", "CC": "C", "NN": "N", "NNS": "S"}


def caption_words(caption: str, max_words: int = 72) -> list[tuple[str, int, int]]:
    """Preprocess as the official code and split into words with their character spans."""
    text = _DROP.sub(" ", caption.lower())  # length-preserving, so spans index the raw caption
    kept = []
    for n_whitespace_words, m in enumerate(re.finditer(r"\S+", text)):
        if n_whitespace_words >= max_words:
            break
        kept += [(w.group(), m.start() + w.start(), m.start() + w.end()) for w in _WORD.finditer(m.group())]
    return kept


def attribute_chunks(tags: list[str]) -> list[list[int]]:
    """Word indices of each maximal, non-empty ``(<JJ><CC>?)*<NN>?<NNS>?`` chunk: the official code's
    grammar for the paper's "[adj][noun]" attributes (Sec. III-C)."""
    letters = "".join(_TAG_LETTER.get(t, "x") for t in tags)
    return [list(range(m.start(), m.end())) for m in _ATTR.finditer(letters) if m.end() > m.start()]


def _pos_tag(words: list[str]) -> list[str]:
    return pos_tag(words)  # NLTK when its data is installed, else tbpr's offline tagger


@dataclass
class EncodedCaption:
    ids: list[int]  # text_len ids: [CLS] pieces [SEP] [PAD]...
    n_tokens: int  # real tokens incl. [CLS] and [SEP]
    words: list[tuple[str, int, int]]  # (word, char start, char end)
    word_pos: list[list[int]]  # token positions of each word (empty when truncated away)
    chunks: list[list[int]]  # token positions of each attribute chunk (phrase mode)
    attr_words: list[int]  # token positions of JJ/NN/NNS words (word mode)


class CaptionTokenizer:
    """``bert``: WordPiece ids of bert-base-uncased plus [DEC], [ENC] (official code); ``words``: one id
    per training word (the CPU variant). Both give [CLS] w1 .. wn [SEP] [PAD].. of ``text_len``."""

    def __init__(self, mode: str, text_len: int, max_words: int, vocab: list[str] | None = None):
        self.mode, self.text_len, self.max_words = mode, text_len, max_words
        if mode == "bert":
            self.wordpiece = copy.deepcopy(bert_tokenizer())  # the cached one is shared with IVT/LGUR
            self.wordpiece.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
            self.itos = None
            ids = self.wordpiece.convert_tokens_to_ids(list(SPECIALS))
        elif mode == "words":
            if vocab is None:
                raise ValueError("CADA's 'words' tokenizer needs vocab=[words] (the model passes the "
                                 "training captions' words, or every whole WordPiece word)")
            self.itos = list(SPECIALS) + [w for w in vocab if w not in SPECIALS]
            self.stoi = {w: i for i, w in enumerate(self.itos)}
            ids = [self.stoi[s] for s in SPECIALS]
        else:
            raise ValueError(f"text.tokenizer must be 'bert' or 'words', got {mode!r}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id, _, self.enc_id = ids
        self._cache: dict[str, EncodedCaption] = {}

    def __len__(self) -> int:
        return len(self.itos) if self.itos is not None else len(self.wordpiece)

    def pieces(self, word: str) -> list[int]:
        if self.itos is not None:
            return [self.stoi.get(word, self.unk_id)]
        return self.wordpiece.convert_tokens_to_ids(self.wordpiece.tokenize(word))

    def decode(self, token_id: int) -> str:
        if self.itos is not None:
            return self.itos[token_id]
        return self.wordpiece.convert_ids_to_tokens(int(token_id))

    def encode(self, caption: str) -> EncodedCaption:
        if caption not in self._cache:
            self._cache[caption] = self._encode(caption)
        return self._cache[caption]

    def _encode(self, caption: str) -> EncodedCaption:
        words = caption_words(caption, self.max_words)
        ids, word_pos = [self.cls_id], []
        budget = self.text_len - 1  # room left for [SEP]
        for word, _, _ in words:
            pieces = self.pieces(word)
            if len(ids) + len(pieces) > budget:
                word_pos.append([])
                continue
            word_pos.append(list(range(len(ids), len(ids) + len(pieces))))
            ids += pieces
        ids.append(self.sep_id)
        n_tokens = len(ids)
        ids += [self.pad_id] * (self.text_len - n_tokens)
        tags = _pos_tag([w for w, _, _ in words]) if words else []
        # a chunk partly cut off by truncation keeps only its surviving tokens
        chunks = [sum((word_pos[i] for i in chunk), []) for chunk in attribute_chunks(tags)]
        attr_words = sum((word_pos[i] for i, t in enumerate(tags) if t in ("JJ", "NN", "NNS", "NNP", "NNPS")), [])
        return EncodedCaption(ids, n_tokens, words, word_pos, [c for c in chunks if c], attr_words)

    def batch(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        enc = [self.encode(c) for c in captions]
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long, device=device)
        return ids, (ids != self.pad_id).long()


def build_word_vocab(captions, min_count: int = 2) -> list[str]:
    """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
    counts = Counter(w for c in captions for w, _, _ in caption_words(c, 10 ** 6))
    return [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]


# ----------------------------------------------------------------------------- image encoder
class VisionTransformer(nn.Module):
    """BLIP's ViT: conv patch embedding, [CLS], learned positions, pre-LN blocks, final LN [Sec. III-A1]."""

    def __init__(self, cfg: VisionConfig, image_size: tuple[int, int]):
        super().__init__()
        h, w = image_size
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"data.image_size {image_size} must be divisible by vision.patch_size "
                             f"{cfg.patch_size}")
        self.grid = (h // cfg.patch_size, w // cfg.patch_size)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], cfg.width))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm)
                                    for _ in range(cfg.depth))
        self.norm = norm(cfg.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # V = [v_cls; v_1..v_Np]


# ----------------------------------------------------------------------------- text encoder / decoder
class Attention(nn.Module):
    """Multi-head attention whose keys/values may come from another modality (width ``kv_width``)."""

    def __init__(self, width: int, heads: int, kv_width: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)
        self.out = nn.Linear(width, width)

    def _split(self, x):
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x, kv, bias=None, return_probs: bool = False):
        q, k, v = self._split(self.query(x)), self._split(self.key(kv)), self._split(self.value(kv))
        drop = self.dropout if self.training else 0.0
        if return_probs:
            probs = ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5 + (0 if bias is None else bias)).softmax(-1)
            y = F.dropout(probs, drop, self.training) @ v
        else:
            probs = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
        return self.out(y.transpose(1, 2).flatten(2)), probs


class BertLayer(nn.Module):
    """Post-LN BERT layer: self-attention, cross-attention (decoder mode only), FFN [Sec. III-B]."""

    def __init__(self, cfg: TextConfig, image_width: int, cross_attention: bool):
        super().__init__()
        self.self_attn = Attention(cfg.width, cfg.heads, cfg.width, cfg.dropout)
        self.self_norm = nn.LayerNorm(cfg.width, eps=1e-12)
        if cross_attention:  # only the decoder path has it; a pure dual encoder (Table IV rows 0-1) has none
            self.cross_attn = Attention(cfg.width, cfg.heads, image_width, cfg.dropout)
            self.cross_norm = nn.LayerNorm(cfg.width, eps=1e-12)
        self.fc1 = nn.Linear(cfg.width, cfg.ffn)
        self.fc2 = nn.Linear(cfg.ffn, cfg.width)
        self.ffn_norm = nn.LayerNorm(cfg.width, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, pad_bias, image_tokens=None, return_probs=False):
        s = self.self_norm(x + self.drop(self.self_attn(x, x, pad_bias)[0]))  # S = LN(X + MHSA(X))
        probs = None
        if image_tokens is not None:  # C = LN(S + MHCA(S, V)); encoder mode: C = S
            ca, probs = self.cross_attn(s, image_tokens, return_probs=return_probs)
            s = self.cross_norm(s + self.drop(ca))
        return self.ffn_norm(s + self.drop(self.fc2(F.gelu(self.fc1(s))))), probs  # X = LN(C + FFN(C))


class TextTransformer(nn.Module):
    """BLIP's MED BERT: the text encoder without ``image_tokens``, the cross-modal decoder with them.
    ``causal``: each token attends to itself and the tokens before it only (BLIP's text decoder, which
    the official code's ARA runs with ``is_decoder=True``)."""

    def __init__(self, cfg: TextConfig, image_width: int, cross_attention: bool = True, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.word = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position = nn.Embedding(cfg.max_positions, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(BertLayer(cfg, image_width, cross_attention) for _ in range(cfg.depth))

    def forward(self, ids, attention_mask, image_tokens=None, return_probs=False):
        """-> (hidden [B, T, d], per-layer CA probabilities [B, heads, T, Np+1] when asked)."""
        if image_tokens is not None and not hasattr(self.layers[0], "cross_attn"):
            raise ValueError("this CADA has no decoder (atp.enabled and ara.enabled are both false)")
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.drop(self.norm(self.word(ids) + self.position(pos)))
        pad_bias = ((1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0)  # mask padded keys
        if self.causal:  # and the keys after each query, as BERT's extended mask does (-10000, not -inf)
            future = torch.ones(len(pos), len(pos), dtype=torch.bool, device=ids.device).triu(1)
            pad_bias = pad_bias + future.to(x.dtype) * -10000.0
        maps = []
        for layer in self.layers:
            x, probs = layer(x, pad_bias, image_tokens, return_probs)
            maps.append(probs)
        return x, maps


class MLMHead(nn.Module):
    """phi of Eq. (6): dense, GELU, LN, then the word-embedding matrix (tied) plus a bias."""

    def __init__(self, width: int, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.word_embeddings = [word_embeddings]  # a list, so the tied matrix is not registered twice
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))

    def forward(self, x):
        return self.norm(F.gelu(self.dense(x))) @ self.word_embeddings[0].weight.T + self.bias


# ----------------------------------------------------------------------------- the model
class CADA(TBPRModel):
    name = "cada"
    data_fields = ("vocab",)
    reranks = True  # CADA-L: the top-k of the dual encoder re-scored by the ITM heads

    def __init__(self, cfg: CADAConfig, vocab=None):
        super().__init__(cfg)
        t = cfg.text
        if cfg.atp.enabled and self.num_groups(cfg) < 1:
            raise ValueError(f"atp.group_size {cfg.atp.group_size} must be <= text.text_len - 1 = {t.text_len - 1}")
        if t.text_len > t.max_positions:
            raise ValueError(f"text.text_len {t.text_len} exceeds text.max_positions {t.max_positions}")
        if isinstance(vocab, Vocabulary):
            vocab = vocab.to_json()["words"]
        if vocab is None and t.tokenizer == "words":  # no training captions: every whole WordPiece word
            vocab = wordpiece_words()
        self.vocab = list(vocab) if vocab is not None else None
        if t.tokenizer == "words" and self.vocab is not None:
            n_ids = len(SPECIALS) + len(self.vocab)
            if t.vocab_size == 0:  # the CPU profiles size the embedding from the vocabulary
                self.cfg = cfg = apply_overrides(cfg, {"text.vocab_size": n_ids})
                t = cfg.text
            elif t.vocab_size != n_ids:
                raise ValueError(f"text.vocab_size {t.vocab_size} != {len(SPECIALS)} specials + {len(self.vocab)} "
                                 "words; set text.vocab_size=0 to size it from the vocabulary")
        if t.vocab_size < len(SPECIALS):
            raise ValueError(f"text.vocab_size is {t.vocab_size}; it must hold the {len(SPECIALS)} special "
                             "tokens and the words (0 sizes it from the vocabulary)")
        if cfg.ara.decoder not in ("shared", "separate"):
            raise ValueError(f"ara.decoder must be 'shared' (paper) or 'separate' (official code), "
                             f"got {cfg.ara.decoder!r}")
        self.visual_encoder = VisionTransformer(cfg.vision, cfg.data.image_size)
        # the text encoder is also the decoder [Sec. III-B]; its CA sub-layers exist only if ATP or ARA
        # decodes with it
        self.text_encoder = TextTransformer(t, cfg.vision.width, cross_attention=self.encoder_decodes)
        self.vision_proj = nn.Linear(cfg.vision.width, cfg.embed_dim)  # W_v
        self.text_proj = nn.Linear(t.width, cfg.embed_dim)  # W_t
        if cfg.atp.enabled:
            self.itm_head = nn.Linear(t.width, 2)  # W_cls, the [ENC] group (Eq. 4)
            self.itm_local_head = nn.Linear(t.width, 2)  # W_loc, shared by the token groups (Eq. 4)
        if self.separate_ara_decoder:  # the official code's text_decoder (BertMLMLMHeadModel)
            self.text_decoder = TextTransformer(t, cfg.vision.width, cross_attention=True, causal=True)
        if cfg.ara.enabled:  # phi (Eq. 6), tied to the word embeddings of the ARA decoder
            self.mlm_head = MLMHead(t.width, self.ara_decoder.word)
        self.apply(partial(self._init_weights, std=cfg.init_std))
        self._tokenizer = None
        if cfg.pretrained and not building_on_meta():
            load_blip(self, cfg.pretrained)

    @staticmethod
    def _init_weights(m, std: float):
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, VisionTransformer):
            nn.init.trunc_normal_(m.pos_embed, std=std, a=-2 * std, b=2 * std)
            nn.init.trunc_normal_(m.cls_token, std=std, a=-2 * std, b=2 * std)

    @property
    def has_decoder(self) -> bool:
        return self.cfg.atp.enabled or self.cfg.ara.enabled

    @property
    def separate_ara_decoder(self) -> bool:
        return self.cfg.ara.enabled and self.cfg.ara.decoder == "separate"

    @property
    def encoder_decodes(self) -> bool:
        """Whether the text encoder needs cross-attention: ATP, or ARA on the shared decoder."""
        return self.cfg.atp.enabled or (self.cfg.ara.enabled and not self.separate_ara_decoder)

    @property
    def ara_decoder(self) -> TextTransformer:
        return self.text_decoder if self.separate_ara_decoder else self.text_encoder

    def extra_state(self) -> dict:
        return {"vocab": self.vocab} if self.vocab is not None else {}

    @staticmethod
    def num_groups(cfg: CADAConfig) -> int:
        """N_g = floor((L - s) / t) + 1 token groups (the [ENC] group not counted)."""
        return (cfg.text.text_len - 1 - cfg.atp.group_size) // cfg.atp.group_stride + 1

    @property
    def tokenizer(self) -> CaptionTokenizer:
        if self._tokenizer is None:
            t = self.cfg.text
            self._tokenizer = CaptionTokenizer(t.tokenizer, t.text_len, t.max_words, self.vocab)
            if len(self._tokenizer) > t.vocab_size:
                raise ValueError(f"tokenizer has {len(self._tokenizer)} ids but text.vocab_size is {t.vocab_size}")
        return self._tokenizer

    # --- encoders and the decoder
    def encode_image_tokens(self, images):
        return self.visual_encoder(images)

    def decode(self, ids, attention_mask, image_tokens, return_probs=False):
        """Decoder pass: [ENC] replaces [CLS] at position 0, every layer cross-attends to the image."""
        ids = ids.clone()
        ids[:, 0] = self.tokenizer.enc_id
        return self.text_encoder(ids, attention_mask, image_tokens, return_probs)

    def decode_masked(self, ids, attention_mask, image_tokens, return_probs=False):
        """ARA's decoder pass: the shared decoder ([ENC] first), or the separate causal decoder with
        the tokenizer's [CLS] first, as the official code feeds it (``models/cada.py`` ``ara_loss``)."""
        if not self.separate_ara_decoder:
            return self.decode(ids, attention_mask, image_tokens, return_probs)
        return self.text_decoder(ids, attention_mask, image_tokens, return_probs)

    def global_features(self, image_tokens, ids, attention_mask):
        f_v = self.vision_proj(image_tokens[:, 0])  # f^v = W_v v_cls (Sec. 2.4)
        f_t = self.text_proj(self.text_encoder(ids, attention_mask)[0][:, 0])  # f^t = W_t t_cls
        return f_v, f_t

    def group_features(self, hidden, attention_mask):
        """Mean of each window G_m of D_{1:L} (size s, stride t), m = 1..N_g [Sec. III-B]."""
        s, t, n_g = self.cfg.atp.group_size, self.cfg.atp.group_stride, self.num_groups(self.cfg)
        starts = [1 + m * t for m in range(n_g)]
        windows = torch.stack([hidden[:, a:a + s] for a in starts], 1)  # [B, N_g, s, d]
        if not self.cfg.atp.masked_mean:
            return windows.mean(2)
        w = torch.stack([attention_mask[:, a:a + s] for a in starts], 1).to(hidden.dtype)[..., None]
        mean_real = (windows * w).sum(2) / w.sum(2).clamp_min(1)
        return torch.where(w.sum(2) > 0, mean_real, windows.mean(2))  # window of padding only: plain mean

    # --- training
    def hard_negatives(self, f_v, f_t, pids):
        """j-(i) = argmax_{y(j) != y(i)} sim(T_i, I_j) and k-(i) = argmax_{y(k) != y(i)} sim(I_i, T_k)."""
        with torch.no_grad():
            if self.cfg.atp.hardneg_sim == "cosine":
                f_v, f_t = F.normalize(f_v, dim=-1), F.normalize(f_t, dim=-1)
            sim = (f_t @ f_v.T).masked_fill(pids[:, None] == pids[None, :], float("-inf"))
            return sim.argmax(1), sim.argmax(0)  # negative image per text, negative text per image

    def mask_attributes(self, captions, ids):
        """Masked Attribute Modeling input: each attribute phrase -> [MASK] with probability r
        [Sec. III-C]."""
        enc = [self.tokenizer.encode(c) for c in captions]
        masked = torch.zeros_like(ids, dtype=torch.bool)
        for b, e in enumerate(enc):
            if self.cfg.ara.mask_mode == "word":
                units, rate = [[p] for p in e.attr_words], self.cfg.ara.word_rate
            else:
                units, rate = e.chunks, self.cfg.ara.mask_rate
            if not units:
                continue
            draw = torch.rand(len(units)) < rate  # z_c ~ Bernoulli(r)
            for unit, z in zip(units, draw.tolist()):
                if z:
                    masked[b, unit] = True
        return ids.masked_fill(masked, self.tokenizer.mask_id), masked

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        images, pids, captions = batch["images"], batch["pids"], batch["captions"]
        ids, att = self.tokenizer.batch(captions, images.device)
        V = self.encode_image_tokens(images)
        f_v, f_t = self.global_features(V, ids, att)
        if cfg.global_loss == "ndf":
            l_global = ndf_loss(f_v, f_t, pids, cfg.temperature, cfg.ndf_variant)  # Eqs. (1)-(3)
        elif cfg.global_loss == "cmpm":
            l_global = cmpm_loss(f_v, f_t, pids)
        else:
            raise ValueError(f"global_loss must be 'ndf' or 'cmpm', got {cfg.global_loss!r}")
        out = {"global": l_global}
        loss = l_global
        if cfg.atp.enabled:  # Eqs. (4)-(5)
            neg_img, neg_txt = self.hard_negatives(f_v, f_t, pids)
            d, _ = self.decode(torch.cat([ids, ids, ids[neg_txt]]), torch.cat([att, att, att[neg_txt]]),
                               torch.cat([V, V[neg_img], V]))
            n = len(ids)
            labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long().to(ids.device)
            groups = self.group_features(d, torch.cat([att, att, att[neg_txt]]))
            out["atp"] = atp_loss(self.itm_head(d[:, 0]), self.itm_local_head(groups), labels)
            loss = loss + out["atp"]
        if cfg.ara.enabled:  # Eqs. (6)-(7), positive pairs only
            masked_ids, masked = self.mask_attributes(captions, ids)
            d, _ = self.decode_masked(masked_ids, att, V)
            out["ara"] = mam_loss(self.mlm_head(d[masked]), ids[masked], cfg.text.vocab_size)
            loss = loss + cfg.ara.weight * out["ara"]  # Eq. (8)
        out["loss"] = loss
        return out

    # --- retrieval
    def encode_images(self, images):
        V = self.encode_image_tokens(images)
        return {"global": F.normalize(self.vision_proj(V[:, 0]), dim=-1), "tokens": V}

    def encode_texts(self, captions: list[str]):
        ids, att = self.tokenizer.batch(captions, self.device)
        f_t = self.text_proj(self.text_encoder(ids, att)[0][:, 0])
        return {"global": F.normalize(f_t, dim=-1), "ids": ids, "mask": att}

    def similarity(self, text_feats, image_feats) -> torch.Tensor:
        return text_feats["global"] @ image_feats["global"].T  # s^g, cosine (CADA-G)

    def match_score(self, ids, att, image_tokens) -> torch.Tensor:
        """s^l of Sec. III-D: the decoder's "match" logit (or probability) for each (text, image) pair."""
        d, _ = self.decode(ids, att, image_tokens)
        logits = [self.itm_head(d[:, 0])]
        if self.cfg.local_groups == "enc+groups":
            logits.append(self.itm_local_head(self.group_features(d, att)).mean(1))
        elif self.cfg.local_groups != "enc":
            raise ValueError(f"local_groups must be 'enc' or 'enc+groups', got {self.cfg.local_groups!r}")
        logits = torch.stack(logits).mean(0)
        return logits.softmax(-1)[:, 1] if self.cfg.local_score == "prob" else logits[:, 1]

    @torch.no_grad()
    def rerank(self, text_feats, image_feats, topk_index, batch_pairs: int = 512) -> torch.Tensor:
        """CADA-L: S = s^g + s^l for each query's k candidates (k decoder passes per query) [Sec. III-D]."""
        if not self.cfg.atp.enabled:
            raise ValueError("CADA-L re-ranking needs the ATP match head: set atp.enabled=true or rerank_k=0")
        q, k = topk_index.shape
        flat = topk_index.reshape(-1)
        ids = text_feats["ids"].repeat_interleave(k, 0)
        att = text_feats["mask"].repeat_interleave(k, 0)
        s_l = torch.cat([self.match_score(ids[a:a + batch_pairs], att[a:a + batch_pairs],
                                          image_feats["tokens"][flat[a:a + batch_pairs]])
                         for a in range(0, q * k, batch_pairs)]) if q * k else ids.new_zeros(0).float()
        s_g = (text_feats["global"].repeat_interleave(k, 0) * image_feats["global"][flat]).sum(-1)
        return (s_g + s_l).view(q, k)

    # --- the figures' internals
    @torch.no_grad()
    def word_patch_attention(self, images, captions, layers=None) -> torch.Tensor:
        """Fig. 5: decoder CA maps A[j, 1:] averaged over heads and ``layers`` (default all),
        renormalised, on the patch grid -> [B, T, gh, gw] for every token position j. The ATP decoder
        (the text encoder) where it has cross-attention, else the separate ARA decoder."""
        ids, att = self.tokenizer.batch(captions, self.device)
        decode = self.decode if self.encoder_decodes else self.decode_masked
        _, maps = decode(ids, att, self.encode_image_tokens(images), return_probs=True)
        chosen = range(len(maps)) if layers is None else layers
        a = torch.stack([maps[i] for i in chosen]).mean((0, 2))[..., 1:]  # drop the image [CLS] column
        a = a / a.sum(-1, keepdim=True)
        return a.view(*a.shape[:2], *self.visual_encoder.grid)

    @torch.no_grad()
    def predict_masked(self, images, captions, positions: list[list[int]], topk: int = 3):
        """Fig. 6: mask ``positions[b]`` of caption b, decode with image b, return per masked position
        (position, true id, top-k ids, top-k probabilities)."""
        ids, att = self.tokenizer.batch(captions, self.device)
        masked = torch.zeros_like(ids, dtype=torch.bool)
        for b, pos in enumerate(positions):
            masked[b, pos] = True
        d, _ = self.decode_masked(ids.masked_fill(masked, self.tokenizer.mask_id), att,
                                  self.encode_image_tokens(images))
        rows, cols = masked.nonzero(as_tuple=True)  # the head at the masked positions only (30k-word vocabularies)
        top = self.mlm_head(d[rows, cols]).softmax(-1).topk(topk, -1)
        row_of = {(b, p): i for i, (b, p) in enumerate(zip(rows.tolist(), cols.tolist()))}
        return [[(p, int(ids[b, p]), top.indices[row_of[b, p]].tolist(), top.values[row_of[b, p]].tolist())
                 for p in pos] for b, pos in enumerate(positions)]


# ----------------------------------------------------------------------------- BLIP weights
BLIP_BERT_NAMES = [  # (regex on a MED BERT key after its prefix, our name after it)
    (r"embeddings\.word_embeddings\.", "word."),
    (r"embeddings\.position_embeddings\.", "position."),
    (r"embeddings\.LayerNorm\.", "norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.", r"layers.\1.self_attn."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.self_norm."),
    (r"encoder\.layer\.(\d+)\.crossattention\.self\.", r"layers.\1.cross_attn."),
    (r"encoder\.layer\.(\d+)\.crossattention\.output\.dense\.", r"layers.\1.cross_attn.out."),
    (r"encoder\.layer\.(\d+)\.crossattention\.output\.LayerNorm\.", r"layers.\1.cross_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
]
# BLIP's (and the official CADA's) text encoder, its text decoder's BERT (``text_decoder.bert``, our
# separate ARA decoder) and the decoder's LM head (our MLM head phi)
_BLIP_NAMES = [(rf"^{src}\.{pattern}", f"{dst}.{repl}")
               for src, dst in (("text_encoder", "text_encoder"), (r"text_decoder\.bert", "text_decoder"))
               for pattern, repl in BLIP_BERT_NAMES] + [
    (r"^text_decoder\.cls\.predictions\.transform\.dense\.", "mlm_head.dense."),
    (r"^text_decoder\.cls\.predictions\.transform\.LayerNorm\.", "mlm_head.norm."),
    (r"^text_decoder\.cls\.predictions\.bias$", "mlm_head.bias"),
    (r"^(visual_encoder|vision_proj|text_proj|itm_head|itm_local_head)\.", r"\1."),
]


def blip_to_cada_names(blip_state: dict, separate_decoder: bool = False) -> dict:
    """Rename the BLIP checkpoint entries CADA uses (Sec. IV-B, official code); everything else
    (momentum encoders, queues, position ids, the LM head's tied copies) is dropped, and so is the text
    decoder's BERT unless ``separate_decoder`` (the official code's separate ARA decoder)."""
    out = {}
    for key, value in blip_state.items():
        for pattern, repl in _BLIP_NAMES:
            if re.search(pattern, key):
                ours = re.sub(pattern, repl, key)
                if separate_decoder or not ours.startswith("text_decoder."):
                    out[ours] = value
                break
    return out


_ONLY_WITH_DECODER = ("itm_head.", "itm_local_head.", "mlm_head.", "text_decoder.")
_CROSS = re.compile(r"^text_encoder\.layers\.\d+\.cross_(attn|norm)\.")
_LAYER = re.compile(r"^(visual_encoder\.blocks|text_encoder\.layers|text_decoder\.layers)\.(\d+)\.")


def _first_layers_only(model: CADA, state: dict, path: str) -> dict:
    """A shallower CADA than its checkpoint (Table VII's rows) starts from the checkpoint's first
    layers: entries of layers at or past this model's depth are left out, with one line saying so
    (a deeper CADA starts its extra layers at random, listed by ``load_blip``)."""
    stacks = {"visual_encoder.blocks": model.visual_encoder.blocks, "text_encoder.layers": model.text_encoder.layers}
    if model.separate_ara_decoder:
        stacks["text_decoder.layers"] = model.text_decoder.layers
    beyond = {k: m.group(1) for k in state if (m := _LAYER.match(k)) and m.group(1) in stacks
              and int(m.group(2)) >= len(stacks[m.group(1)])}  # key -> its stack
    if beyond:
        kept = " and ".join(f"{len(stacks[name])} {name}" for name in sorted(set(beyond.values())))
        print(f"CADA: {path} is deeper than this model: its first {kept} are loaded, the {len(beyond)} "
              "tensors of the layers past them left out")
    return {k: v for k, v in state.items() if k not in beyond}


def _check_shapes(model: CADA, state: dict, path: str) -> None:
    """One line naming the first tensor whose shape differs (another width, vocabulary or text length)."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f"pretrained={path!r}: {key} is {tuple(value.shape)} there, {tuple(own[key].shape)} "
                             f"here; build CADA at the member's sizes (its manifest's arch; WordPiece ids: "
                             f"text.tokenizer=bert, text.vocab_size=30524) or set pretrained=null")


def load_blip(model: CADA, path: str) -> None:
    """Initialise from BLIP ViT-B ``model_base.pth`` (local path); position embeddings are resized
    bicubically to this model's patch grid."""
    layout = zoo.manifest(path)["layout"] if zoo.is_zoo(path) else "blip"
    if zoo.is_zoo(path):  # pre-trained here (tbpr/zoo): an image-only member fills the ViT alone, the
        # aligned member (zoo:blip-s, BLIP's key layout) what BLIP's file fills
        state = zoo.load(path, model.visual_encoder.grid)
        if layout == "timm-vit":
            state = {f"visual_encoder.{k}": v for k, v in state.items()}
        elif layout == "blip":
            state = blip_to_cada_names(state, model.separate_ara_decoder)
            own, grid = zoo.manifest(path)["grid"], model.visual_encoder.grid
            if tuple(own) != tuple(grid):
                state["visual_encoder.pos_embed"] = zoo.resize_pos_embed(state["visual_encoder.pos_embed"],
                                                                         tuple(own), tuple(grid))
            _check_shapes(model, state, path)
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"pretrained={path!r}: BLIP's model_base.pth not found here (nothing "
                                    "downloads); set pretrained to its local path, or pretrained=null "
                                    "for random initialisation")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = blip_to_cada_names(state.get("model", state), model.separate_ara_decoder)
    pos = state.get("visual_encoder.pos_embed")
    grid = model.visual_encoder.grid
    if pos is not None and pos.shape[1] != 1 + grid[0] * grid[1]:
        side = int((pos.shape[1] - 1) ** 0.5)
        patches = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        state["visual_encoder.pos_embed"] = torch.cat([pos[:, :1], patches.flatten(2).transpose(1, 2)], 1)
    state = _first_layers_only(model, state, path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # BLIP's heads and cross-attention have no place in a CADA without ATP / ARA (Table IV rows 0-1:
    # BLIP's dual encoder alone); anything else that does not fit is a wrong file
    unexpected = [k for k in unexpected if not k.startswith(_ONLY_WITH_DECODER) and not _CROSS.match(k)]
    if unexpected:
        raise ValueError(f"{path}: unexpected BLIP entries {unexpected[:5]}")
    random_init = [k for k in missing if not k.startswith("itm_local_head")]
    if random_init and layout == "blip":  # an image-only zoo member leaves the text side by design
        print(f"CADA: {len(random_init)} tensors not in {path} stay randomly initialised, e.g. {random_init[:3]}")

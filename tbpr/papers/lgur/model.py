"""LGUR: Learning Granularity-Unified Representations for text-to-image person re-identification
(Shao et al., ACM MM 2022, arXiv 2207.07802; official code github.com/ZhiyinShao-H/LGUR).

Captions are coarse ("a red jacket"), image patches are fine (the exact shade, the folds). LGUR closes
this granularity gap in two steps on top of two independent encoders:

- **DGA** (Dictionary-based Granularity Alignment): a learnable Multi-modality Shared Dictionary 𝒟
  of atoms is the key/value of one cross-attention block ``Trans``; word tokens (Eq. 1) and patch
  tokens (Eq. 2) both query it, so both are rebuilt from the same atoms. A foreground mask ℳ
  weights the visual rebuild, and during training the patches are also rebuilt from the paired
  caption's words (Eq. 3, text guidance) and a ranking loss pulls the two visual rebuilds together.
- **PGU** (Prototype-based Granularity Unification): K shared prototypes 𝒫 query either modality's
  tokens (``Trans_P``), and each prototype output has its own FC (shared by the modalities), Eqs. 4-5.

Retrieval: cosine of the concatenated, L2-normalised K part features; each side encoded alone.

Ablation switches (Tables 5-7): ``use_pgu``, ``recon_type`` (none | self_attn | unshared_dict |
shared_dict), ``use_mask``, ``use_guidance``, ``share_prototypes``. Without PGU the parts are replaced
by one global max-pooled part (the paper does not define its baseline; an earlier baseline class
of the official code max-pools); without guidance the raw visual branch is V itself, as in the
official code's path without guidance features.
"""
from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import BertConfig, BertModel

from ...config import DataConfig, ModelConfig, TrainConfig
from ...cache import FeatureCache
from ...data.text import bert_tokenizer, minilm_path, pretrained_bert
from ...losses import part_id_loss, semi_hard_ranking_loss
from ...backbones import ResNetPatchTokens, ViTPatchTokens, hub_weights
from ..base import TBPRModel

RECON_TYPES = ("none", "self_attn", "unshared_dict", "shared_dict")
# the official code trains 𝒟, 𝒫, ℳ, Trans and Trans_P at the backbone's 10× lower rate (paper: 1e-3)
CODE_LR_MULT = {"visual": 0.1, "dictionary": 0.1, "prototypes": 0.1, "mask_head": 0.1, "dga": 0.1,
                "pgu": 0.1}


@dataclass
class LGURConfig(ModelConfig):
    # visual backbone: DeiT-Small/16 (11 of 12 blocks, CLS dropped) or ResNet-50 + 1×1 conv
    backbone: str = "deit_small"  # deit_small | resnet50
    vision_pretrained: str | None = "deit_small_distilled_patch16_224"  # timm name or local file
    patch_size: int = 16
    vit_depth: int = 11
    vit_heads: int = 6
    vit_mlp_ratio: float = 4.0
    drop_path: float = 0.1
    # frozen contextual text encoder (a BERT) followed by the trainable Bi-LSTM
    text_pretrained: str | None = "bert-base-uncased"  # transformers name / path, "minilm", None
    text_width: int = 768  # architecture used when text_pretrained is None (and for meta counting)
    text_layers: int = 12  # a loaded encoder keeps its first text_layers layers
    text_heads: int = 12
    text_ffn: int = 3072
    max_words: int = 100  # WordPiece ids incl. [CLS]/[SEP]
    cache_text_features: bool = True  # frozen outputs computed once per caption
    # the frozen BERT's dropout: 0 = never (paper: a frozen feature extractor); E = on from epoch E (the
    # official code builds BERT in eval mode, but network.train() after each epoch's test turns its
    # dropout on from epoch 2; its weights stay frozen). Those epochs encode every caption afresh.
    text_dropout_from_epoch: int = 0
    # common width D (= the DeiT-S width, so no projection is needed)
    dim: int = 384
    # DGA
    num_atoms: int = 400
    dga_heads: int = 6
    dga_head_dim: int = 64
    dga_ffn: int = 768
    # PGU (2 layers with 512-d heads as in the official code; the paper suggests one layer like Eq. 1)
    num_prototypes: int = 6
    pgu_layers: int = 2
    pgu_heads: int = 6
    pgu_head_dim: int = 512
    pgu_ffn: int = 512
    part_dim: int = 512
    num_classes: int = 11000  # CUHK-PEDES training identities
    margin: float = 0.3
    # ablation switches
    use_pgu: bool = True
    recon_type: str = "shared_dict"
    use_mask: bool = True
    use_guidance: bool = True
    share_prototypes: bool = True
    visual_consistency_without_guidance: bool = True  # L_rank(f^v, f^v_𝒟) when G is off (official code)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=60, optimizer="adam", lr=1e-3, weight_decay=0.0, lr_mult=dict(CODE_LR_MULT),
        schedule="multistep", milestones=(20, 40, 50), gamma=0.1,
        lr_epoch_offset=1))  # the official code steps its scheduler at each epoch's start
    data: DataConfig = field(default_factory=lambda: DataConfig(
        image_size=(384, 128), batch_size=64, sampler="random", flip=True, pad_crop=10,
        max_caption_len=100))

    def __post_init__(self):
        if self.recon_type not in RECON_TYPES:
            raise ValueError(f"LGURConfig.recon_type={self.recon_type!r}; choose one of {RECON_TYPES}")
        if self.recon_type == "none" and (self.use_mask or self.use_guidance):
            raise ValueError("LGURConfig: use_mask / use_guidance are parts of DGA and need "
                             "recon_type != 'none'; set them to False for the no-DGA rows")
        if self.recon_type == "self_attn" and (self.use_mask or self.use_guidance):
            raise ValueError("LGURConfig: the self-attention reconstruction (Table 6) has no ℳ and "
                             "no G; set use_mask=False, use_guidance=False")


# ----------------------------------------------------------------------------- the shared block
class CrossAttentionLayer(nn.Module):
    """Pre-norm cross-attention + ReLU FFN with residuals (Eq. 1, as in the official code). One
    LayerNorm normalises both the queries and the keys/values; no self-attention among the queries,
    no dropout."""

    def __init__(self, dim: int, heads: int, head_dim: int, ffn: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, inner, bias=False)
        self.k = nn.Linear(dim, inner, bias=False)
        self.v = nn.Linear(dim, inner, bias=False)
        self.out = nn.Linear(inner, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # B, h, n, d_h

    def forward(self, x, y, key_mask=None):
        """x [B, n_q, D] queries, y [B, n_k, D] keys/values, key_mask [B, n_k] (True = real)."""
        xn, yn = self.norm1(x), self.norm1(y)
        q, k, v = self._split(self.q(xn)), self._split(self.k(yn)), self._split(self.v(yn))
        logits = q @ k.transpose(-1, -2) / self.head_dim ** 0.5
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attn = logits.softmax(dim=-1)  # B, h, n_q, n_k
        x = x + self.out((attn @ v).transpose(1, 2).flatten(2))
        return x + self.ffn(self.norm2(x)), attn


class Trans(nn.Module):
    """``Trans(Q, KV; π)``: a stack of cross-attention layers; the keys/values feed every layer.
    Returns the output and the last layer's attention ``[B, h, n_q, n_k]``."""

    def __init__(self, dim: int, heads: int, head_dim: int, ffn: int, layers: int = 1):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads, head_dim, ffn) for _ in range(layers))

    def forward(self, x, y, key_mask=None):
        for layer in self.layers:
            x, attn = layer(x, y, key_mask)
        return x, attn


# ----------------------------------------------------------------------------- frozen text features
def _text_source(name: str) -> str:
    return str(minilm_path()) if name == "minilm" else name


@functools.lru_cache(maxsize=2)
def _pretrained_bert(name: str):
    """Loaded once per process (ablation sweeps build many models around the same frozen BERT); a hub
    name that cannot be loaded here is a one-line error naming ``text_pretrained``."""
    source = _text_source(name)
    if Path(source).exists():
        return pretrained_bert(source)
    return hub_weights("text_pretrained", name, lambda: pretrained_bert(source))


# ----------------------------------------------------------------------------- the model
class LGUR(TBPRModel):
    name = "lgur"

    def __init__(self, cfg: LGURConfig):
        super().__init__(cfg)
        D, K = cfg.dim, cfg.num_prototypes
        on_meta = torch.empty(0).device.type == "meta"
        self.visual = self._build_visual(cfg, load=not on_meta)
        self.text_encoder = self._build_text_encoder(cfg, load=not on_meta)
        self.bilstm = nn.LSTM(cfg.text_width, D, batch_first=True, bidirectional=True, bias=False)
        # DGA
        if cfg.recon_type != "none":
            self.dga = Trans(D, cfg.dga_heads, cfg.dga_head_dim, cfg.dga_ffn)
        if cfg.recon_type in ("shared_dict", "unshared_dict"):
            self.dictionary = nn.Parameter(torch.randn(cfg.num_atoms, D))  # 𝒟 (for words and patches)
        if cfg.recon_type == "unshared_dict":
            self.dictionary_visual = nn.Parameter(torch.randn(cfg.num_atoms, D))  # Table 6 "unshared"
        if cfg.use_mask:
            self.mask_head = nn.Linear(D, 1)  # ℳ: the paper's 1×1 conv + sigmoid
        # PGU, or the baseline's global max-pool head (one part)
        if cfg.use_pgu:
            self.prototypes = nn.Parameter(torch.randn(K, D))  # 𝒫
            if not cfg.share_prototypes:
                self.prototypes_text = nn.Parameter(torch.randn(K, D))  # Table 7 "unshared"
            self.pgu = Trans(D, cfg.pgu_heads, cfg.pgu_head_dim, cfg.pgu_ffn, cfg.pgu_layers)
        self.num_parts = K if cfg.use_pgu else 1
        self.part_fcs = nn.ModuleList(nn.Linear(D, cfg.part_dim, bias=False) for _ in range(self.num_parts))
        self.classifiers = nn.ModuleList(nn.Linear(cfg.part_dim, cfg.num_classes)
                                         for _ in range(self.num_parts))
        self._init_weights()
        self._tokenizer = None
        self._text_cache = FeatureCache("lgur_text", self._text_cache_key() if cfg.cache_text_features else None)
        self.steps_per_epoch = 0  # set by the recipe from the training split (text_dropout_from_epoch)
        if cfg.text_dropout_from_epoch > 0:  # saved with the weights: a resumed run knows its epoch
            self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        if cfg.text_pretrained is not None:
            # the frozen encoder is reloaded from its source, so checkpoints leave it out
            self._register_state_dict_hook(_drop_frozen_text_encoder)
            self.register_load_state_dict_post_hook(_ignore_missing_text_encoder)

    # --- construction
    @staticmethod
    def _build_visual(cfg: LGURConfig, load: bool) -> nn.Module:
        if cfg.backbone == "deit_small":
            vit = ViTPatchTokens(cfg.data.image_size, cfg.patch_size, cfg.dim, cfg.vit_depth,
                                 cfg.vit_heads, cfg.vit_mlp_ratio, cfg.drop_path)
            if load and cfg.vision_pretrained:
                vit.load_deit(cfg.vision_pretrained)
            return vit
        if cfg.backbone == "resnet50":
            return ResNetPatchTokens(cfg.data.image_size, cfg.dim, cfg.vision_pretrained if load else None)
        raise ValueError(f"LGURConfig.backbone={cfg.backbone!r}; choose 'deit_small' or 'resnet50'")

    @staticmethod
    def _build_text_encoder(cfg: LGURConfig, load: bool) -> nn.Module:
        if load and cfg.text_pretrained is not None:
            encoder = copy.deepcopy(_pretrained_bert(cfg.text_pretrained))
            if encoder.config.hidden_size != cfg.text_width:
                raise ValueError(f"text_pretrained={cfg.text_pretrained!r} has width "
                                 f"{encoder.config.hidden_size}; set text_width to match")
            encoder.encoder.layer = encoder.encoder.layer[:cfg.text_layers]
        else:
            encoder = BertModel(BertConfig(
                hidden_size=cfg.text_width, num_hidden_layers=cfg.text_layers,
                num_attention_heads=cfg.text_heads, intermediate_size=cfg.text_ffn,
                max_position_embeddings=max(512, cfg.max_words)), add_pooling_layer=False)
        encoder.requires_grad_(False)
        return encoder.eval()

    def _init_weights(self):
        for fc in self.part_fcs:
            nn.init.kaiming_normal_(fc.weight, mode="fan_out")
        for clf in self.classifiers:
            nn.init.normal_(clf.weight, std=0.001)
            nn.init.zeros_(clf.bias)

    def _text_cache_key(self) -> str | None:
        c = self.cfg
        if c.text_pretrained is None:
            return None
        ident = f"{c.text_pretrained}|{c.text_layers}|{c.max_words}|unpadded"  # padded batches before
        return hashlib.sha1(ident.encode()).hexdigest()[:16]

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()  # frozen: never dropout (the official code's train() turns it back on)
        return self

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            source = self.cfg.text_pretrained
            # bert-base-uncased's WordPiece vocabulary is the packaged one: no hub call for it
            offline = source in (None, "minilm", "bert-base-uncased")
            self._tokenizer = bert_tokenizer(None if offline else _text_source(source))
        return self._tokenizer

    # --- text path: frozen BERT -> Bi-LSTM (mean of the two directions)
    def tokenize(self, captions: list[str], offsets: bool = False):
        return self.tokenizer(captions, truncation=True, max_length=self.cfg.max_words,
                              return_offsets_mapping=offsets)

    @torch.no_grad()
    def _frozen_features(self, captions: list[str]) -> list[torch.Tensor]:
        """The frozen encoder's outputs per caption, encoded in groups of equal token count: padded to
        a batch's longest caption, a caption's fp16 features depended on the captions it was first
        encoded with (other matmul shapes round differently), so a run's result depended on the
        state of the cache; unpadded, they are a function of the caption alone."""
        todo = self._text_cache.missing(captions)
        by_length: dict[int, list[tuple[str, list[int]]]] = {}
        for caption, ids in zip(todo, self.tokenize(todo)["input_ids"] if todo else []):
            by_length.setdefault(len(ids), []).append((caption, ids))
        feats = {}
        for group in by_length.values():
            ids = torch.tensor([i for _, i in group], device=self.device)
            hidden = self.text_encoder(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       token_type_ids=torch.zeros_like(ids)).last_hidden_state
            feats.update(zip((c for c, _ in group), hidden.to("cpu", torch.float16)))
        if feats:
            self._text_cache.add(feats)
        return [self._text_cache.store[c] for c in captions]

    @property
    def text_dropout_on(self) -> bool:
        """Training in an epoch (1-based) >= ``text_dropout_from_epoch`` > 0."""
        e = self.cfg.text_dropout_from_epoch
        if not (self.training and e > 0 and self.steps_per_epoch):
            return False
        return int(self.steps_done) // self.steps_per_epoch + 1 >= e

    @torch.no_grad()
    def _dropout_features(self, captions: list[str]) -> list[torch.Tensor]:
        """The frozen encoder's outputs with its dropout on (no cache: every pass draws new masks)."""
        ids = self.tokenize(captions)["input_ids"]
        self.text_encoder.train()
        try:
            out = []
            for row in ids:
                row = torch.tensor([row], device=self.device)
                out.append(self.text_encoder(input_ids=row, attention_mask=torch.ones_like(row),
                                             token_type_ids=torch.zeros_like(row)).last_hidden_state[0]
                           .to("cpu", torch.float16))
            return out
        finally:
            self.text_encoder.eval()

    def encode_words(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T [B, L, D] and its key mask π [B, L] (True = real token), L = the longest caption."""
        if any(not c.strip() for c in captions):
            raise ValueError("LGUR.encode_words: got an empty caption; drop it from the data")
        feats = self._dropout_features(captions) if self.text_dropout_on else self._frozen_features(captions)
        lengths = torch.tensor([len(f) for f in feats])
        E = pad_sequence(feats, batch_first=True).to(self.device, torch.float32)
        pi = (torch.arange(E.shape[1])[None, :] < lengths[:, None]).to(self.device)
        # Equal to a packed run at every real position, at a third of its CPU cost: with no
        # bias, an LSTM fed zero vectors from a zero state stays exactly zero, so the backward
        # direction starts each caption at its last real token as if the padding were not there.
        out = self.bilstm(E)[0] * pi[..., None]
        T = out.unflatten(-1, (2, self.cfg.dim)).mean(dim=2)  # ½(→h + ←h); padding stays 0
        return T, pi

    # --- DGA
    def foreground_mask(self, V: torch.Tensor) -> torch.Tensor:
        """ℳ = σ(V w_m + b_m) ∈ (0,1)^{B×N×1}; all ones without the mask head."""
        if not self.cfg.use_mask:
            return V.new_ones(V.shape[:2] + (1,))
        return torch.sigmoid(self.mask_head(V))

    def reconstruct_text(self, T, pi):
        """Eq. 1: T_𝒟 = Trans(T, 𝒟) (or Trans(T, T; π) for the self-attention variant)."""
        if self.cfg.recon_type == "self_attn":
            return self.dga(T, T, pi)
        return self.dga(T, self.dictionary.expand(len(T), -1, -1))

    def reconstruct_visual(self, V, M):
        """Eq. 2: V_𝒟 = ℳ ⊙ Trans(V, 𝒟); the mask scales the block output, residual included."""
        if self.cfg.recon_type == "self_attn":
            out, attn = self.dga(V, V)
        else:
            atoms = self.dictionary_visual if self.cfg.recon_type == "unshared_dict" else self.dictionary
            out, attn = self.dga(V, atoms.expand(len(V), -1, -1))
        return M * out, attn

    def text_guided_visual(self, V, M, T, pi):
        """Eq. 3 (training only): V_T = ℳ ⊙ Trans(V, T; π) with the paired caption's words."""
        return M * self.dga(V, T, pi)[0]

    # --- PGU
    def unify(self, X, key_mask=None, text: bool = False):
        """Eq. 4: F(X) = [W_k Trans_P(𝒫, X; π)_k]_k -> [B, K, D_p], and the attention of the
        prototypes over the tokens. Without PGU: one part from a masked global max-pool."""
        if self.cfg.use_pgu:
            protos = self.prototypes_text if text and not self.cfg.share_prototypes else self.prototypes
            H, attn = self.pgu(protos.expand(len(X), -1, -1), X, key_mask)
        else:
            if key_mask is not None:
                X = X.masked_fill(~key_mask[..., None], float("-inf"))
            H, attn = X.amax(dim=1, keepdim=True), None
        W = torch.stack([fc.weight for fc in self.part_fcs])  # [K, D_p, D]: f_k = W_k H_k, one op
        return torch.einsum("bkd,kpd->bkp", H, W), attn

    def _unify_pair(self, X, Y, key_mask=None, text: bool = False):
        both = self.unify(torch.cat([X, Y]), None if key_mask is None else key_mask.repeat(2, 1), text)[0]
        return both.chunk(2)

    def classify(self, parts):
        W = torch.stack([clf.weight for clf in self.classifiers])
        b = torch.stack([clf.bias for clf in self.classifiers])
        return torch.einsum("bkp,kcp->bkc", parts, W) + b

    # --- training (Eqs. 5-10)
    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg, pids = self.cfg, batch["pids"].to(self.device)
        V = self.visual(batch["images"].to(self.device))
        T, pi = self.encode_words(batch["captions"])
        if cfg.text_dropout_from_epoch > 0:
            self.steps_done += 1
        if cfg.recon_type == "none":  # Table 5 No.0/1: raw features only
            f_v, f_t = self.unify(V)[0], self.unify(T, pi, text=True)[0]
            return self._total({"id": self._id(f_v, f_t, pids), "rank": self._rank(f_v, f_t, pids)})
        M = self.foreground_mask(V)
        # the raw visual branch: text-guided rebuild V_T with G, V itself without (official code)
        V_raw = self.text_guided_visual(V, M, T, pi) if cfg.use_guidance else V
        # each modality's two branches go through PGU as one batch (same prototypes, same key mask)
        f_t, f_t_D = self._unify_pair(T, self.reconstruct_text(T, pi)[0], pi, text=True)
        f_v_raw, f_v_D = self._unify_pair(V_raw, self.reconstruct_visual(V, M)[0])
        parts = {
            "id_raw": self._id(f_v_raw, f_t, pids),  # Eq. 8
            "id_recon": self._id(f_v_D, f_t_D, pids),
            "rank_raw": self._rank(f_v_raw, f_t, pids),
            "rank_recon": self._rank(f_v_D, f_t_D, pids),
            "rank_text_recon": self._rank(f_t, f_t_D, pids),
        }
        if cfg.use_guidance:
            parts["guidance"] = self._rank(f_v_raw, f_v_D, pids)  # Eq. 9, L_g
        elif cfg.visual_consistency_without_guidance:
            parts["rank_visual_recon"] = self._rank(f_v_raw, f_v_D, pids)
        return self._total(parts)

    def _id(self, f_a, f_b, pids):
        """Eq. 6: the K part classifiers are shared by the two modalities."""
        return part_id_loss(self.classify(f_a), pids) + part_id_loss(self.classify(f_b), pids)

    def _rank(self, f_a, f_b, pids):
        return semi_hard_ranking_loss(f_a.flatten(1), f_b.flatten(1), pids, self.cfg.margin)

    @staticmethod
    def _total(parts: dict) -> dict:
        return {"loss": sum(parts.values()), **parts}  # Eq. 10: unit weights

    # --- inference: each side alone, φ(f) = concat of the K parts, L2-normalised once
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        V = self.visual(images.to(self.device))
        if self.cfg.recon_type != "none":
            V = self.reconstruct_visual(V, self.foreground_mask(V))[0]
        return F.normalize(self.unify(V)[0].flatten(1), dim=-1)

    def encode_texts(self, captions: list[str]) -> torch.Tensor:
        T, pi = self.encode_words(captions)
        if self.cfg.recon_type != "none":
            T = self.reconstruct_text(T, pi)[0]
        return F.normalize(self.unify(T, pi, text=True)[0].flatten(1), dim=-1)

    def similarity(self, text_feats, image_feats) -> torch.Tensor:
        return text_feats @ image_feats.t()

    # --- internals for the figures (Fig. 3 mask, Fig. 4 atom attention, PGU maps)
    @torch.no_grad()
    def visual_internals(self, images: torch.Tensor) -> dict:
        """ℳ [B, N], DGA attention over atoms [B, h, N, N_a], PGU attention [B, h, K, N], grid."""
        V = self.visual(images.to(self.device))
        M = self.foreground_mask(V)
        out = {"mask": M[..., 0], "grid": self.visual.grid}
        if self.cfg.recon_type != "none":
            V, out["dga_attn"] = self.reconstruct_visual(V, M)
        out["pgu_attn"] = self.unify(V)[1]
        return out

    @torch.no_grad()
    def text_internals(self, captions: list[str]) -> dict:
        """WordPiece offsets per caption and the DGA attention over atoms [B, h, L, N_a]."""
        T, pi = self.encode_words(captions)
        out = {"offsets": self.tokenize(captions, offsets=True)["offset_mapping"], "key_mask": pi}
        if self.cfg.recon_type != "none":
            out["dga_attn"] = self.reconstruct_text(T, pi)[1]
        return out


def _drop_frozen_text_encoder(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "text_encoder.")]:
        del state_dict[key]


def _ignore_missing_text_encoder(module, incompatible_keys):
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith("text_encoder.")]

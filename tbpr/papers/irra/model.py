"""IRRA — Cross-Modal Implicit Relation Reasoning and Aligning (Jiang & Ye, CVPR 2023,
arXiv 2303.12501; official code anosorae/IRRA). Today's common dual encoder, the comparison's
reference row.

A whole CLIP (image encoder, text encoder, both projected to one embedding space) fine-tuned with
three objectives (Sec. 3):

* **SDM** (similarity distribution matching, Eq. 2-4): the softmax of the scaled cosine
  similarities of a text to every image of the batch is pulled, by KL divergence, towards the
  distribution of its true matches (``tbpr.losses.sdm_loss``); the same from each image;
* **IRR** (implicit relation reasoning, Sec. 3.3): a second pass of the text encoder over a caption
  with masked tokens; a multimodal interaction encoder (one cross-attention from the text tokens to
  the image tokens, then a small transformer) predicts the masked tokens (``mlm_loss``);
* **ID**: one identity classifier shared by the image and the text features.

Retrieval is a cosine lookup between the image's [CLS] feature and the text's end-of-text feature;
the interaction encoder is for training only. The image encoder is timm's CLIP ViT (the paper
profile loads OpenAI's weights as ``vit_base_patch16_clip_224.openai``, positional embeddings
resampled to 384×128), the text encoder transformers' ``CLIPTextModelWithProjection``
(``openai/clip-vit-base-patch16``).

The CPU profiles start from the zoo's aligned image-text member (``zoo:blip-s``, tbpr/zoo), which
stands in for CLIP there, so their quick run is "CLIP fine-tuning" here as in the paper. That member
is a small BLIP (CADA's weights), so at those profiles the encoders are its family
(``encoders=blip``): the same timm ViT without CLIP's ``ln_pre`` and with GELU, and a bidirectional
transformers BERT read at [CLS] with BLIP's ``text_proj``, in place of CLIP's causal text transformer
read at end-of-text; ``blip_to_irra`` maps the member's BLIP key layout onto these modules. Both use
the bert-base-uncased WordPiece vocabulary (CLIP's BPE files are not on the machine offline).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModelWithProjection

from ... import zoo
from ...config import DataConfig, ModelConfig, TrainConfig
from ...data.text import bert_tokenizer
from ...losses import id_loss, itc_loss, mlm_loss, sdm_loss
from ..base import TBPRModel

LOSSES = ("itc", "sdm", "mlm", "id")  # "mlm" is IRR, the official code's name for it
ENCODERS = ("clip", "blip")


def _paper_train() -> TrainConfig:
    # official options: Adam 1e-5 (betas 0.9/0.999), wd 4e-5, modules not from CLIP at 5× lr, cosine
    # to 0 over 60 epochs after 5 linear warm-up epochs from 0.1×; fp16 on the GPU.
    return TrainConfig(epochs=60, optimizer="adam", lr=1e-5, weight_decay=4e-5, schedule="cosine",
                       warmup_epochs=5, warmup_factor=0.1, min_lr=0.0, amp="fp16",
                       lr_mult={"cross_modal": 5.0, "mlm_head": 5.0, "classifier": 5.0})


def _paper_data() -> DataConfig:
    # 384×128, batch 128 of random caption pairs; --img_aug: flip, pad-10 crop, erasing (fill = the
    # mean, i.e. 0 after normalisation); CLIP's normalisation.
    return DataConfig(image_size=(384, 128), batch_size=128, sampler="random", flip=True, pad_crop=10,
                      random_erasing=0.5, mean=(0.48145466, 0.4578275, 0.40821073),
                      std=(0.26862954, 0.26130258, 0.27577711), max_caption_len=77)


@dataclass
class IRRAConfig(ModelConfig):
    # the encoders' family: clip (the paper: CLIP ViT-B/16 and CLIP's text transformer) | blip (the CPU
    # profiles: the zoo's aligned member, a small BLIP that stands in for CLIP; see the module docstring)
    encoders: str = "clip"
    # CLIP image encoder (ViT-B/16)
    patch_size: int = 16
    vision_width: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    vision_pretrained: str | None = "vit_base_patch16_clip_224.openai"  # timm name, local file, zoo:<name>; None = random
    # CLIP text encoder
    tokenizer: str = "clip"  # clip (BPE, from text_pretrained) | wordpiece (bert-base-uncased, offline)
    text_width: int = 512
    text_depth: int = 12
    text_heads: int = 8
    text_len: int = 77
    vocab_size: int = 49408
    text_pretrained: str | None = "openai/clip-vit-base-patch16"  # transformers name, local folder, zoo:<name>
    embed_dim: int = 512  # the joint space (CLIP's projection width)
    # IRR: the multimodal interaction encoder
    cross_depth: int = 4
    mask_prob: float = 0.15  # tokens selected for prediction; of those 80 % [MASK], 10 % random, 10 % kept
    # objectives: "itc" (plain CLIP fine-tuning) or "sdm", plus "mlm" (IRR) and "id"
    losses: tuple[str, ...] = ("sdm", "mlm", "id")
    temperature: float = 0.02  # fixed logit scale 1 / 0.02 = 50
    mlm_weight: float = 1.0
    id_weight: float = 1.0
    bias_lr_factor: float = 2.0  # official: biases at 2× the lr, without weight decay
    num_classes: int = 11003  # training identities of CUHK-PEDES (set from the data)
    train: TrainConfig = field(default_factory=_paper_train)
    data: DataConfig = field(default_factory=_paper_data)

    def __post_init__(self):
        unknown = set(self.losses) - set(LOSSES)
        if unknown or not {"itc", "sdm"} & set(self.losses):
            raise ValueError(f"IRRAConfig.losses={self.losses!r}: one of 'itc' / 'sdm' plus any of "
                             "'mlm', 'id'")
        if self.encoders not in ENCODERS:
            raise ValueError(f"IRRAConfig.encoders={self.encoders!r}: 'clip' (the paper) or 'blip' (the zoo's "
                             "aligned member)")
        for name in ("vision_pretrained", "text_pretrained"):
            if zoo.is_zoo(getattr(self, name)) and self.encoders != "blip":
                raise ValueError(f"IRRAConfig.{name}={getattr(self, name)!r} is a zoo member in BLIP's layout; "
                                 "set encoders=blip")


# ----------------------------------------------------------------------------------------------
# the encoders
# ----------------------------------------------------------------------------------------------
def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)  # CLIP's activation


class QuickGELU(nn.Module):
    def forward(self, x):
        return _quick_gelu(x)


# ----------------------------------------------------------------------------------------------
# the zoo's aligned member (BLIP's key layout) -> IRRA's CLIP-role modules
# ----------------------------------------------------------------------------------------------
def blip_to_irra(state: dict, cfg: IRRAConfig) -> dict:
    """A BLIP checkpoint's names -> IRRA's (``encoders=blip``): the ViT and ``vision_proj`` become
    ``image_encoder`` and its ``head`` (CLIP's visual projection), the BERT text encoder (without its
    cross-attention, which serves BLIP's ITM) and ``text_proj`` become ``text_encoder.bert`` and its
    ``text_projection``. BLIP's ITM / MLM heads stay behind: IRRA's IRR modules and classifier start
    random beside CLIP too. The word and position tables are cut to IRRA's vocabulary and text length
    (BLIP adds [DEC] and [ENC] after the 30,522 WordPiece ids); BLIP's BERT has no segment embedding,
    so BERT's is zero."""
    renames = (("visual_encoder.", "image_encoder."), ("vision_proj.", "image_encoder.head."),
               ("text_encoder.", "text_encoder.bert."), ("text_proj.", "text_encoder.text_projection."))
    out = {}
    for key, value in state.items():
        for src, dst in renames:
            if key.startswith(src) and ".crossattention." not in key:
                out[dst + key[len(src):]] = value
    emb = "text_encoder.bert.embeddings."
    for table, rows in (("word_embeddings", cfg.vocab_size), ("position_embeddings", cfg.text_len)):
        weight = out.get(f"{emb}{table}.weight")
        if weight is not None:
            if len(weight) < rows:
                raise ValueError(f"text {table} of the BLIP weights has {len(weight)} rows, IRRA needs "
                                 f"{rows} (vocab_size / text_len)")
            out[f"{emb}{table}.weight"] = weight[:rows]
    if f"{emb}word_embeddings.weight" in out:
        out[f"{emb}token_type_embeddings.weight"] = torch.zeros(2, out[f"{emb}word_embeddings.weight"].shape[1])
    return out


def _zoo_part(cfg: IRRAConfig, source: str, prefix: str, grid: tuple[int, int] | None = None) -> dict:
    """The part of zoo member ``source`` that IRRA's module ``prefix`` loads, names relative to it."""
    meta = zoo.manifest(source)
    if meta.get("layout") != "blip":
        raise ValueError(f"{source} is not an aligned image-text member (layout {meta.get('layout')!r}, "
                         "not 'blip'); IRRA's encoders start from one such as zoo:blip-s")
    state = blip_to_irra(zoo.load(source), cfg)
    pos = "image_encoder.pos_embed"
    if grid is not None and pos in state and tuple(meta["grid"]) != tuple(grid):
        state[pos] = zoo.resize_pos_embed(state[pos], tuple(meta["grid"]), tuple(grid))
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _load_exactly(module: nn.Module, state: dict, source: str, field: str) -> None:
    """Every parameter of ``module`` from ``state`` (one-line errors on a missing key or a shape)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        detail = f"missing {missing[:3]}" if missing else \
            f"{wrong[0]} is {tuple(state[wrong[0]].shape)} there, {tuple(own[wrong[0]].shape)} here"
        raise ValueError(f"IRRA {field}={source!r}: {detail}; build IRRA at the member's sizes "
                         f"(its manifest's arch) or set {field}=null")
    module.load_state_dict({k: state[k] for k in own})


class BertTextEncoder(nn.Module):
    """BLIP's text encoder for ``encoders=blip``: a bidirectional transformers BERT at the config's
    sizes and ``text_projection`` (BLIP's ``text_proj``) to the joint space, applied to every token."""

    def __init__(self, cfg: IRRAConfig):
        super().__init__()
        self.bert = BertModel(BertConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, num_hidden_layers=cfg.text_depth,
            num_attention_heads=cfg.text_heads, intermediate_size=4 * cfg.text_width,
            max_position_embeddings=cfg.text_len, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            pad_token_id=0), add_pooling_layer=False)
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim)


def build_image_encoder(cfg: IRRAConfig) -> VisionTransformer:
    """CLIP's ViT (pre-norm, QuickGELU, [CLS] token) at 384×128; ``head`` is CLIP's visual projection,
    applied to every token as the official code does (the interaction encoder reads them). With
    ``encoders=blip`` BLIP's ViT (no ``ln_pre``, GELU, LayerNorm eps 1e-6) and ``head`` = ``vision_proj``."""
    kwargs = dict(img_size=tuple(cfg.data.image_size), patch_size=cfg.patch_size, num_classes=cfg.embed_dim,
                  embed_dim=cfg.vision_width, depth=cfg.vision_depth, num_heads=cfg.vision_heads,
                  pre_norm=True, act_layer=QuickGELU, norm_layer=nn.LayerNorm, global_pool="token")
    if cfg.encoders == "blip":
        kwargs.update(pre_norm=False, act_layer=nn.GELU, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    if zoo.is_zoo(cfg.vision_pretrained) and torch.empty(0).device.type != "meta":
        vit = VisionTransformer(**kwargs)
        grid = vit.patch_embed.grid_size
        _load_exactly(vit, _zoo_part(cfg, cfg.vision_pretrained, "image_encoder.", grid), cfg.vision_pretrained,
                      "vision_pretrained")
        return vit
    if cfg.vision_pretrained and torch.empty(0).device.type != "meta":
        import timm  # imported where used: 3 s, and only hub / local weights need it
        try:
            if cfg.vision_pretrained.endswith((".safetensors", ".pth", ".bin")):
                vit = VisionTransformer(**kwargs)
                timm.models.load_checkpoint(vit, cfg.vision_pretrained, strict=False)
                return vit
            return timm.create_model(cfg.vision_pretrained, pretrained=True, **{
                k: kwargs[k] for k in ("img_size", "num_classes")})
        except Exception as err:  # offline: hub unreachable
            raise RuntimeError(f"IRRA vision_pretrained={cfg.vision_pretrained!r} cannot be loaded ({err}); "
                               "set vision_pretrained to a local weights file, or to null for random "
                               "initialisation") from err
    return VisionTransformer(**kwargs)


def build_text_encoder(cfg: IRRAConfig) -> CLIPTextModelWithProjection | BertTextEncoder:
    """CLIP's causal text transformer; its ``text_projection`` maps every token to the joint space.
    With ``encoders=blip`` BLIP's BERT (``BertTextEncoder``)."""
    if cfg.encoders == "blip":
        text = BertTextEncoder(cfg)
        if cfg.text_pretrained and torch.empty(0).device.type != "meta":
            if not zoo.is_zoo(cfg.text_pretrained):
                raise ValueError(f"IRRA text_pretrained={cfg.text_pretrained!r}: encoders=blip loads a zoo "
                                 "member in BLIP's layout (zoo:<name>) or nothing (null)")
            _load_exactly(text, _zoo_part(cfg, cfg.text_pretrained, "text_encoder."), cfg.text_pretrained,
                          "text_pretrained")
        return text
    if cfg.text_pretrained and torch.empty(0).device.type != "meta":
        try:
            return CLIPTextModelWithProjection.from_pretrained(cfg.text_pretrained)
        except OSError as err:
            raise RuntimeError(f"IRRA text_pretrained={cfg.text_pretrained!r} cannot be loaded ({err}); "
                               "set text_pretrained to a local folder, or to null for random "
                               "initialisation") from err
    pad, bos, eos = (0, 101, 102) if cfg.tokenizer == "wordpiece" else (1, 49406, 49407)
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        projection_dim=cfg.embed_dim, num_hidden_layers=cfg.text_depth,
        num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.text_len,
        hidden_act="quick_gelu", pad_token_id=pad, bos_token_id=bos, eos_token_id=eos))


class CaptionTokens:
    """Token ids [B, text_len] as CLIP reads them: start, words, end, padding; the end-of-text
    position is where the text feature is read. ``clip``: CLIP's BPE from ``text_pretrained``;
    ``wordpiece``: [CLS] … [SEP] [PAD] of bert-base-uncased (offline)."""

    def __init__(self, cfg: IRRAConfig):
        if cfg.tokenizer == "wordpiece":
            self.tok = bert_tokenizer()
            self.eos_id, self.mask_id = self.tok.sep_token_id, self.tok.mask_token_id
            self.pad_id = self.tok.pad_token_id
        elif cfg.tokenizer == "clip":
            from transformers import CLIPTokenizer  # only the paper profile needs it
            try:
                self.tok = CLIPTokenizer.from_pretrained(cfg.text_pretrained)
            except (OSError, TypeError) as err:
                raise RuntimeError(f"IRRA tokenizer='clip' reads CLIP's BPE files from text_pretrained="
                                   f"{cfg.text_pretrained!r} ({err}); give a local CLIP folder, or set "
                                   "tokenizer=wordpiece") from err
            self.eos_id, self.pad_id = self.tok.eos_token_id, self.tok.pad_token_id
            self.mask_id = self.tok.convert_tokens_to_ids("<|mask|>") if "<|mask|>" in self.tok.get_vocab() \
                else cfg.vocab_size - 3  # official: the spare id before start/end of text
        else:
            raise ValueError(f"IRRAConfig.tokenizer={cfg.tokenizer!r}: 'clip' or 'wordpiece'")
        self.text_len = cfg.text_len
        self.specials = set(self.tok.all_special_ids) | {self.eos_id}

    def __call__(self, captions: list[str], device) -> torch.Tensor:
        enc = self.tok(captions, truncation=True, max_length=self.text_len, padding="max_length")
        return torch.tensor(enc["input_ids"], dtype=torch.long, device=device)


def mask_tokens(ids: torch.Tensor, specials: set[int], mask_id: int, vocab_size: int, prob: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IRR's input (official ``_build_random_masked_tokens_and_labels``): each word token (not start,
    end or padding) is chosen with probability ``prob``; a chosen token becomes [MASK] (80 %), a random
    token (10 %) or stays (10 %); labels hold the chosen tokens' ids, 0 elsewhere. A caption with no
    chosen token gets its first word chosen, so every caption teaches something."""
    words = ~torch.isin(ids, torch.tensor(sorted(specials), device=ids.device))
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = words & (u < prob)
    first_word = words & (words.cumsum(1) == 1)
    chosen |= first_word & ~chosen.any(1, keepdim=True)
    labels = torch.where(chosen, ids, torch.zeros_like(ids))
    v = u / prob  # uniform in [0, 1) again among the chosen (the forced ones draw a fresh one)
    v = torch.where(u < prob, v, torch.rand(ids.shape, generator=generator, device=ids.device))
    masked = ids.clone()
    masked[chosen & (v < 0.8)] = mask_id
    rand = chosen & (v >= 0.8) & (v < 0.9)
    masked[rand] = torch.randint(1, vocab_size - 3, (int(rand.sum()),), generator=generator,
                                 device=ids.device)
    return masked, labels


class CrossModalEncoder(nn.Module):
    """IRR's multimodal interaction encoder: one cross-attention from the (masked) text tokens to the
    image tokens (pre-LayerNorm on both), a ``depth``-layer pre-LN transformer, a final LayerNorm."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        heads = max(1, width // 64)
        self.ln_pre_t, self.ln_pre_i, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation=_quick_gelu, batch_first=True, norm_first=True)
            for _ in range(depth))
        # official initialisation (scales of CLIP's transformer)
        attn_std, proj_std, fc_std = width ** -0.5, width ** -0.5 * (2 * depth) ** -0.5, (2 * width) ** -0.5
        nn.init.normal_(self.cross_attn.in_proj_weight, std=attn_std)
        nn.init.normal_(self.cross_attn.out_proj.weight, std=proj_std)
        for block in self.blocks:
            nn.init.normal_(block.self_attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.self_attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.linear1.weight, std=fc_std)
            nn.init.normal_(block.linear2.weight, std=proj_std)

    def forward(self, text_tokens, image_tokens, need_weights: bool = False):
        k = self.ln_pre_i(image_tokens)
        x, attn = self.cross_attn(self.ln_pre_t(text_tokens), k, k, need_weights=need_weights)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x), attn


class IRRA(TBPRModel):
    name = "irra"
    bias_weight_decay = 0.0  # official solver: biases at bias_lr_factor× the lr, without weight decay

    def __init__(self, cfg: IRRAConfig):
        super().__init__(cfg)
        self.image_encoder = build_image_encoder(cfg)
        self.text_encoder = build_text_encoder(cfg)
        self.logit_scale = 1.0 / cfg.temperature  # fixed, not learned
        d = cfg.embed_dim
        if "mlm" in cfg.losses:
            self.cross_modal = CrossModalEncoder(d, cfg.cross_depth)
            self.mlm_head = nn.Sequential(nn.Linear(d, d), QuickGELU(), nn.LayerNorm(d), nn.Linear(d, cfg.vocab_size))
            nn.init.normal_(self.mlm_head[0].weight, std=(2 * d) ** -0.5)
            nn.init.normal_(self.mlm_head[3].weight, std=d ** -0.5 * (2 * cfg.cross_depth) ** -0.5)
        if "id" in cfg.losses:
            self.classifier = nn.Linear(d, cfg.num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        self._tokens = None

    @property
    def tokens(self) -> CaptionTokens:
        if self._tokens is None:
            self._tokens = CaptionTokens(self.cfg)
        return self._tokens

    # -- encoders: every token projected to the joint space, as the official code does
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.head(self.image_encoder.forward_features(images))  # [B, 1 + N, d]

    def text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cfg.encoders == "blip":  # bidirectional: padding is masked out
            att = (ids != self.tokens.pad_id).long()
            hidden = self.text_encoder.bert(input_ids=ids, attention_mask=att).last_hidden_state
        else:  # causal: no token attends to the padding after its end-of-text
            hidden = self.text_encoder.text_model(input_ids=ids).last_hidden_state
        return self.text_encoder.text_projection(hidden)  # [B, L, d]

    def text_feature(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's feature at the first end-of-text token; BLIP's at [CLS] (encoders=blip)."""
        if self.cfg.encoders == "blip":
            return tokens[:, 0]
        eot = (ids == self.tokens.eos_id).int().argmax(1)
        return tokens[torch.arange(len(ids), device=ids.device), eot]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tokens(images.to(self.device))[:, 0].float()

    def encode_texts(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokens(captions, self.device)
        return self.text_feature(ids, self.text_tokens(ids)).float()

    def similarity(self, text_feats, image_feats) -> torch.Tensor:
        return F.normalize(text_feats, dim=-1) @ F.normalize(image_feats, dim=-1).T

    # -- IRR
    def predict_masked(self, masked_ids: torch.Tensor, image_tokens: torch.Tensor, need_weights: bool = False,
                       positions: torch.Tensor | None = None):
        """MLM logits of the masked caption given the image: [B, L, vocab], or [n, vocab] at the
        ``positions`` (a [B, L] bool mask) only — the loss reads no other, and the vocabulary-wide head
        over every position would be most of a CPU step. With ``need_weights``, also the
        cross-attention weights [B, L, 1 + N] of the text tokens over the image tokens."""
        x, attn = self.cross_modal(self.text_tokens(masked_ids), image_tokens, need_weights=need_weights)
        return self.mlm_head(x if positions is None else x[positions]), attn

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg, pids = self.cfg, batch["pids"].to(self.device)
        image_tokens = self.image_tokens(batch["images"].to(self.device))
        ids = self.tokens(batch["captions"], self.device)
        v, t = image_tokens[:, 0].float(), self.text_feature(ids, self.text_tokens(ids)).float()
        parts = {}
        if "itc" in cfg.losses:
            logits = self.logit_scale * F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).T
            parts["itc"] = itc_loss(logits, torch.eye(len(v), dtype=torch.bool, device=v.device))
        if "sdm" in cfg.losses:
            parts["sdm"] = sdm_loss(v, t, pids, self.logit_scale)
        if "id" in cfg.losses:
            parts["id"] = cfg.id_weight * (id_loss(self.classifier(v), pids) + id_loss(self.classifier(t), pids)) / 2
        if "mlm" in cfg.losses:
            masked, labels = mask_tokens(ids, self.tokens.specials, self.tokens.mask_id, cfg.vocab_size,
                                         cfg.mask_prob)
            chosen = labels > 0
            logits, _ = self.predict_masked(masked, image_tokens, positions=chosen)
            parts["mlm"] = cfg.mlm_weight * mlm_loss(logits, labels[chosen])
        return {"loss": sum(parts.values()), **parts}

"""SSAN: Semantically Self-Aligned Network for text-to-image part-aware person re-identification
(Ding, Ding, Shao, Tao, arXiv:2107.12666, 2021; official code github.com/zifyloo/SSAN).

A dual encoder, read top to bottom:

    image  -> CNN map F [B,C,H,W] -> GMP -> W_g -> v_g                       global branch (Eq. 5)
                                  -> K stripes -> GMP -> W_l^k -> v_l^k      PFL (Eq. 10)
    caption -> W_e^g, W_e^l -> shared Bi-LSTM -> E^g, E^l [B,L,C] (Eq. 1-4)
               E^g -> RMP -> W_g -> t_g                                      (Eq. 6)
               E^l -> WAM s_i^k = σ(W_p^k e_i) -> RMP(s^k ⊙ E^l) -> W_l^k -> t_l^k   (Eq. 8, 9, 11)
    v_l, t_l -> MV-NLN (shared by both modalities) -> v_n, t_n               PRL (Eq. 13-16)

    S = cos(v_g, t_g) + cos(v_l, t_l) + cos(v_n, t_n)                        (Eq. 7, 12, 17)

Training: ID losses with classifiers shared by both modalities plus the compound ranking (CR) loss,
whose weak terms use D', a caption of another image of the same identity (Eq. 19-21), weighted
1 / 0.5 / 0.5 for the global / PFL / MV-NLN features. Where the official code differs from the paper
the default follows the code (which produced the published numbers) and a config field selects the
paper's form.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ...config import DataConfig, ModelConfig, TrainConfig
from ...losses import compound_ranking_loss, cosine_matrix, id_loss
from ...backbones import StridedCNN, resnet50_trunk, resnet_small
from ...data.text import HashVocabulary, Vocabulary
from ..base import TBPRModel

FEATURE_TYPES = ("g", "l", "n")  # global, PFL parts, MV-NLN parts
HASH_ROWS = 1000  # embedding rows of a model built without training captions (vocab_size=0)


@dataclass
class SSANConfig(ModelConfig):
    """Defaults = the paper profile (ResNet-50, CUHK-PEDES); ``tbpr/papers/ssan/paper.yaml`` shrinks it."""
    # visual backbone (Sec. 3.1)
    # resnet50 | resnet_small (CPU profiles: timm's ResNet shrunk, 96x32 -> 12x4) | strided_cnn (a plain
    # conv stack, tests)
    backbone: str = "resnet50"
    # ImageNet init (the code: torchvision's resnet50(pretrained=True) = timm "resnet50.tv_in1k"); a timm
    # name (hub or its cache), zoo:<name> (tbpr/zoo), a local file, or None = random init
    pretrained: str | None = "resnet50.tv_in1k"
    # strided_cnn: layer widths (with cnn_strides); resnet_small: its 4 stage widths; last = hidden_dim
    cnn_widths: tuple[int, ...] = (32, 64, 64, 128, 128)
    cnn_strides: tuple[int, ...] = (2, 2, 1, 2, 1)
    # textual backbone (Sec. 3.1)
    vocab_size: int = 5000  # rows of each word-embedding table (the code's 5,000); 0 = fit the vocabulary
    min_word_count: int = 2  # official code (paper: "more than twice"): words seen twice or more
    embed_dim: int = 512  # V
    hidden_dim: int = 2048  # C: Bi-LSTM hidden per direction = CNN channels
    embed_dropout: float = 0.3
    separate_word_emb: bool = True  # W_e^g and W_e^l (official code); False = one table (paper)
    # heads
    num_parts: int = 6  # K
    feat_dim: int = 1024  # M
    nln_embed_dim: int = 512  # M'
    nln_out_dim: int = 512  # N
    num_classes: int = 11000  # P (set from the training split by tbpr.experiments)
    # ablation switches (Table 2)
    use_pfl: bool = True
    mvnln: str = "full"  # full | conv1x1 (only W_n, "+PFL+1×1 Conv") | none
    share_global_proj: bool = True  # W_g shared by both modalities (in-text ablation: separate)
    global_rmp_include_pad: bool = True  # official code max-pools over padding zeros; False = paper
    pfl_act: str = "leaky0.25"  # LReLU after W_l (official code) | none (paper Eq. 10/11)
    # losses (Sec. 4)
    loss_weights: tuple[float, float, float] = (1.0, 0.5, 0.5)  # global, PFL, MV-NLN
    cr_alpha1: float = 0.2
    cr_beta: float = 0.1  # 0 = the ordinary ranking loss (no weak terms, no D')
    cr_margin: str = "adaptive"  # adaptive (Eq. 20) | fixed (Fig. 7)
    cr_fixed_alpha2: float = 0.1
    cr_warmup_epochs: int = 5
    cr_min_margin: float = 0.16
    cr_variant: str = "official"  # official (code) | paper (Eq. 19-21 as printed)
    neg_mining: str = "semi_hard_random"  # official code | hardest (paper, Eq. 18)
    # official code: a batch where no anchor finds a semi-hard negative still gives one triplet (the
    # last anchor and its first negative); False = that ranking term is 0
    cr_fallback: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=60, optimizer="adam", lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999),
        lr_mult={"visual.": 0.1}, schedule="multistep", milestones=(20, 40), gamma=0.1))
    data: DataConfig = field(default_factory=lambda: DataConfig(
        image_size=(384, 128), batch_size=64, sampler="random", flip=True, pad_crop=0,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), max_caption_len=100))


def leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.25)


class PartLinear(nn.Module):
    """K independent bias-free linear maps, one per part (a 1×1 conv per stripe): [B,K,in] -> [B,K,out]."""

    def __init__(self, parts: int, in_dim: int, out_dim: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(parts, out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(parts, out_dim)) if bias else None
        for w in self.weight:  # the code's 1×1 convs: Kaiming normal, fan_out
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bki,koi->bko", x, self.weight)
        return y if self.bias is None else y + self.bias


class MultiViewNonLocal(nn.Module):
    """MV-NLN (Sec. 3.3.2, Eq. 13-16), shared by both modalities: part k attends to the other K-1 parts
    through per-part projections θ^k, φ^i, aggregates them with W_γ^k and adds a residual."""

    def __init__(self, parts: int, dim: int, embed_dim: int, out_dim: int):
        super().__init__()
        self.W_theta = PartLinear(parts, dim, embed_dim)
        self.W_phi = PartLinear(parts, dim, embed_dim)
        self.W_gamma = PartLinear(parts, embed_dim, dim)
        self.bn = nn.BatchNorm1d(parts * dim)  # one BN per part's 1×1 conv, as one layer
        self.W_n = PartLinear(parts, dim, out_dim)

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """α [B,K,K] over the other parts (Eq. 13, 14; diagonal masked) and the normalised φ̂."""
        theta = F.normalize(leaky(self.W_theta(x)), dim=-1, eps=1e-8)
        phi = F.normalize(leaky(self.W_phi(x)), dim=-1, eps=1e-8)
        S = theta @ phi.transpose(1, 2)  # Eq. 13: S_ki = θ̂_kᵀ φ̂_i
        eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
        return S.masked_fill(eye, -1e6).softmax(dim=-1), phi  # Eq. 14

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, phi = self.attention(x)
        x_in = self.W_gamma(alpha @ phi)  # Eq. 15 (code aggregates the normalised φ̂)
        x_in = leaky(self.bn(x_in.flatten(1)).view_as(x))
        return self.W_n(x + x_in)  # Eq. 16


class PartConv1x1(nn.Module):
    """Table 2's "+PFL + 1×1 Conv": MV-NLN reduced to its last projection, v_n^k = W_n^k v_l^k."""

    def __init__(self, parts: int, dim: int, embed_dim: int, out_dim: int):
        super().__init__()
        self.W_n = PartLinear(parts, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_n(x)


class SSAN(TBPRModel):
    name = "ssan"
    data_fields = ("vocab",)

    def __init__(self, cfg: SSANConfig, vocab: Vocabulary | dict | None = None):
        """``vocab``: the training captions' words (0 = padding, 1 = unknown, OOV words deleted);
        without it (benchmarks, counting) words are hashed to ids. The recipe attaches the D' pool
        of an identity's other captions and the epoch length before training."""
        super().__init__(cfg)
        self._check(cfg)
        K, C, M = cfg.num_parts, cfg.hidden_dim, cfg.feat_dim
        self.cross_captions: list[list[str]] = []
        self.steps_per_epoch = 0
        self.vocab = vocab = Vocabulary.from_json(vocab) if isinstance(vocab, dict) else vocab
        rows = cfg.vocab_size or (len(vocab) if vocab is not None else HASH_ROWS)
        if vocab is not None and len(vocab) > rows:
            raise ValueError(f"ssan: vocabulary of {len(vocab)} words does not fit vocab_size={rows} "
                             "embedding rows; set vocab_size=0 to fit it")
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # saved: resume-safe
        self._token_cache: dict[str, list[int]] = {}

        # Sec. 3.1 visual backbone
        if cfg.backbone == "resnet50":
            self.visual = resnet50_trunk(cfg.pretrained, "pretrained")
        elif cfg.backbone == "resnet_small":
            self.visual = resnet_small(tuple(cfg.cnn_widths), pretrained=cfg.pretrained)
        else:
            self.visual = StridedCNN(cfg.cnn_widths, cfg.cnn_strides)
        # Sec. 3.1 textual backbone: two word-embedding tables (official code), one shared bias-free Bi-LSTM
        self.word_emb_global = nn.Embedding(rows, cfg.embed_dim, padding_idx=0)  # W_e^g
        self.word_emb_local = (nn.Embedding(rows, cfg.embed_dim, padding_idx=0)  # W_e^l
                               if cfg.separate_word_emb else None)
        self.embed_dropout = nn.Dropout(cfg.embed_dropout)
        self.bilstm = nn.LSTM(cfg.embed_dim, C, num_layers=1, bias=False, batch_first=True,
                              bidirectional=True)
        # Sec. 3.2 global branch: W_g shared by both modalities (Eq. 5, 6)
        self.W_g = nn.Linear(C, M, bias=False)
        self.W_g_text = None if cfg.share_global_proj else nn.Linear(C, M, bias=False)
        # Sec. 3.3.1 PFL: WAM W_p (Eq. 8) and the per-part projection W_l^k shared by both modalities
        self.wam = nn.Linear(C, K, bias=False) if cfg.use_pfl else None
        self.W_l = PartLinear(K, C, M) if cfg.use_pfl else None
        # Sec. 3.3.2 PRL
        relation = {"full": MultiViewNonLocal, "conv1x1": PartConv1x1}.get(cfg.mvnln)
        self.mvnln = relation(K, M, cfg.nln_embed_dim, cfg.nln_out_dim) if relation else None
        # Sec. 4 ID classifiers, shared by both modalities (training only)
        dims = {"g": (1, M), "l": (K, M), "n": (K, cfg.nln_out_dim)}
        self.classifier = nn.ModuleDict(
            {f: PartLinear(dims[f][0], dims[f][1], cfg.num_classes, bias=True) for f in self.feature_types})
        self._init_weights()

    @staticmethod
    def _check(cfg: SSANConfig) -> None:
        choices = {"backbone": ("resnet50", "resnet_small", "strided_cnn"), "mvnln": ("full", "conv1x1", "none"),
                   "pfl_act": ("leaky0.25", "none"), "cr_margin": ("adaptive", "fixed"),
                   "cr_variant": ("official", "paper"), "neg_mining": ("semi_hard_random", "hardest")}
        for name, allowed in choices.items():
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"ssan: {name}={getattr(cfg, name)!r}; choose one of {allowed}")
        if cfg.mvnln != "none" and not cfg.use_pfl:
            raise ValueError("ssan: MV-NLN refines PFL part features; set mvnln='none' when use_pfl=False")
        if cfg.backbone != "resnet50" and cfg.cnn_widths[-1] != cfg.hidden_dim:
            raise ValueError(f"ssan: W_g is shared by both modalities, so the CNN's last width "
                             f"{cfg.cnn_widths[-1]} must equal hidden_dim={cfg.hidden_dim}")
        if cfg.backbone == "strided_cnn" and cfg.pretrained is not None:
            raise ValueError("ssan: backbone='strided_cnn' has no pre-trained weights; set pretrained=null "
                             "(or backbone=resnet_small with pretrained=zoo:resnet-s)")
        if cfg.backbone == "resnet_small" and len(cfg.cnn_widths) != 4:
            raise ValueError(f"ssan: resnet_small has 4 stages; cnn_widths={tuple(cfg.cnn_widths)} needs 4 widths")
        if cfg.backbone == "resnet50" and cfg.hidden_dim != 2048:
            raise ValueError("ssan: resnet50 gives 2048 channels; set hidden_dim=2048")

    def _init_weights(self) -> None:
        for linear in (self.W_g, self.W_g_text, self.wam):
            if linear is not None:
                nn.init.kaiming_normal_(linear.weight, mode="fan_out", nonlinearity="relu")
        for head in self.classifier.values():
            nn.init.normal_(head.weight, std=0.001)

    @property
    def feature_types(self) -> tuple[str, ...]:
        return FEATURE_TYPES[:1 + self.cfg.use_pfl + (self.mvnln is not None)]

    @property
    def epoch(self) -> int:
        """Epochs completed, counted from the optimizer steps taken (0 without training records)."""
        return int(self.steps_done) // self.steps_per_epoch if self.steps_per_epoch else 0

    def extra_state(self) -> dict:
        return {"vocab": self.vocab.to_json()} if isinstance(self.vocab, Vocabulary) else {}

    # ---- text -------------------------------------------------------------------------------
    def _vocab(self):
        return self.vocab if self.vocab is not None else HashVocabulary(self.word_emb_global.num_embeddings)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Word ids [B, L] (0 = padding, OOV words deleted, at most max_caption_len) and lengths [B]."""
        vocab, max_len = self._vocab(), self.cfg.data.max_caption_len
        ids = []
        for caption in captions:
            if caption not in self._token_cache:
                self._token_cache[caption] = vocab.encode(caption, max_len)
            ids.append(self._token_cache[caption])
        lengths = torch.tensor([len(x) for x in ids])
        padded = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
        for b, x in enumerate(ids):
            padded[b, :len(x)] = torch.tensor(x)
        return padded.to(self.device), lengths

    def word_features(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E^g, E^l [B, L, C] (Eq. 1-4): both tables through the one Bi-LSTM, zeros at padding."""
        local_table = self.word_emb_local or self.word_emb_global
        x = torch.cat([self.word_emb_global(ids), local_table(ids)])  # one LSTM call for both
        x = self.embed_dropout(x)
        packed = pack_padded_sequence(x, torch.cat([lengths, lengths]).cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.bilstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        e = (out[..., :self.cfg.hidden_dim] + out[..., self.cfg.hidden_dim:]) / 2  # Eq. 3
        return e.chunk(2)

    def word_part_scores(self, E_local: torch.Tensor) -> torch.Tensor:
        """WAM (Eq. 8): s_i^k = σ(W_p^k e_i), independent sigmoids [B, L, K]."""
        return torch.sigmoid(self.wam(E_local))

    @torch.no_grad()
    def wam_word_scores(self, captions: list[str]) -> list[list[tuple[str, int, int, torch.Tensor]]]:
        """Fig. 8: per caption, (word, char start, char end, s [K]) for every word WAM sees (eval
        mode; out-of-vocabulary words are deleted before the Bi-LSTM, so they have no score)."""
        vocab, max_len = self._vocab(), self.cfg.data.max_caption_len
        kept = []
        for caption in captions:
            words = [(m.group().replace("'", ""), m.start(), m.end())
                     for m in re.finditer(r"[a-z0-9']+", caption.lower())]
            kept.append([(w, a, b) for w, a, b in words if w and vocab.encode(w, 1)[0] > 1][:max_len])
        was_training = self.training
        self.eval()
        ids, lengths = self.tokenize([" ".join(w for w, _, _ in k) for k in kept])
        scores = self.word_part_scores(self.word_features(ids, lengths)[1]).cpu()
        self.train(was_training)
        return [[(w, a, b, s) for (w, a, b), s in zip(k, caption_scores)]
                for k, caption_scores in zip(kept, scores)]

    def _text_parts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        ids, lengths = self.tokenize(captions)
        E_g, E_l = self.word_features(ids, lengths)
        valid = (ids > 0)[..., None]
        rmp = E_g.masked_fill(~valid, float("-inf")).amax(dim=1)  # RMP over the n words
        if self.cfg.global_rmp_include_pad:  # the official code's max also sees the padding zeros
            padded = (lengths < self.cfg.data.max_caption_len).to(rmp.device)[:, None]
            rmp = torch.where(padded, rmp.clamp(min=0), rmp)
        feats = {"g": (self.W_g_text or self.W_g)(rmp)}  # Eq. 6
        if self.cfg.use_pfl:
            s = self.word_part_scores(E_l)
            E_k = s[..., None] * E_l[:, :, None, :]  # Eq. 9: [B, L, K, C]
            g = E_k.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
            feats["l"] = self._pfl_act(self.W_l(g))  # Eq. 11
        return feats

    def _pfl_act(self, x: torch.Tensor) -> torch.Tensor:
        return leaky(x) if self.cfg.pfl_act == "leaky0.25" else x

    def _with_relations(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.mvnln is not None:
            feats["n"] = self.mvnln(feats["l"])  # PRL, Eq. 13-16
        return feats

    def encode_texts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return self._with_relations(self._text_parts(captions))

    # ---- image ------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.visual.forward_features(images)  # F [B, C, H, W]
        feats = {"g": self.W_g(fmap.amax(dim=(2, 3)))}  # Eq. 5: W_g · GMP(F)
        if self.cfg.use_pfl:
            stripes = F.adaptive_max_pool2d(fmap, (self.cfg.num_parts, 1)).flatten(2).transpose(1, 2)
            feats["l"] = self._pfl_act(self.W_l(stripes))  # Eq. 10: W_l^k · GMP(F_k)
        return self._with_relations(feats)

    # ---- retrieval --------------------------------------------------------------------------
    def similarity(self, text_feats: dict, image_feats: dict) -> torch.Tensor:
        """S = S_g + S_l + S_n (Eq. 7, 12, 17): cosines of part-concatenated features."""
        return sum(cosine_matrix(text_feats[f], image_feats[f]) for f in self.feature_types)

    # ---- training ---------------------------------------------------------------------------
    def sample_cross_captions(self, batch: dict) -> tuple[list[str], torch.Tensor]:
        """D'_b: a caption of another image of b's identity, drawn uniformly each step (official code);
        anchors without one keep their own caption and are masked out of the weak terms."""
        out, valid = [], []
        for caption, i in zip(batch["captions"], batch["image_idx"].tolist()):
            pool = self.cross_captions[i] if i < len(self.cross_captions) else []
            valid.append(bool(pool))
            out.append(pool[int(torch.randint(len(pool), ()))] if pool else caption)
        return out, torch.tensor(valid, device=self.device)

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg, pids = self.cfg, batch["pids"]
        image = self.encode_images(batch["images"])
        B = len(batch["captions"])
        weak = cfg.cr_beta > 0
        captions, weak_valid = list(batch["captions"]), None
        if weak:
            cross, weak_valid = self.sample_cross_captions(batch)
            captions += cross
        both = self._text_parts(captions)  # D and D' share one LSTM pass; MV-NLN BN sees each alone
        text = self._with_relations({f: x[:B] for f, x in both.items()})
        cross_text = self._with_relations({f: x[B:] for f, x in both.items()}) if weak else {}
        warmup = self.epoch < cfg.cr_warmup_epochs
        out, total = {}, 0.0
        for f, weight in zip(self.feature_types, cfg.loss_weights):
            head = self.classifier[f]
            out[f"id_{f}"] = sum(id_loss(head(_parts(x)).flatten(0, 1), pids.repeat_interleave(
                head.weight.shape[0])) for x in (image[f], text[f]))  # Sec. 4, mean over parts
            out[f"cr_{f}"] = compound_ranking_loss(
                image[f], text[f], cross_text.get(f), pids, alpha1=cfg.cr_alpha1, beta=cfg.cr_beta,
                margin=cfg.cr_margin, fixed_alpha2=cfg.cr_fixed_alpha2, warmup=warmup,
                min_margin=cfg.cr_min_margin, variant=cfg.cr_variant, mining=cfg.neg_mining,
                weak_valid=weak_valid, fallback=cfg.cr_fallback)
            total = total + weight * (out[f"id_{f}"] + out[f"cr_{f}"])  # weights 1 / 0.5 / 0.5 (Sec. 4)
        if self.training:
            self.steps_done += 1
        return {"loss": total, **out}

    def inference_parameters(self) -> int:
        """Parameters of the retrieval network (the ID classifiers are used in training only)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("classifier."))


def _parts(x: torch.Tensor) -> torch.Tensor:
    """Features as [B, parts, dim] (the global feature is one part)."""
    return x[:, None] if x.dim() == 2 else x

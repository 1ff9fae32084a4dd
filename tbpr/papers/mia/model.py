"""MIA: Multi-granularity Image-text Alignments (Niu, Huang, Ouyang, Wang; IEEE TIP 2020).

A text query and a pedestrian image are compared at three granularities whose cosine scores are
summed (Eq. 18):

- Global Contrast (GC): pooled CNN vector ``I`` vs Bi-GRU sentence vector ``T``           -> s_G
- Relation-guided Global-local Alignment (RGA): ``T`` weights the n horizontal image parts,
  ``I`` weights the caption's noun phrases (I->T and T->I)                                  -> s_I, s_T
- Bi-directional Fine-grained Matching (BFM): each phrase attends over the parts (P->N) and
  each part over the phrases (N->P)                                                          -> s_P, s_N

    s_F = s_G + lambda1 * (s_I + s_T) / 2 + lambda2 * (s_P + s_N) / 2

Training is the paper's three-step strategy (Sec. III-C): step 1 the identity loss on the global
text path and global visual FC with the CNN frozen; step 2 everything of GC + RGA with identity and
matching losses; step 3 only the two BFM MLPs with the BFM matching losses. ``stages()`` /
``enter_stage()`` give ``tbpr.experiments`` that recipe. RGA and BFM scores depend on the pair, so
scoring is pairwise, computed from Gram matrices in query chunks (``pairwise_scores``).
Where the paper leaves a detail open (MLP widths, the noun-phrase grammar, which modules are
frozen in which step), the comment beside the choice says it is ours.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

from ...config import DataConfig, ModelConfig, TrainConfig
from ...losses import id_loss, sum_of_hinges
from ...backbones import cnn_trunk
from ...data.text import HashVocabulary, Vocabulary, noun_phrases, word_tokenize
from ..base import TBPRModel

DETERMINERS = {"a", "an", "the", "his", "her", "their", "its", "this", "that", "these", "those", "my"}
GRANULARITIES = ("G", "I", "T", "P", "N")


@dataclass
class MIAConfig(ModelConfig):
    """Defaults = the paper (VGG-16 profile); ``tbpr/papers/mia/paper.yaml`` shrinks them for CPU and lists
    every ablation row of Tables II-IX as an override."""
    # visual CNN (Sec. IV-A): vgg16 | resnet50 | vgg_mini (the CPU trunk: timm's VGG class shrunk)
    cnn: str = "vgg16"
    # ImageNet init of the CNN (Sec. IV-B): a timm name (hub or its cache), zoo:<name> (tbpr/zoo), a
    # local file, or None = random; the ResNet-50 row of Table VII sets "resnet50.tv_in1k"
    pretrained: str | None = "vgg16.tv_in1k"
    cnn_channels: tuple[int, ...] = (16, 32, 64, 64)  # vgg_mini only
    # pretrained: use cfg.pretrained as is (the CPU profiles: zoo:vgg-s); random: ignore it, a frozen
    # random CNN in step 1
    cnn_init: str = "pretrained"
    num_parts: int = 6  # n
    part_dim: int = 256  # d_p, 1x1 conv output
    embed_dim: int = 1024  # V = C = G = P = N
    word_dim: int = 300  # E
    gru_hidden: int = 1024  # H per direction
    mlp_hidden: int = 1024  # hidden width of the four MLPs (not given in the paper; ours)
    vocab_size: int = 9410  # 9,408 CUHK-PEDES words + <pad> + <unk>; replaced by the data's vocabulary
    num_classes: int = 11003  # training identities; replaced by the data's
    # granularities (Table I): turning one off removes its modules
    gc: bool = True
    rga: bool = True
    bfm: str = "step3"  # step3 (MIA) | joint (trained with RGA in step 2) | off
    phrases: str = "noun_phrases"  # noun_phrases | all_words (Table VI)
    part_bn_relu: bool = False  # PCB-style BN + ReLU after the 1x1 part conv (the paper has none)
    tau: float = 1.0  # softmax temperature on cosine logits (the paper's equations have none)
    margin: float = 0.2  # alpha of Eq. 20
    # scoring (Eq. 18; evaluation only): F = fused, G / R / L = one granularity (Tables II, III)
    score: str = "F"
    lambda1: float = 1.0
    lambda2: float = 0.5
    # training recipe (Sec. III-C, Tables IV, V)
    recipe: str = "step"  # step (steps 1, 2[, 3]) | combined (one stage from the start, Table V)
    step1_objective: str = "id"  # id | mat (Table IV)
    step2_id: bool = True  # identity loss in step 2 (Table IV "Mat / Mat" turns it off)
    step_epochs: tuple[int, int, int] = (10, 15, 5)
    step_lr: tuple[float, float, float] = (1e-3, 2e-4, 2e-4)
    decay_every: int = 10  # step 2 (and combined): lr x0.1 every this many epochs
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=30, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", grad_clip=2.0))
    data: DataConfig = field(default_factory=lambda: DataConfig(
        image_size=(384, 128), batch_size=96, pad_crop=0, flip=True, max_caption_len=100))

    def __post_init__(self):
        choices = {"cnn": ("vgg16", "resnet50", "vgg_mini"), "cnn_init": ("pretrained", "random"),
                   "bfm": ("step3", "joint", "off"), "phrases": ("noun_phrases", "all_words"),
                   "score": ("F", "G", "R", "L"), "recipe": ("step", "combined"),
                   "step1_objective": ("id", "mat")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"MIAConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.rga and not self.gc:
            raise ValueError("MIAConfig: rga=True needs gc=True (RGA is guided by the global I and T)")
        if not (self.gc or self.rga or self.bfm != "off"):
            raise ValueError("MIAConfig: gc, rga and bfm are all off; nothing would be trained")


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """MLP(z) = W2 ReLU(W1 z + b1) + b2, nothing after (Sec. III-A)."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))


# ----------------------------------------------------------------------------- pairwise scores
def attention_weights(queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None = None,
                      tau: float = 1.0) -> torch.Tensor:
    """softmax_k(cos(key_k, query) / tau) for every (query q, key set g): [Q, G, K] (Eqs. 6, 9)."""
    logits = torch.einsum("qd,gkd->qgk", F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)) / tau
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[None], float("-inf"))
    return logits.softmax(-1)


def attended_cosine(queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None = None,
                    tau: float = 1.0) -> torch.Tensor:
    """cos(sum_k v_k key_k, query) with v = softmax_k(cos(key_k, query)/tau), for all pairs: [Q, G].

    RGA's s_I (Eqs. 6-8: queries T, keys the parts) and s_T (Eqs. 9-11: queries I, keys the
    phrases). Gram form: the numerator is sum_k v_k |key_k| cos_k and the norm of the attended
    vector is sqrt(v^T Gram v), so no [Q, G, D] tensor is built.
    """
    cos = torch.einsum("qd,gkd->qgk", F.normalize(queries, dim=-1), F.normalize(keys, dim=-1))
    logits = cos / tau
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[None], float("-inf"))
    v = logits.softmax(-1)
    gram = keys @ keys.transpose(1, 2)
    numerator = (v * keys.norm(dim=-1)[None] * cos).sum(-1)
    norm = torch.einsum("qgk,gkl,qgl->qg", v, gram, v).clamp_min(1e-12).sqrt()
    return numerator / norm


def fine_grained_scores(phrases: torch.Tensor, phrase_mask: torch.Tensor, parts: torch.Tensor,
                        tau: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """BFM (s_P, s_N) for every (text t, image g): two [T, G] tensors.

    phrases [T, M, D] with mask [T, M] (padding False), parts [G, K, D].
    P->N (Eqs. 12-14): each phrase attends over the parts; mean over the caption's phrases.
    N->P (Eqs. 15-17): each part attends over the caption's phrases; mean over the parts.
    """
    cos = torch.einsum("tmd,gkd->tgmk", F.normalize(phrases, dim=-1), F.normalize(parts, dim=-1))
    mask = phrase_mask[:, None, :]  # [T, 1, M]
    alpha = (cos / tau).softmax(-1)  # Eq. 13, over parts
    numerator = (alpha * parts.norm(dim=-1)[None, :, None, :] * cos).sum(-1)
    norm = torch.einsum("tgmk,gkl,tgml->tgm", alpha, parts @ parts.transpose(1, 2), alpha)
    phrase_cos = numerator / norm.clamp_min(1e-12).sqrt()  # cos(I_i, N_i), Eq. 14
    s_p = (phrase_cos * mask).sum(-1) / mask.sum(-1)
    beta = (cos / tau).masked_fill(~mask[..., None], float("-inf")).softmax(2)  # Eq. 16, over phrases
    numerator = (beta * phrases.norm(dim=-1)[:, None, :, None] * cos).sum(2)
    norm = torch.einsum("tgmk,tmn,tgnk->tgk", beta, phrases @ phrases.transpose(1, 2), beta)
    s_n = (numerator / norm.clamp_min(1e-12).sqrt()).mean(-1)  # Eq. 17
    return s_p, s_n


def pad_phrases(phrase_list: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-caption [m_i, D] phrase features -> ([T, m_max, D], mask [T, m_max])."""
    lengths = torch.tensor([len(p) for p in phrase_list], device=phrase_list[0].device)
    mask = torch.arange(int(lengths.max()), device=lengths.device)[None] < lengths[:, None]
    return pad_sequence(phrase_list, batch_first=True), mask


def fuse(scores: dict[str, torch.Tensor], score: str = "F", lambda1: float = 1.0,
         lambda2: float = 0.5) -> torch.Tensor:
    """Eq. 18. ``score`` G / R / L ranks by one granularity; a missing granularity counts as 0."""
    s_r = (scores["I"] + scores["T"]) / 2 if "I" in scores else None
    s_l = (scores["P"] + scores["N"]) / 2 if "P" in scores else None
    single = {"G": scores.get("G"), "R": s_r, "L": s_l}
    if score in single:
        if single[score] is None:
            raise ValueError(f"score={score!r} needs a granularity this model does not have "
                             f"(it has {sorted(scores)}); pick another score")
        return single[score]
    fused = [term for term in (scores.get("G"), None if s_r is None else lambda1 * s_r,
                               None if s_l is None else lambda2 * s_l) if term is not None]
    return sum(fused)


# ----------------------------------------------------------------------------- the model
class MIA(TBPRModel):
    """GC + RGA + BFM over a CNN with n horizontal parts and a word-embedding Bi-GRU shared by
    sentences and noun phrases (Fig. 4)."""

    name = "mia"

    data_fields = ("vocab",)

    def __init__(self, cfg: MIAConfig, vocab=None):
        super().__init__(cfg)
        # the training split's words (saved with the checkpoint); without them, words hash into
        # cfg.vocab_size rows, enough to count parameters or run a benchmark
        self.vocab = _as_vocabulary(vocab) or HashVocabulary(cfg.vocab_size)
        vocab_size = len(self.vocab)
        local = cfg.rga or cfg.bfm != "off"
        d = cfg.embed_dim
        # visual path (Sec. III-A1)
        self.cnn, c_f = cnn_trunk(cfg.cnn, cfg.pretrained if cfg.cnn_init == "pretrained" else None,
                                  tuple(cfg.cnn_channels))
        self.global_vis_fc = nn.Linear(c_f, d) if cfg.gc else None  # I = W_v g + b_v
        self.part_conv = nn.Sequential(nn.Conv2d(c_f, cfg.part_dim, 1), *(
            (nn.BatchNorm2d(cfg.part_dim), nn.ReLU(inplace=True)) if cfg.part_bn_relu else ())) if local else None
        # textual path (Sec. III-A2), one embedding + Bi-GRU for sentences and phrases
        self.text_embed = nn.Embedding(vocab_size, cfg.word_dim, padding_idx=0)  # Eq. 1
        self.bigru = nn.GRU(cfg.word_dim, cfg.gru_hidden, batch_first=True, bidirectional=True)  # Eq. 2
        self.sent_fc = nn.Linear(2 * cfg.gru_hidden, d) if cfg.gc else None  # Eq. 3
        self.phrase_fc = nn.Linear(2 * cfg.gru_hidden, d) if local else None  # Eq. 5
        self.id_cls = nn.Linear(d, cfg.num_classes) if cfg.gc else None  # W_s, b_s shared (Eq. 19)
        # RGA (Sec. III-B2)
        self.mlp_v_rga = mlp(cfg.part_dim, cfg.mlp_hidden, d) if cfg.rga else None
        self.mlp_t_rga = mlp(d, cfg.mlp_hidden, d) if cfg.rga else None
        # BFM (Sec. III-B3), built last so that MIA and GC + RGA start from the same weights
        self.mlp_v_bfm = mlp(cfg.part_dim, cfg.mlp_hidden, d) if cfg.bfm != "off" else None
        self.mlp_t_bfm = mlp(d, cfg.mlp_hidden, d) if cfg.bfm != "off" else None
        self.step = 2  # which loss/freeze regime training_step follows; set by set_step
        self._frozen: set[str] = set()
        self._text_cache: dict[str, tuple[list[int], list[list[int]], list[tuple[int, int, str]]]] = {}

    def extra_state(self) -> dict:
        return {"vocab": self.vocab.to_json()} if isinstance(self.vocab, Vocabulary) else {}

    # ------------------------------------------------------------------ text preprocessing (Sec. IV-A)
    def _tokens(self, caption: str):
        """(sentence ids, phrase ids per phrase, phrase (char start, char end, text)); cached."""
        if caption not in self._text_cache:
            if not caption or not caption.strip():
                raise ValueError("MIA got an empty caption; drop it from the records or give it text")
            max_len = self.cfg.data.max_caption_len
            sentence = self.vocab.encode(caption, max_len)
            encoded = [(span, self.vocab.encode(span[2], max_len)) for span in caption_phrases(caption, self.cfg.phrases)]
            encoded = [(span, ids) for span, ids in encoded if ids] or [((0, len(caption), caption), sentence)]
            self._text_cache[caption] = (sentence, [ids for _, ids in encoded], [span for span, _ in encoded])
        return self._text_cache[caption]

    def phrases_of(self, caption: str) -> list[tuple[int, int, str]]:
        """(char start, char end, text) of the phrases the model encodes for ``caption``, in the
        order of its phrase features (start = end = -1 for all-words tokens)."""
        return self._tokens(caption)[2]

    # ------------------------------------------------------------------ encoders
    def _bigru_final(self, sequences: list[list[int]]) -> torch.Tensor:
        """[h_F(forward last real token); h_F'(backward at the first token)] per sequence: [n, 2H]."""
        lengths = torch.tensor([len(s) for s in sequences])
        ids = pad_sequence([torch.tensor(s) for s in sequences], batch_first=True).to(self.text_embed.weight.device)
        packed = pack_padded_sequence(self.text_embed(ids), lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.bigru(packed)
        return torch.cat([h_n[0], h_n[1]], dim=-1)

    def _text(self, captions: list[str], local: bool = True) -> dict:
        tokens = [self._tokens(c) for c in captions]
        out = {}
        if self.cfg.gc:
            out["T"] = self.sent_fc(self._bigru_final([t[0] for t in tokens]))  # Eq. 3
        if self.phrase_fc is not None and local:
            out["counts"] = [len(t[1]) for t in tokens]
            out["N"] = self.phrase_fc(self._bigru_final([p for t in tokens for p in t[1]]))  # Eq. 5, [sum m, D]
        return out

    def _image(self, images: torch.Tensor, cnn_grad: bool = True, local: bool = True) -> dict:
        with torch.set_grad_enabled(cnn_grad and torch.is_grad_enabled()):
            fmap = self.cnn(images)
        out = {}
        if self.cfg.gc:
            out["I"] = self.global_vis_fc(fmap.mean((2, 3)))  # global mean pooling + FC
        if self.part_conv is not None and local:
            parts = F.adaptive_avg_pool2d(self.part_conv(fmap), (self.cfg.num_parts, 1))  # 6 stripes
            out["p"] = parts.flatten(2).transpose(1, 2).contiguous()  # [B, n, d_p]
        return out

    def _project(self, image: dict | None, text: dict | None) -> tuple[dict, dict]:
        """Add the RGA / BFM projections of parts (P~, P^) and phrases (N~, N^)."""
        image_feats, text_feats = {}, {}
        if image is not None:
            image_feats = {k: v for k, v in image.items() if k == "I"}
            if self.mlp_v_rga is not None and "p" in image:
                image_feats["P_rga"] = self.mlp_v_rga(image["p"])
            if self.mlp_v_bfm is not None and "p" in image:
                image_feats["P_bfm"] = self.mlp_v_bfm(image["p"])
        if text is not None:
            text_feats = {k: v for k, v in text.items() if k == "T"}
            if self.mlp_t_rga is not None and "N" in text:
                text_feats["N_rga"] = list(self.mlp_t_rga(text["N"]).split(text["counts"]))
            if self.mlp_t_bfm is not None and "N" in text:
                text_feats["N_bfm"] = list(self.mlp_t_bfm(text["N"]).split(text["counts"]))
        return image_feats, text_feats

    def encode_images(self, images: torch.Tensor) -> dict:
        """{"I": [B, D], "P_rga": [B, n, D], "P_bfm": [B, n, D]} (keys of the modules present)."""
        return self._project(self._image(images), None)[0]

    def encode_texts(self, captions: list[str]) -> dict:
        """{"T": [B, D], "N_rga": [m_i, D] per caption, "N_bfm": [m_i, D] per caption}."""
        return self._project(None, self._text(captions))[1]

    # ------------------------------------------------------------------ scoring
    def pairwise_scores(self, text_feats: dict, image_feats: dict, chunk_elements: int = 1 << 22,
                        only: tuple[str, ...] = GRANULARITIES) -> dict[str, torch.Tensor]:
        """Every similarity of every (text, image) pair: {"G", "I", "T", "P", "N"} -> [n_text, n_image],
        computed in text chunks so that the m x n cross-cosine tensor stays under ``chunk_elements``."""
        n_text = len(text_feats["T"]) if "T" in text_feats else len(text_feats["N_bfm"])
        n_image = len(next(iter(image_feats.values())))
        m_max = max((len(n) for n in text_feats.get("N_rga", text_feats.get("N_bfm", []))), default=1)
        chunk = max(1, chunk_elements // max(1, n_image * m_max * self.cfg.num_parts))
        tau, out = self.cfg.tau, {}
        if "G" in only and "T" in text_feats:
            out["G"] = F.normalize(text_feats["T"], dim=-1) @ F.normalize(image_feats["I"], dim=-1).T  # Eq. 4
        blocks = {k: [] for k in ("I", "T", "P", "N") if k in only}
        for start in range(0, n_text, chunk):
            rows = slice(start, start + chunk)
            if "N_rga" in text_feats:
                if "I" in blocks:
                    blocks["I"].append(attended_cosine(text_feats["T"][rows], image_feats["P_rga"], tau=tau))
                if "T" in blocks:
                    phrases, mask = pad_phrases(text_feats["N_rga"][rows])
                    blocks["T"].append(attended_cosine(image_feats["I"], phrases, mask, tau).T)
            if "N_bfm" in text_feats and ("P" in blocks or "N" in blocks):
                phrases, mask = pad_phrases(text_feats["N_bfm"][rows])
                s_p, s_n = fine_grained_scores(phrases, mask, image_feats["P_bfm"], tau)
                for key, value in (("P", s_p), ("N", s_n)):
                    if key in blocks:
                        blocks[key].append(value)
        out.update({k: torch.cat(v) for k, v in blocks.items() if v})
        return out

    def similarity(self, text_feats: dict, image_feats: dict) -> torch.Tensor:
        """s_F (Eq. 18), or one granularity when ``cfg.score`` is G / R / L: [n_text, n_image]."""
        cfg = self.cfg
        needed = {"F": GRANULARITIES, "G": ("G",), "R": ("I", "T"), "L": ("P", "N")}[cfg.score]
        if cfg.score == "F":
            needed = ("G",) + (("I", "T") if cfg.lambda1 else ()) + (("P", "N") if cfg.lambda2 else ())
        return fuse(self.pairwise_scores(text_feats, image_feats, only=needed), cfg.score,
                    cfg.lambda1, cfg.lambda2)

    # ------------------------------------------------------------------ internals for the figures
    def relation_attention(self, text_feats: dict, image_feats: dict) -> torch.Tensor:
        """RGA I->T weights v_k(I, T) of Eq. 6 over the parts: [n_text, n_image, n]."""
        return attention_weights(text_feats["T"], image_feats["P_rga"], tau=self.cfg.tau)

    def phrase_part_attention(self, text_feats: dict, image_feats: dict, text_index: int) -> torch.Tensor:
        """BFM P->N weights alpha_ik of Eq. 13 of one caption's phrases over the parts: [n_image, m, n]."""
        phrases = text_feats["N_bfm"][text_index]
        return attention_weights(phrases, image_feats["P_bfm"], tau=self.cfg.tau).transpose(0, 1)

    # ------------------------------------------------------------------ training (Sec. III-C)
    def trainable_modules(self, step: int) -> set[str]:
        """Top-level modules that step ``step`` trains (the step training strategy, Eqs. 21-23)."""
        present = {name for name, _ in self.named_children()}
        if step == 1:
            wanted = {"text_embed", "bigru", "sent_fc", "global_vis_fc", "id_cls"}
        elif step == 2:
            wanted = present - (set() if self.cfg.bfm == "joint" else {"mlp_v_bfm", "mlp_t_bfm"})
        else:
            wanted = {"mlp_v_bfm", "mlp_t_bfm"}
        return wanted & present

    def set_step(self, step: int) -> None:
        """Follow the loss regime of training step ``step`` and freeze (requires_grad False, eval
        mode) the modules it does not train."""
        self.step = step
        trainable = self.trainable_modules(self.step)
        self._frozen = set()
        for name, module in self.named_children():
            module.requires_grad_(name in trainable)
            if name not in trainable:
                self._frozen.add(name)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self._frozen if mode else ():
            getattr(self, name).eval()  # frozen BN statistics do not drift: step 3 keeps GC + RGA's scores
        return self

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg, step = self.cfg, self.step
        images = batch["images"].to(self.text_embed.weight.device)
        pids = batch["pids"].to(images.device)
        image_ids = batch["image_idx"].to(images.device)
        with torch.set_grad_enabled(step != 3):  # step 3: the whole trunk is fixed
            image = self._image(images, cnn_grad=step == 2, local=step != 1)
            text = self._text(batch["captions"], local=step != 1)
        image_feats, text_feats = self._project(image, text)
        losses = {}
        if cfg.gc and step in (1, 2):
            use_id = cfg.step1_objective == "id" if step == 1 else cfg.step2_id
            if use_id:  # Eq. 19, shared classifier on the raw global features
                losses["id_image"] = id_loss(self.id_cls(image_feats["I"]), pids)
                losses["id_text"] = id_loss(self.id_cls(text_feats["T"]), pids)
            if step == 2 or cfg.step1_objective == "mat":
                s_g = F.normalize(image_feats["I"], dim=-1) @ F.normalize(text_feats["T"], dim=-1).T
                losses["match_global"] = sum_of_hinges(s_g, image_ids, cfg.margin)  # Eq. 20 on s_G
        wanted = ()
        if step == 2 and cfg.rga:
            wanted += ("I", "T")
        if (step == 2 and cfg.bfm == "joint") or step == 3:
            wanted += ("P", "N")
        if wanted:  # pairwise matrices are [text, image]; the SH loss takes [image, text]
            scores = self.pairwise_scores(text_feats, image_feats, only=wanted, chunk_elements=1 << 30)
            names = {"I": "match_i2t", "T": "match_t2i", "P": "match_p2n", "N": "match_n2p"}
            for key in wanted:
                losses[names[key]] = sum_of_hinges(scores[key].T, image_ids, cfg.margin)
        losses["loss"] = sum(losses.values())
        return losses


@functools.lru_cache(maxsize=1 << 18)
def caption_phrases(caption: str, mode: str = "noun_phrases") -> tuple[tuple[int, int, str], ...]:
    """The "phrases" of a caption (char start, char end, text): its noun phrases (NLTK tags, our
    chunk grammar, leading determiner dropped) or, for Table VI, every word (start = end = -1)."""
    if mode == "all_words":
        return tuple((-1, -1, w) for w in word_tokenize(caption))
    spans = []
    for start, end, text in noun_phrases(caption):
        head, _, rest = text.partition(" ")
        if head.lower() in DETERMINERS:
            if not rest:
                continue
            start, text = start + len(head) + 1, rest
        spans.append((start, end, text))
    return tuple(spans)


def _as_vocabulary(vocab):
    return Vocabulary.from_json(vocab) if isinstance(vocab, dict) else vocab


# ----------------------------------------------------------------------------- re-scoring (Tables II, III, VIII, IX)
EVAL_ONLY = ("score", "lambda1", "lambda2")  # config fields that change scoring, not training

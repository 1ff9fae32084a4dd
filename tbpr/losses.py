"""Every training objective of the five papers, once, named as the papers name them.

Each function takes features/logits and labels and returns a scalar; each is unit-tested in its
paper's ``tests/test_<paper>.py`` against a direct, naive implementation of the paper's formula.
Papers share an objective only where the formula really is the same.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def id_loss(logits: torch.Tensor, pids: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Identity (person-id) classification: cross-entropy over the training identities."""
    return F.cross_entropy(logits, pids, label_smoothing=label_smoothing)


# --- mia ---
def sum_of_hinges(scores: torch.Tensor, image_ids: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """VSE++ "sum of hinges" ranking loss (MIA Eq. 20) over every in-batch negative, both directions.

    ``scores[a, b] = S(I_a, T_b)`` for B pairs whose positives sit on the diagonal. Pairs sharing an
    image (two captions of one image) are not negatives; same-identity, different-image pairs are.
    Hinges are summed over negatives and averaged over the B anchors.
    """
    positive = scores.diag()
    negative = image_ids[:, None] != image_ids[None, :]
    text_negatives = (margin - positive[:, None] + scores).clamp(min=0) * negative   # anchor image a
    image_negatives = (margin - positive[None, :] + scores).clamp(min=0) * negative  # anchor text b
    return (text_negatives.sum() + image_negatives.sum()) / scores.shape[0]


# --- lgur ---
def part_id_loss(part_logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """LGUR Eq. 6 for one modality: cross-entropy of each of the K part classifiers, averaged over
    the K parts. ``part_logits`` is ``[B, K, C]``."""
    B, K, C = part_logits.shape
    return F.cross_entropy(part_logits.reshape(B * K, C), pids.repeat_interleave(K))


def _semi_hard_direction(S: torch.Tensor, pids: torch.Tensor, margin: float,
                         generator: torch.Generator | None) -> torch.Tensor:
    """Sum over anchors (rows of S) of [margin - S_ii + S_in]_+ with n drawn uniformly among the
    semi-hard negatives S_ii - margin < S_in < S_ii of another identity."""
    pos = S.diagonal()
    negatives = pids[:, None] != pids[None, :]
    semi_hard = negatives & (S < pos[:, None]) & (S > pos[:, None] - margin)
    valid = semi_hard.any(dim=1)
    if not valid.any():
        # as in the official code: one triplet (last anchor, its first negative) keeps the loss defined
        last_negs = negatives[-1].nonzero()
        if len(last_negs) == 0:
            return S.sum() * 0.0
        return (margin - pos[-1] + S[-1, last_negs[0, 0]]).clamp(min=0)
    # uniform draw among the semi-hard set: argmax of i.i.d. uniform scores restricted to the set
    scores = torch.rand(S.shape, generator=generator, device="cpu").to(S.device)
    pick = scores.masked_fill(~semi_hard, -1.0).argmax(dim=1)
    hinge = (margin - pos + S.gather(1, pick[:, None]).squeeze(1)).clamp(min=0)
    return hinge[valid].sum()


def semi_hard_ranking_loss(emb_a: torch.Tensor, emb_b: torch.Tensor, pids: torch.Tensor,
                           margin: float = 0.3, generator: torch.Generator | None = None) -> torch.Tensor:
    """LGUR Eq. 7: bidirectional ranking loss with one random semi-hard negative per anchor, summed
    over anchors. Row i of ``emb_a`` and ``emb_b`` is pair i (its only positive); items of the same
    identity are neither positives nor negatives. Embeddings are L2-normalised here (cosine)."""
    S = F.normalize(emb_a, dim=-1) @ F.normalize(emb_b, dim=-1).t()
    return (_semi_hard_direction(S, pids, margin, generator)
            + _semi_hard_direction(S.t(), pids, margin, generator))


# --- cada ---
def _identity_distribution(pids: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """q_ij = y_ij / sum_k y_ik (l1) or y_ij / sqrt(sum_k y_ik) (l2), y_ij = [pid_i == pid_j]."""
    y = (pids[:, None] == pids[None, :]).float()
    return y / (y.sum(1, keepdim=True) if norm == "l1" else y.sum(1, keepdim=True).sqrt())


def cmpm_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, pids: torch.Tensor,
              eps: float = 1e-8, q_norm: str = "l1") -> torch.Tensor:
    """CMPM (Zhang & Lu, ECCV'18): KL(p || q) of the projection of each modality onto the normalised
    other, p_ij = softmax_j(f_i^T f̂_j), no temperature; image->text plus text->image, mean over rows."""
    q = _identity_distribution(pids, q_norm)
    loss = 0.0
    for a, b in ((image_feats, text_feats), (text_feats, image_feats)):
        log_p = F.log_softmax(a @ F.normalize(b, dim=-1).T, dim=1)
        loss = loss + (log_p.exp() * (log_p - torch.log(q + eps))).sum(1).mean()
    return loss


def ndf_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, pids: torch.Tensor,
             temperature: float = 0.02, variant: str = "paper", eps: float = 1e-8) -> torch.Tensor:
    """CADA's Normalized Distribution Fitting, Eqs. (1)-(3): cosine / tau softmax p against the
    identity distribution q; per direction forward KL(p||q) + backward KL(q||p), averaged over rows,
    then 1/2 (i2t + t2i). ``variant="official"``: the released code's form (KL pair scaled by 1/N plus
    the soft-target cross-entropy -sum_j q_ij log p_ij)."""
    if variant not in ("paper", "official"):
        raise ValueError(f"ndf variant must be 'paper' or 'official', got {variant!r}")
    q = _identity_distribution(pids)
    sim = F.normalize(image_feats, dim=-1) @ F.normalize(text_feats, dim=-1).T / temperature
    total = 0.0
    for logits in (sim, sim.T):  # image->text, text->image
        log_p = F.log_softmax(logits, dim=1)
        p = log_p.exp()
        kl_pair = p * (log_p - torch.log(q + eps)) + q * (torch.log(q + eps) - log_p)
        if variant == "paper":
            total = total + kl_pair.sum(1).mean()
        else:
            total = total + kl_pair.mean() + (-(q * log_p).sum(1)).mean()
    return total / 2


def atp_loss(enc_logits: torch.Tensor, group_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CADA ATP, Eq. (5): match/mismatch cross-entropy of the [ENC] group ([n, 2]) plus that of the
    token groups ([n, N_g, 2], one label per pair), each averaged over its own samples."""
    n_g = group_logits.shape[1]
    return (F.cross_entropy(enc_logits, labels)
            + F.cross_entropy(group_logits.reshape(-1, 2), labels.repeat_interleave(n_g)))


def mam_loss(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
    """CADA ARA / Masked Attribute Modeling, Eq. (7): cross-entropy (= KL to the one-hot word) over
    all masked tokens of the batch; 0 when nothing is masked."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    if vocab_size is not None and logits.shape[-1] != vocab_size:
        raise ValueError(f"MAM logits have {logits.shape[-1]} classes, expected vocab_size={vocab_size}")
    return F.cross_entropy(logits, targets)


# --- ivt ---
def itc_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Image-text contrastive loss with soft identity targets (IVT pre-training, ALBEF-style):
    ``logits[i, j] = g_ij`` (image i, text j, already divided by the temperature), targets
    pi_ij = y_ij / sum_k y_ik from the boolean ``positives`` matrix; 1/2 (image->text + text->image)
    cross-entropies, each averaged over rows."""
    y = positives.float()
    i2t = -(y / y.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(y.T / y.T.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-text matching: two-way (mismatch / match) cross-entropy over the scored pairs."""
    return F.cross_entropy(logits, labels)


# --- ssan ---
def cosine_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``S[i, j] = cos(a_i, b_j)`` of flattened features, normalised as a / (‖a‖ + eps) (SSAN code)."""
    a, b = a.flatten(1), b.flatten(1)
    return (a / (a.norm(dim=1, keepdim=True) + eps)) @ (b / (b.norm(dim=1, keepdim=True) + eps)).t()


def pick_negatives(S: torch.Tensor, pids: torch.Tensor, margins: torch.Tensor,
                   mining: str = "semi_hard_random", generator: torch.Generator | None = None):
    """One negative column per anchor row of ``S`` (diagonal = positives), and whether one exists.

    ``semi_hard_random`` (SSAN code): uniform among c of another identity with
    S_bb - m_b < S_bc < S_bb; ``hardest`` (paper, Eq. 18): the most similar c of another identity."""
    S = S.detach()
    pos = S.diagonal()[:, None]
    negatives = pids[:, None] != pids[None, :]
    if mining == "hardest":
        return S.masked_fill(~negatives, float("-inf")).argmax(dim=1), negatives.any(dim=1)
    if mining != "semi_hard_random":
        raise ValueError(f"neg_mining={mining!r}; choose 'semi_hard_random' or 'hardest'")
    semi_hard = negatives & (S > pos - margins[:, None]) & (S < pos)
    # argmax of i.i.d. uniform scores restricted to the set = a uniform draw from the set
    noise = torch.rand(S.shape, generator=generator, device="cpu").to(S.device)
    return noise.masked_fill(~semi_hard, -1.0).argmax(dim=1), semi_hard.any(dim=1)


def ranking_hinges(S: torch.Tensor, pids: torch.Tensor, margins: torch.Tensor,
                   active: torch.Tensor | None = None, mining: str = "semi_hard_random",
                   generator: torch.Generator | None = None, fallback: bool = False) -> torch.Tensor:
    """One direction of the ranking loss: Σ_b [m_b − S_bb + S_b,n(b)]_+ over active anchors b that
    have a negative n(b) (sum reduction, as the SSAN code; anchors without one add nothing).

    ``fallback`` (the SSAN code, which always builds at least one triplet): when no anchor
    contributes, the one term of the last anchor and its first negative (the first column of another
    identity) with the last anchor's margin; without it that case gives 0."""
    pick, found = pick_negatives(S, pids, margins, mining, generator)
    keep = found if active is None else found & active
    hinge = (margins - S.diagonal() + S.gather(1, pick[:, None]).squeeze(1)).clamp(min=0)
    if fallback and not bool(keep.any()):
        others = (pids != pids[-1]).nonzero()
        if len(others):
            return (margins[-1] - S[-1, -1] + S[-1, others[0, 0]]).clamp(min=0)
    return (hinge * keep).sum()


def bidirectional_ranking_loss(S: torch.Tensor, pids: torch.Tensor, margins: torch.Tensor,
                               active: torch.Tensor | None = None, mining: str = "semi_hard_random",
                               generator: torch.Generator | None = None,
                               fallback: bool = False) -> torch.Tensor:
    """SSAN Eq. 18 with per-anchor margins: images rank captions (rows of ``S``) and captions rank
    images (rows of ``S.T``); row b of both directions shares margin m_b and mask a_b."""
    return (ranking_hinges(S, pids, margins, active, mining, generator, fallback)
            + ranking_hinges(S.t(), pids, margins, active, mining, generator, fallback))


def weak_margins(s_pos: torch.Tensor, s_weak: torch.Tensor, *, alpha1: float = 0.2,
                 margin: str = "adaptive", fixed_alpha2: float = 0.1, warmup: bool = False,
                 min_margin: float = 0.16, variant: str = "official"):
    """Margins α2 and active mask of the weak CR terms.

    adaptive: α2 = (λ + 1)·α1 / 2 (Eq. 20), λ = min(S(I_p, D'_p) / S(I_p, D_p), 1) (Eq. 21), no
    gradient through λ. ``official`` (SSAN code): λ from absolute values, α1/2 for every pair during
    the warm-up, afterwards pairs with α2 < ``min_margin`` are dropped. ``paper``: Eq. 21 as printed.
    fixed: α2 = ``fixed_alpha2`` for every pair (Fig. 7)."""
    s_pos, s_weak = s_pos.detach(), s_weak.detach()
    every = torch.ones_like(s_pos, dtype=torch.bool)
    if margin == "fixed":
        return torch.full_like(s_pos, fixed_alpha2), every
    if margin != "adaptive":
        raise ValueError(f"cr_margin={margin!r}; choose 'adaptive' or 'fixed'")
    if variant == "paper":
        lam = (s_weak / s_pos).clamp(max=1.0)
        return (lam + 1) * alpha1 / 2, every
    if variant != "official":
        raise ValueError(f"cr_variant={variant!r}; choose 'official' or 'paper'")
    if warmup:
        return torch.full_like(s_pos, alpha1 / 2), every
    lam = (s_weak.abs() / (s_pos.abs() + 1e-8)).clamp(max=1.0)
    alpha2 = (lam + 1) * alpha1 / 2
    return alpha2, alpha2 >= min_margin


def compound_ranking_loss(image: torch.Tensor, text: torch.Tensor, weak_text: torch.Tensor | None,
                          pids: torch.Tensor, *, alpha1: float = 0.2, beta: float = 0.1,
                          margin: str = "adaptive", fixed_alpha2: float = 0.1, warmup: bool = False,
                          min_margin: float = 0.16, variant: str = "official",
                          mining: str = "semi_hard_random", weak_valid: torch.Tensor | None = None,
                          generator: torch.Generator | None = None, fallback: bool = False) -> torch.Tensor:
    """SSAN compound ranking loss (Eq. 19): strong bidirectional terms on (I_p, D_p) with margin α1,
    plus β × weak terms whose positive is D'_p, a caption of another image of the same identity,
    with margin α2 (``weak_margins``). Features are ``[B, ...]`` and compared by the cosine of their
    flattened (part-concatenated) vectors. ``beta=0`` is the ordinary ranking loss (Eq. 18).

    Weak-term negatives: ``official`` uses S(I_p, D'_n) for the image anchor (the code), ``paper``
    S(I_p, D_n) (Eq. 19); the caption anchor uses S(I_n, D'_p) in both. ``weak_valid`` masks out
    anchors for which no D' exists. ``fallback``: see :func:`ranking_hinges`."""
    S = cosine_matrix(image, text)
    strong = bidirectional_ranking_loss(S, pids, torch.full_like(S.diagonal(), alpha1), None,
                                        mining, generator, fallback)
    if beta == 0 or weak_text is None:
        return strong
    S_weak = cosine_matrix(image, weak_text)
    alpha2, active = weak_margins(S.diagonal(), S_weak.diagonal(), alpha1=alpha1, margin=margin,
                                  fixed_alpha2=fixed_alpha2, warmup=warmup, min_margin=min_margin,
                                  variant=variant)
    if weak_valid is not None:
        active = active & weak_valid
    if variant == "paper":
        image_anchor = S - torch.diag_embed(S.diagonal()) + torch.diag_embed(S_weak.diagonal())
        weak = (ranking_hinges(image_anchor, pids, alpha2, active, mining, generator, fallback)
                + ranking_hinges(S_weak.t(), pids, alpha2, active, mining, generator, fallback))
    else:
        weak = bidirectional_ranking_loss(S_weak, pids, alpha2, active, mining, generator, fallback)
    return strong + beta * weak


# --- irra ---
def sdm_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, pids: torch.Tensor,
             logit_scale: float, eps: float = 1e-8) -> torch.Tensor:
    """IRRA's similarity distribution matching (Eq. 2-4): the softmax of the scaled cosine
    similarities of each text to every image of the batch, p, is pulled to the true-match
    distribution q = y / sum(y) (y_ij = 1 where the identities match) by KL(p || q); the same for each
    image against the texts; the two directions are summed, each averaged over its rows."""
    y = (pids[:, None] == pids[None, :]).float()
    q = y / y.sum(1, keepdim=True)
    s = logit_scale * F.normalize(text_feats, dim=-1) @ F.normalize(image_feats, dim=-1).T  # [text, image]

    def kl(logits):
        return (F.softmax(logits, dim=1) * (F.log_softmax(logits, dim=1) - torch.log(q + eps))).sum(1).mean()

    return kl(s) + kl(s.T)  # y is symmetric, so q serves both directions


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """IRRA's implicit relation reasoning: cross-entropy of the masked tokens' predictions; label 0
    marks a position that was not masked (ignored)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=0)

"""MIA's pairwise scores (Eqs. 4-18) and its sum-of-hinges loss (Eq. 20) against direct loops over
the paper's formulas."""
import pytest
import torch
import torch.nn.functional as F

from tbpr.losses import sum_of_hinges
from tbpr.papers.mia.model import attended_cosine, attention_weights, fine_grained_scores, fuse, pad_phrases


def cos(x, y):
    return (x @ y / (x.norm() * y.norm())).item()


def naive_attended(query, keys, tau):  # Eqs. 6-8 / 9-11 for one pair
    v = torch.tensor([cos(k, query) / tau for k in keys], dtype=torch.float64).softmax(0)
    return cos((v[:, None] * keys).sum(0), query)


def naive_bfm(phrases, parts, tau):  # Eqs. 12-17 for one pair
    s_p = []
    for n_i in phrases:
        alpha = torch.tensor([cos(n_i, p_k) / tau for p_k in parts], dtype=torch.float64).softmax(0)
        s_p.append(cos((alpha[:, None] * parts).sum(0), n_i))
    s_n = []
    for p_j in parts:
        beta = torch.tensor([cos(p_j, n_k) / tau for n_k in phrases], dtype=torch.float64).softmax(0)
        s_n.append(cos((beta[:, None] * phrases).sum(0), p_j))
    return sum(s_p) / len(s_p), sum(s_n) / len(s_n)


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_gram_form_of_rga_equals_attending_each_pair(tau):
    torch.manual_seed(0)
    texts, parts = torch.randn(5, 8, dtype=torch.float64), torch.randn(4, 6, 8, dtype=torch.float64)
    s_i = attended_cosine(texts, parts, tau=tau)
    assert s_i.shape == (5, 4)
    for t in range(5):
        for g in range(4):
            assert s_i[t, g].item() == pytest.approx(naive_attended(texts[t], parts[g], tau), abs=1e-10)


def test_padded_phrases_get_zero_weight_and_do_not_change_s_t():
    torch.manual_seed(1)
    images = torch.randn(3, 8, dtype=torch.float64)
    phrase_list = [torch.randn(m, 8, dtype=torch.float64) for m in (1, 4, 2)]
    phrases, mask = pad_phrases(phrase_list)
    assert mask.tolist() == [[True, False, False, False], [True] * 4, [True, True, False, False]]
    weights = attention_weights(images, phrases, mask)
    assert torch.all(weights[:, ~mask] == 0)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 3, dtype=torch.float64))
    s_t = attended_cosine(images, phrases, mask)
    for i in range(3):
        for t, own in enumerate(phrase_list):
            assert s_t[i, t].item() == pytest.approx(naive_attended(images[i], own, 1.0), abs=1e-10)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_gram_form_of_bfm_equals_both_directions_per_pair(tau):
    torch.manual_seed(2)
    phrase_list = [torch.randn(m, 8, dtype=torch.float64) for m in (3, 1, 5)]
    phrases, mask = pad_phrases(phrase_list)
    parts = torch.randn(2, 6, 8, dtype=torch.float64)
    s_p, s_n = fine_grained_scores(phrases, mask, parts, tau)
    assert s_p.shape == s_n.shape == (3, 2)
    for t, own in enumerate(phrase_list):
        for g in range(2):
            want_p, want_n = naive_bfm(own, parts[g], tau)
            assert s_p[t, g].item() == pytest.approx(want_p, abs=1e-10)
            assert s_n[t, g].item() == pytest.approx(want_n, abs=1e-10)
    assert (s_p.abs() <= 1).all() and (s_n.abs() <= 1).all()


def test_fusion_is_eq_18_and_single_granularities_rank_alone():
    torch.manual_seed(3)
    scores = {k: torch.rand(4, 5) for k in "GITPN"}
    want = scores["G"] + 1.5 * (scores["I"] + scores["T"]) / 2 + 0.3 * (scores["P"] + scores["N"]) / 2
    assert torch.allclose(fuse(scores, "F", 1.5, 0.3), want)
    assert torch.equal(fuse(scores, "F", 0.0, 0.0), scores["G"])
    assert torch.allclose(fuse(scores, "L"), (scores["P"] + scores["N"]) / 2)
    assert torch.equal(fuse({"G": scores["G"]}, "F", 1.0, 0.5), scores["G"])  # untrained granularity: lambda = 0
    with pytest.raises(ValueError, match="score='R'"):
        fuse({"G": scores["G"]}, "R")


def naive_sum_of_hinges(S, image_ids, margin):
    B, total = S.shape[0], 0.0
    for a in range(B):  # anchor pair (I_a, T_a)
        for b in range(B):
            if image_ids[a] == image_ids[b]:
                continue
            total += max(0.0, margin - S[a, a].item() + S[a, b].item())  # negative text for I_a
            total += max(0.0, margin - S[a, a].item() + S[b, a].item())  # negative image for T_a
    return total / B


def test_sum_of_hinges_matches_eq_20_loop_and_skips_same_image_pairs():
    torch.manual_seed(4)
    S = torch.rand(6, 6) * 2 - 1
    image_ids = torch.tensor([0, 0, 1, 2, 3, 3])  # captions 0/1 and 4/5 share an image
    got = sum_of_hinges(S, image_ids, 0.2)
    assert got.item() == pytest.approx(naive_sum_of_hinges(S, image_ids, 0.2), rel=1e-6)
    S2 = S.clone()
    S2[0, 1] = S2[1, 0] = 5.0  # a same-image pair scoring high is not a violation
    assert sum_of_hinges(S2, image_ids, 0.2).item() == pytest.approx(got.item(), rel=1e-6)


def test_sum_of_hinges_is_zero_when_positives_beat_negatives_by_the_margin():
    S = torch.full((4, 4), 0.1) + torch.eye(4) * 0.2
    assert sum_of_hinges(S, torch.arange(4), 0.2).item() == 0.0
    assert sum_of_hinges(S, torch.arange(4), 0.21).item() > 0.0

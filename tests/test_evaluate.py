"""retrieval_metrics against a brute-force reference (python loops over sorted lists)."""
import numpy as np
import pytest
import torch

from tbpr.evaluate import i2t_metrics, retrieval_metrics


def reference_ranking(scores, rerank_scores=None, k=0):
    """Gallery indices best first: descending score, equal scores -> lower index first; the top k
    re-sorted by ``rerank_scores`` (a dict gallery index -> score), equal ones keeping their order."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    if rerank_scores is not None:
        top = sorted(order[:k], key=lambda j: (-rerank_scores[j], order.index(j)))
        order = top + order[k:]
    return order


def reference_metrics(sim, qids, gids, ks=(1, 5, 10), rerank=None, k=0, source=None):
    sums = {f"R{x}": 0.0 for x in ks} | {"mAP": 0.0, "mINP": 0.0, "mAP_trapz": 0.0}
    n = excluded = 0
    hmr_hits = hmr_n = 0
    for q in range(len(qids)):
        if qids[q] not in list(gids):
            excluded += 1
            continue
        order = reference_ranking(list(sim[q]), rerank(q) if rerank else None, k)
        ranks = [pos + 1 for pos, j in enumerate(order) if gids[j] == qids[q]]
        n += 1
        for x in ks:
            sums[f"R{x}"] += ranks[0] <= x
        sums["mAP"] += sum(i / r for i, r in enumerate(ranks, 1)) / len(ranks)
        sums["mINP"] += len(ranks) / ranks[-1]
        sums["mAP_trapz"] += sum(((i - 1) / (r - 1) if r > 1 else 1.0) / 2 + i / r / 2
                                 for i, r in enumerate(ranks, 1)) / len(ranks)
        if source is not None and len(ranks) > 1:
            rest = [j for j in order if j != source[q]]
            hmr_n += 1
            hmr_hits += gids[rest[0]] == qids[q]
    out = {key: 100 * v / n for key, v in sums.items()} | {"num_queries": n, "num_excluded": excluded}
    if source is not None:
        out |= {"HMR1": 100 * hmr_hits / hmr_n, "hmr_num_queries": hmr_n}
    return out


def random_problem(seed, Q=37, G=23, ids=9, integer_scores=False, missing=False):
    rng = np.random.default_rng(seed)
    gids = rng.integers(0, ids, G)
    qids = rng.choice(gids, Q)
    if missing:
        qids[::5] = ids + 1 + rng.integers(0, 3, len(qids[::5]))  # ids with no gallery image
    sim = (rng.integers(-2, 3, (Q, G)).astype(np.float32) if integer_scores
           else rng.standard_normal((Q, G)).astype(np.float32))
    return sim, qids, gids


def assert_same(got, want):
    assert set(want) <= set(got)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("integer_scores", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 37])
def test_metrics_match_brute_force_including_ties(seed, integer_scores, chunk):
    sim, qids, gids = random_problem(seed, integer_scores=integer_scores)
    got = retrieval_metrics(sim, qids, gids, chunk_size=chunk)
    assert_same(got, reference_metrics(sim, qids, gids))


def test_ties_rank_lower_gallery_index_first():
    sim = np.zeros((1, 4), dtype=np.float32)  # all tied: order is 0, 1, 2, 3
    got = retrieval_metrics(sim, [7], [1, 7, 2, 7], ks=(1, 2))
    assert got["R1"] == 0 and got["R2"] == 100
    assert got["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 4) / 2)
    assert got["mINP"] == pytest.approx(100 * 2 / 4)


def test_hand_computed_example():
    # ranks of the positives: 2 and 3 -> AP = (1/2 + 2/3)/2, INP = 2/3, trapezoid AP per spec
    sim = np.array([[0.9, 0.8, 0.7, 0.1]])
    got = retrieval_metrics(sim, [5], [1, 5, 5, 2])
    assert (got["R1"], got["R5"]) == (0.0, 100.0)
    assert got["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert got["mINP"] == pytest.approx(100 * 2 / 3)
    assert got["mAP_trapz"] == pytest.approx(100 * ((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2)


def test_numpy_and_torch_inputs_agree():
    sim, qids, gids = random_problem(11)
    from_numpy = retrieval_metrics(sim, qids, gids, chunk_size=5)
    from_torch = retrieval_metrics(torch.from_numpy(sim).double(), torch.from_numpy(qids),
                                   torch.from_numpy(gids), chunk_size=5)
    assert from_numpy == from_torch


def test_callable_similarity_is_called_per_chunk():
    sim, qids, gids = random_problem(2)
    calls = []

    def block(rows):
        calls.append((rows.start, rows.stop))
        return torch.from_numpy(sim[rows])

    got = retrieval_metrics(block, qids, gids, chunk_size=10)
    assert calls == [(0, 10), (10, 20), (20, 30), (30, 37)]
    assert_same(got, reference_metrics(sim, qids, gids))


def test_string_ids_work_like_integer_ids():
    sim, qids, gids = random_problem(3)
    names = np.array([f"person{i}" for i in range(20)])
    assert retrieval_metrics(sim, names[qids], names[gids]) == retrieval_metrics(sim, qids, gids)


def test_queries_without_positive_raise_with_indices():
    sim, qids, gids = random_problem(4, missing=True)
    with pytest.raises(ValueError, match=r"8 of 37 queries have no image.*\[0, 5, 10.*allow_missing"):
        retrieval_metrics(sim, qids, gids)


@pytest.mark.parametrize("chunk", [1, 3, 37])
def test_allow_missing_excludes_and_counts_them(chunk):
    sim, qids, gids = random_problem(5, integer_scores=True, missing=True)
    got = retrieval_metrics(sim, qids, gids, allow_missing=True, chunk_size=chunk)
    want = reference_metrics(sim, qids, gids)
    assert want["num_excluded"] == 8 and want["num_queries"] == 29
    assert_same(got, want)


def test_all_queries_missing_is_an_error():
    with pytest.raises(ValueError, match="do not overlap"):
        retrieval_metrics(np.zeros((2, 3)), [8, 9], [1, 2, 3], allow_missing=True)


@pytest.mark.parametrize("chunk", [1, 3, 37])
@pytest.mark.parametrize("k", [1, 4, 23, 50])
def test_rerank_matches_brute_force(chunk, k):
    sim, qids, gids = random_problem(6, integer_scores=True)
    second = np.random.default_rng(7).integers(0, 3, sim.shape).astype(np.float32)  # many ties
    seen = []

    def rerank(query_idx, topk_idx):
        seen.append(len(query_idx))
        return torch.from_numpy(second)[query_idx[:, None], topk_idx]

    got = retrieval_metrics(sim, qids, gids, rerank=rerank, rerank_k=k, chunk_size=chunk)
    want = reference_metrics(sim, qids, gids, rerank=lambda q: dict(enumerate(second[q])), k=min(k, 23))
    assert_same(got, want)
    assert sum(seen) == 37 and len(seen) == -(-37 // chunk)  # one call per chunk


def test_rerank_by_true_label_gives_perfect_rank1_when_positive_in_topk():
    sim, qids, gids = random_problem(8, Q=60, G=40, ids=12)
    k = 10
    in_topk = [any(gids[j] == qids[q] for j in reference_ranking(list(sim[q]))[:k]) for q in range(60)]
    oracle = lambda q_idx, topk: torch.from_numpy(gids)[topk] == torch.from_numpy(qids)[q_idx, None]
    got = retrieval_metrics(sim, qids, gids, rerank=lambda q, t: oracle(q, t).float(), rerank_k=k)
    assert got["R1"] == pytest.approx(100 * np.mean(in_topk))
    got = retrieval_metrics(sim, qids, gids, rerank=lambda q, t: oracle(q, t).float(), rerank_k=40)
    assert got["R1"] == 100 and got["mAP"] == 100 and got["mINP"] == 100


def test_hmr1_removes_each_querys_source_image():
    sim, qids, gids = random_problem(9, Q=50, G=30, ids=8, integer_scores=True)
    rng = np.random.default_rng(0)
    source = np.array([rng.choice(np.flatnonzero(gids == q)) for q in qids])
    got = retrieval_metrics(sim, qids, gids, source_index=source, chunk_size=7)
    assert_same(got, reference_metrics(sim, qids, gids, source=source))


def test_image_to_text_swaps_roles():
    sim, qids, gids = random_problem(10, Q=30, G=30, ids=6)
    assert i2t_metrics(sim, qids, gids) == retrieval_metrics(sim.T, gids, qids)
    assert_same(i2t_metrics(sim, qids, gids), reference_metrics(sim.T, gids, qids))


# --------------------------------------------------------------------------- bad input
def test_wrong_shape_names_expected_shape():
    with pytest.raises(ValueError, match=r"shape \(3, 2\).*expected \(2, 3\).*similarity.T"):
        retrieval_metrics(np.zeros((3, 2)), [1, 2], [1, 2, 3])


def test_callable_returning_wrong_block_shape():
    with pytest.raises(ValueError, match=r"similarity\(rows\).*queries 0:2.*expected \(2, 3\)"):
        retrieval_metrics(lambda rows: torch.zeros(3, 3), [1, 2], [1, 2, 3], chunk_size=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_are_rejected(bad):
    sim = np.zeros((2, 3))
    sim[1, 2] = bad
    with pytest.raises(ValueError, match=r"NaN or inf \(first at query 1, gallery 2\)"):
        retrieval_metrics(sim, [1, 2], [1, 2, 3])


def test_id_arrays_must_be_1d():
    with pytest.raises(ValueError, match=r"query_pids must be a 1-D.*shape \(2, 1\)"):
        retrieval_metrics(np.zeros((2, 3)), [[1], [2]], [1, 2, 3])


@pytest.mark.parametrize("q, g, name", [([], [1], "query_pids"), ([1], [], "gallery_pids")])
def test_empty_inputs_are_rejected(q, g, name):
    with pytest.raises(ValueError, match=f"{name} is empty"):
        retrieval_metrics(np.zeros((len(q), len(g))), q, g)


def test_bad_rerank_output_shape():
    with pytest.raises(ValueError, match=r"rerank output.*rerank_k=2"):
        retrieval_metrics(np.zeros((2, 3)), [1, 2], [1, 2, 3], rerank=lambda q, t: torch.zeros(2, 3),
                          rerank_k=2)


def test_bad_options():
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(np.zeros((1, 1)), [1], [1], chunk_size=0)
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(np.zeros((1, 1)), [1], [1], ks=(0,))
    with pytest.raises(ValueError, match="source_index points to gallery images of another id"):
        retrieval_metrics(np.zeros((1, 2)), [1], [1, 2], source_index=[1])
    with pytest.raises(TypeError, match="similarity must be a torch tensor or numpy array"):
        retrieval_metrics([[0.0, 1.0]], [1], [1, 2])


def test_chance_rank1_is_the_mean_share_of_the_gallery_showing_each_querys_person():
    from tbpr.evaluate import chance_rank1
    queries, gallery = [3, 1, 3, 7], [1, 3, 3, 7, 7, 9]
    brute = 100 * sum(sum(g == q for g in gallery) / len(gallery) for q in queries) / len(queries)
    assert chance_rank1(queries, gallery) == pytest.approx(brute)


def reference_per_query(sim, qids, gids, rerank=None, k=0):
    """{query index: (R1 hit, AP)} by brute force, for the queries with a positive."""
    out = {}
    for q in range(len(qids)):
        order = reference_ranking(list(sim[q]), rerank(q) if rerank else None, k)
        ranks = [pos + 1 for pos, j in enumerate(order) if gids[j] == qids[q]]
        if ranks:
            out[q] = (float(ranks[0] == 1), sum(i / r for i, r in enumerate(ranks, 1)) / len(ranks))
    return out


@pytest.mark.parametrize("chunk", [1, 4, 37])
@pytest.mark.parametrize("k", [0, 5])
def test_per_query_values_are_each_querys_hit_and_ap_in_query_order(chunk, k):
    sim, qids, gids = random_problem(7, integer_scores=True, missing=True)
    rng = np.random.default_rng(1)
    rerank_table = rng.integers(0, 3, sim.shape).astype(np.float32)
    rerank = (lambda q: dict(enumerate(rerank_table[q]))) if k else None
    callback = (lambda idx, topk: torch.from_numpy(rerank_table)[idx[:, None], topk]) if k else None
    got = retrieval_metrics(sim, qids, gids, allow_missing=True, chunk_size=chunk, per_query=True,
                            rerank=callback, rerank_k=max(k, 1))
    want = reference_per_query(sim, qids, gids, rerank, k)
    scores = got["per_query"]
    assert scores.query.tolist() == sorted(want) and len(scores) == got["num_queries"]
    assert scores.values["R1"].tolist() == [want[q][0] for q in sorted(want)]
    assert scores.values["mAP"] == pytest.approx([want[q][1] for q in sorted(want)])
    for metric in ("R1", "R5", "R10", "mAP", "mINP", "mAP_trapz"):  # the metrics are their means
        assert 100 * scores.values[metric].mean() == pytest.approx(got[metric])


def test_per_query_values_survive_a_round_trip_through_npz(tmp_path):
    from tbpr.evaluate import QueryScores
    sim, qids, gids = random_problem(3)
    scores = retrieval_metrics(sim, qids, gids, per_query=True)["per_query"]
    loaded = QueryScores.load(scores.save(tmp_path / "per_query.npz"))
    assert loaded.split == scores.split and loaded.query.tolist() == scores.query.tolist()
    assert loaded.values["R1"].dtype == np.uint8 and loaded.values["R1"].tolist() == scores.values["R1"].tolist()
    assert loaded.values["mAP"] == pytest.approx(scores.values["mAP"], abs=1e-6)
    other = retrieval_metrics(sim[:, ::-1].copy(), qids, gids[::-1].copy(), per_query=True)["per_query"]
    assert other.split != scores.split  # another gallery order is another split
    assert "per_query" not in retrieval_metrics(sim, qids, gids)

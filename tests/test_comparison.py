"""tbpr.viz.comparison on tiny inputs: rankings, cost bookkeeping and the ground-truth query kinds."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import toymodel
from tbpr.evaluate import retrieval_metrics
from tbpr.viz.comparison import (NOT_STATED, breakdown, clearly_differs, differing_attributes,
                                 epoch_seconds, example_queries, family_pairs, family_share_of_negatives,
                                 items_group, kind_of, mentioned_items,
                                 pair_wins, pareto_front, query_outcomes, query_table,
                                 rerank_ranking, stated_attributes, timed_scores, visible_attributes)


@pytest.fixture(autouse=True)
def _toy(monkeypatch):
    toymodel.install(monkeypatch)  # serves model "toy"


# --------------------------------------------------------------------------- ranking and cost
def test_rerank_ranking_puts_the_reranked_topk_first_and_keeps_the_rest():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3],
                           [0.2, 0.8, 0.6, 0.4, 0.0]])
    topk = torch.tensor([[0, 3, 2], [1, 2, 3]])
    rerank = torch.tensor([[0.0, 2.0, 1.0], [1.0, 1.0, 5.0]])  # ties keep the first-stage order
    ranking = rerank_ranking(scores, topk, rerank)
    order = torch.sort(ranking, dim=1, descending=True, stable=True).indices
    assert order.tolist() == [[3, 2, 0, 4, 1], [3, 1, 2, 0, 4]]
    assert ranking.dtype == torch.float64
    assert ranking[0, 4] == pytest.approx(0.3) and ranking[1, 4] == 0.0  # outside the top-k: unchanged


def test_rerank_ranking_gives_the_metrics_of_evaluate_with_a_rerank_callback():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.standard_normal((7, 9)))
    qids, gids = rng.integers(0, 3, 7), np.arange(9) % 3
    second = torch.from_numpy(rng.standard_normal((7, 9)))
    k = 4
    topk = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    expected = retrieval_metrics(scores, qids, gids, rerank_k=k,
                                 rerank=lambda q, t: second[q[:, None], t])
    ours = retrieval_metrics(rerank_ranking(scores, topk, second.gather(1, topk)), qids, gids)
    for key in ("R1", "R5", "mAP", "mINP"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-12)


def test_timed_scores_ranks_like_evaluate_and_times_every_step(smoke_root, monkeypatch):
    from tbpr.data.formats import load
    from tbpr.evaluate import evaluate
    from tbpr.papers import create_model

    def toy_rerank(self, text_feats, image_feats, topk):  # a second opinion: negated cosine
        return -(text_feats[:, None, :] * image_feats[topk]).sum(-1)

    monkeypatch.setattr(toymodel.Toy, "rerank", toy_rerank)
    monkeypatch.setattr(toymodel.Toy, "reranks", True)
    torch.manual_seed(0)
    model = create_model("toy")
    test = load("synthpedes", smoke_root)["test"]
    scored = timed_scores(model, test, model.cfg.data, rerank_k=5, batch_size=16, chunk_size=40)
    Q, G = len(scored.eval_set.captions), len(scored.eval_set.image_paths)
    assert scored.scores.shape == scored.ranking.shape == (Q, G)
    assert set(scored.seconds) == {"gallery", "queries", "score", "rerank"}
    assert all(v > 0 for v in scored.seconds.values())
    total = 1000 * sum(scored.seconds.values()) / Q
    assert scored.ms_per_query() == pytest.approx(total)
    assert scored.ms_per_query(rerank=False, gallery=False) == pytest.approx(
        1000 * (scored.seconds["queries"] + scored.seconds["score"]) / Q)
    assert set(scored.cpu_seconds) == set(scored.seconds) and scored.steps("cpu") is scored.cpu_seconds
    assert scored.ms_per_query(clock="cpu") == pytest.approx(1000 * sum(scored.cpu_seconds.values()) / Q)
    assert scored.first_stage().steps("cpu")["rerank"] == 0.0
    with pytest.raises(ValueError, match="clock"):
        scored.ms_per_query(clock="gpu")
    e = scored.eval_set
    ours = retrieval_metrics(scored.ranking, e.caption_pids, e.image_pids)
    theirs = evaluate(model, test, model.cfg.data, rerank_k=5, progress=False)
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9)


def test_timed_scores_refuses_rerank_without_a_rerank_method(smoke_root):
    from tbpr.data.formats import load
    from tbpr.papers import create_model
    model = create_model("toy")
    with pytest.raises(ValueError, match="does not re-rank"):
        timed_scores(model, load("synthpedes", smoke_root)["test"], model.cfg.data, rerank_k=3)


def test_epoch_seconds_and_pareto_front():
    history = [{"epoch": 1, "seconds": 2.0, "stage": "a"}, {"epoch": 1, "seconds": 4.0, "stage": "b"},
               {"epoch": 2}]
    assert epoch_seconds(history) == (2, 3.0)
    n, mean = epoch_seconds([])
    assert n == 0 and np.isnan(mean)
    cost = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 2.0, "e": 1.0}
    acc = {"a": 10.0, "b": 30.0, "c": 20.0, "d": 30.0, "e": 5.0}
    # c is beaten by b; e by a; b and d tie (neither strictly better): both kept
    assert pareto_front(cost, acc) == ["a", "b", "d"]


# --------------------------------------------------------------------------- ground truth
BASE = {"gender": "male", "age": "adult", "hair_colour": "black", "hair_length": "short", "skin": 0,
        "hat": "none", "hat_colour": "red", "glasses": "none", "upper": "jacket",
        "upper_colour": "black", "upper_colour2": "white", "pattern": "plain", "sleeve": "long",
        "lower": "jeans", "lower_colour": "blue", "shoes": "sneakers", "shoes_colour": "white",
        "bag": "backpack", "bag_colour": "black", "held": "none", "held_colour": "grey"}


def test_visible_and_differing_attributes_ignore_colours_of_absent_items():
    other = {**BASE, "hat_colour": "blue", "held_colour": "red", "upper_colour2": "navy"}
    assert differing_attributes(BASE, other) == set()  # no hat, nothing held, plain top
    assert "hat_colour" not in visible_attributes(BASE) and visible_attributes(BASE)["bag_colour"] == "black"
    capped = {**BASE, "hat": "cap", "shoes_colour": "black", "upper": "coat"}
    assert differing_attributes(BASE, capped) == {"hat", "hat_colour", "shoes_colour", "upper"}


def test_caption_spans_map_to_attributes_items_and_kinds():
    spans = [(0, 3, "gender", "person"), (4, 9, "upper_colour", "upper"), (10, 15, "upper_type", "upper"),
             (16, 20, "bag_position", "bag"), (21, 25, "hair", "head"), (26, 30, "shoes_colour", "shoes")]
    assert stated_attributes(spans) == {"gender", "upper_colour", "upper", "shoes_colour"}
    assert stated_attributes(SimpleNamespace(attributes=spans)) == stated_attributes(spans)
    assert mentioned_items(spans) == {"upper", "bag", "hair", "shoes"}
    assert kind_of({"shoes_colour", "bag"}) == "small item"
    assert kind_of({"shoes_colour", "upper"}) == "mixed"
    assert kind_of({"hair_colour"}) == "hair / person"
    assert kind_of(set()) == NOT_STATED
    assert [items_group(n) for n in (2, 3, 4, 5, 7)] == ["≤3 items"] * 2 + ["4 items", "≥5 items", "≥5 items"]


def _fake_ground_truth():
    """Family 0: ids 1 (base), 2 (white -> black shoes), 3 (jeans -> shorts); family 1: id 4 alone."""
    identities = {1: BASE, 2: {**BASE, "shoes_colour": "black"}, 3: {**BASE, "lower": "shorts"},
                  4: {**BASE, "gender": "female"}}
    images = {f"test/{i}.jpg": SimpleNamespace(id=i, family=0 if i < 4 else 1) for i in identities}
    cap = lambda *names: SimpleNamespace(attributes=[(0, 1, n, "x") for n in names])  # noqa: E731
    captions = {("test/1.jpg", 0): cap("gender", "shoes_colour", "upper_type", "bag_type"),
                ("test/1.jpg", 1): cap("gender", "upper_type", "upper_colour", "lower_type", "hair_colour"),
                ("test/2.jpg", 0): cap("upper_type", "lower_type"),
                ("test/4.jpg", 0): cap("upper_type", "shoes_colour", "bag_type", "held_type", "hat_type")}
    records = [SimpleNamespace(file_path="test/1.jpg", captions=["a", "b"]),
               SimpleNamespace(file_path="test/2.jpg", captions=["c"]),
               SimpleNamespace(file_path="test/3.jpg", captions=[]),
               SimpleNamespace(file_path="test/4.jpg", captions=["d"])]
    return SimpleNamespace(identities=identities, images=images, captions=captions), records


def test_query_table_groups_queries_by_what_their_caption_states():
    gt, records = _fake_ground_truth()
    q = query_table(gt, records)
    assert q["pid"].tolist() == [1, 1, 2, 4] and q["family"].tolist() == [0, 0, 0, 1]
    assert q["items"].tolist() == [3, 3, 2, 5]
    assert q["items_group"].tolist() == ["≤3 items", "≤3 items", "≤3 items", "≥5 items"]
    assert q["family_members"].tolist() == [2, 2, 2, 0]
    # query 0 tells id 1 from id 2 (shoe colour) but not from id 3 (lower body not stated);
    # query 1 tells it from 3 (lower type) not from 2; query 2 ("jacket and jeans") from 3 only
    assert q["separates"].tolist() == ["some", "some", "some", "no family"]
    assert q["distinguishing"].tolist() == ["small item", "garment", "garment", NOT_STATED]
    assert q["stated"][0] == "bag,gender,shoes_colour,upper"


def test_family_pairs_say_which_kind_of_attribute_the_caption_uses():
    gt, records = _fake_ground_truth()
    p = family_pairs(gt, records)
    assert list(zip(p["query"], p["pid"], p["other"])) == [(0, 1, 2), (0, 1, 3), (1, 1, 2), (1, 1, 3),
                                                           (2, 2, 1), (2, 2, 3)]
    assert p["differ"].tolist() == ["small item", "garment", "small item", "garment", "small item", "mixed"]
    assert p["stated"].tolist() == ["small item", NOT_STATED, NOT_STATED, "garment", NOT_STATED, "garment"]


# --------------------------------------------------------------------------- outcomes
def test_query_outcomes_rank_and_kind_of_the_top1_image():
    gallery_pids, gallery_family = np.array([1, 1, 2, 3]), np.array([0, 0, 0, 1])
    ranking = torch.tensor([[0.9, 0.1, 0.5, 0.2],    # query id 1: match first
                            [0.1, 0.2, 0.9, 0.0],    # query id 1: family member (id 2) first, match 2nd
                            [0.3, 0.3, 0.1, 0.9],    # query id 2: unrelated first; tie -> image 0 first
                            [0.0, 0.0, 0.0, 0.0]])   # query id 3: all tied -> stable order, rank 4
    out = query_outcomes(ranking, [1, 1, 2, 3], gallery_pids, [0, 0, 0, 1], gallery_family)
    assert out["rank"].tolist() == [1, 2, 4, 4]
    assert out["R1"].tolist() == [True, False, False, False]
    assert out["R5"].tolist() == [True] * 4
    assert out["top1"].tolist() == [0, 2, 3, 0]
    assert out["top1_is"].tolist() == ["match", "family member", "unrelated", "unrelated"]


def test_pair_wins_compare_the_best_image_of_each_identity():
    gallery_pids = np.array([1, 2, 1, 2, 3])
    ranking = torch.tensor([[0.1, 0.9, 0.8, 0.2, 0.0],   # own best (0.8) below id 2's best (0.9)
                            [0.5, 0.5, 0.1, 0.1, 0.6]])  # tie 0.5/0.5: the lower index (own) first
    pairs = pd.DataFrame({"query": [0, 0, 1, 1], "pid": [1, 1, 1, 1], "other": [2, 3, 2, 3]})
    assert pair_wins(ranking, pairs, gallery_pids).tolist() == [False, True, True, False]


def test_breakdown_averages_seeds_then_items_per_group():
    values = {"a": [np.array([1, 0, 1, 1]), np.array([1, 1, 0, 1])], "b": [np.array([0, 0, 0, 1])]}
    table = breakdown(values, ["x", "y", "x", "y"], order=["y", "x", "z"])
    assert table.index.tolist() == ["y", "x"]  # empty groups are dropped
    assert table["n"].tolist() == [2, 2]
    assert table["a"].tolist() == [75.0, 75.0]  # y: (0.5 + 1) / 2; x: (1 + 0.5) / 2
    assert table["b"].tolist() == [50.0, 0.0]
    assert table.attrs["se"]["b"]["y"] == pytest.approx(100 * np.std([0, 1], ddof=1) / np.sqrt(2))
    assert table.attrs["se"]["b"]["x"] == 0.0
    with pytest.raises(ValueError, match="3 values but 4"):
        breakdown({"c": [np.ones(3)]}, ["x"] * 4)


def test_clearly_differs_needs_more_than_z_standard_errors():
    assert clearly_differs(50.0, 3.0, 39.0, 4.0)      # 11 > 2 * 5
    assert not clearly_differs(50.0, 3.0, 40.0, 4.0)  # 10, not more
    assert not clearly_differs(50.0, 0.0, 10.0, 0.0)  # no error known: no claim


def test_family_share_of_negatives_is_the_chance_of_a_family_confusion():
    share = family_share_of_negatives([1, 3], [0, 1], [1, 1, 2, 2, 4, 3], [0, 0, 0, 0, 0, 1])
    # id 1: negatives 2, 2, 4, 3 of which family 0: 2, 2, 4 -> 3/4; id 3: negatives all family 0 -> 0
    assert share.tolist() == [0.75, 0.0]


def test_example_queries_pick_one_of_each_kind_then_evenly_spaced():
    q = pd.DataFrame({"distinguishing": ["garment", "small item", "small item", NOT_STATED, "garment"],
                      "items": [4, 3, 5, 3, 4]})
    assert example_queries(5, q) == [1, 0, 3]  # small item, garment, fewest items (1 already taken)
    assert example_queries(5, q, n=4) == [1, 0, 3, 2]
    assert example_queries(9) == [2, 4, 6]
    assert example_queries(2) == [0, 1]


def test_first_stage_drops_the_rerank_and_top_lists_the_final_order():
    from tbpr.viz.comparison import Scored
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    ranking = torch.tensor([[3.0, 2.0, 1.0], [0.3, 0.2, 0.1]], dtype=torch.float64)
    s = Scored(scores, ranking, SimpleNamespace(captions=["a", "b"]),
               {"gallery": 0.002, "queries": 0.001, "score": 0.001, "rerank": 0.004})
    assert s.ms_per_query() == pytest.approx(4.0) and s.first_stage().ms_per_query() == pytest.approx(2.0)
    assert s.top([0, 1], k=2) == {0: [0, 1], 1: [0, 1]}
    assert s.first_stage().top([0], k=3) == {0: [1, 2, 0]}


def test_top1_errors_average_shares_over_seeds():
    from tbpr.viz.comparison import top1_errors
    seed0 = pd.DataFrame({"R1": [True, False, False, False],
                          "top1_is": ["match", "family member", "unrelated", "family member"]})
    seed1 = pd.DataFrame({"R1": [True, True, False, False],
                          "top1_is": ["match", "match", "unrelated", "unrelated"]})
    out = top1_errors([seed0, seed1], chance=[0.1, 0.2, 0.3, 0.4])
    assert out["top-1 correct (%)"] == pytest.approx((25 + 50) / 2)
    assert out["top-1 family member (%)"] == pytest.approx((50 + 0) / 2)
    assert out["top-1 unrelated (%)"] == pytest.approx((25 + 50) / 2)
    assert out["family share of wrong top-1 (%)"] == pytest.approx((100 * 2 / 3 + 0) / 2)
    assert out["chance family share (%)"] == pytest.approx((100 * 0.3 + 100 * 0.35) / 2)

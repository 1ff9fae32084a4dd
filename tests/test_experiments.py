"""experiments.run trains and evaluates once per configuration, then answers from its disk cache."""
import pytest

from tbpr import experiments

import toymodel


@pytest.fixture(autouse=True)
def _toy(monkeypatch):
    toymodel.install(monkeypatch)  # serves model "toy", here and in run_many's workers


def _run(**kw):
    return experiments.run("toy", "paper", kw.pop("overrides", None), data_root=kw.pop("root"),
                           progress=False, **kw)


def test_run_trains_evaluates_and_caches(smoke_root):
    first = _run(root=smoke_root, seed=0)
    assert set(first.metrics) >= {"R1", "R5", "R10", "mAP", "mINP"}
    assert len(first.history) == 2 and first.history[-1]["epoch"] == 2
    again = _run(root=smoke_root, seed=0)
    assert again.key == first.key and again.metrics == first.metrics
    assert again.train_seconds == first.train_seconds  # read back, not retrained


def test_cache_key_follows_config_and_seed(smoke_root):
    base = _run(root=smoke_root, seed=0)
    assert _run(root=smoke_root, seed=1).key != base.key
    assert _run(root=smoke_root, seed=0, overrides={"dim": 8}).key != base.key


def test_same_seed_same_metrics_without_cache(smoke_root):
    a = _run(root=smoke_root, seed=3, cache=False)
    b = _run(root=smoke_root, seed=3, cache=False)
    assert a.metrics == b.metrics


def test_loaded_model_reproduces_the_metrics(smoke_root):
    from tbpr.data.formats import load
    from tbpr.evaluate import evaluate
    result = _run(root=smoke_root, seed=0)
    model = result.load_model()
    test = load("synthpedes", smoke_root, verbose=False)["test"]
    assert evaluate(model, test, model.cfg.data, progress=False) == pytest.approx(result.metrics)


def test_num_classes_comes_from_the_training_identities(smoke_root):
    from tbpr.data.formats import load
    model = _run(root=smoke_root, seed=0).load_model()
    train = load("synthpedes", smoke_root, verbose=False)["train"]
    assert model.cfg.num_classes == len({r.pid for r in train})


def test_run_many_groups_results_by_row(smoke_root):
    rows = {"dim 16": {}, "dim 8": {"dim": 8}}
    out = experiments.run_many("toy", rows, seeds=[0, 1], profile="paper", data_root=smoke_root,
                               progress=False)
    assert list(out) == list(rows) and all(len(v) == 2 for v in out.values())
    assert experiments.metrics_of(out)["dim 8"][1] == out["dim 8"][1].metrics


def test_run_tables_groups_by_table_and_trains_a_shared_row_once(smoke_root, monkeypatch):
    trained = []
    real_train = experiments._train
    monkeypatch.setattr(experiments, "_train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    tables = {"a": {"full": {}, "small": {"dim": 6}}, "b": {"small again": {"dim": 6}}}
    out = experiments.run_tables("toy", tables, seeds=[5], profile="paper", data_root=smoke_root,
                                 progress=False, workers=1)
    assert {t: list(rows) for t, rows in out.items()} == {"a": ["full", "small"], "b": ["small again"]}
    assert out["a"]["small"][0].key == out["b"]["small again"][0].key
    assert len(trained) == 2


def test_real_dataset_without_root_is_a_clear_error():
    with pytest.raises(ValueError, match="needs data_root"):
        experiments.run("toy", "paper", dataset="cuhk-pedes")


def test_another_eval_protocol_reuses_the_trained_checkpoint(smoke_root, monkeypatch):
    first = _run(root=smoke_root, seed=0)
    monkeypatch.setattr(experiments, "_train", lambda *a, **k: pytest.fail("retrained"))
    toy_rerank = lambda self, text, image, topk: self.similarity(text, image).gather(1, topk)  # noqa: E731
    monkeypatch.setattr(toymodel.Toy, "rerank", toy_rerank)
    monkeypatch.setattr(toymodel.Toy, "reranks", True)
    reranked = _run(root=smoke_root, seed=0, rerank_k=5)
    assert reranked.key == first.key and reranked.spec["rerank_k"] == 5
    assert reranked.metrics["R1"] == pytest.approx(first.metrics["R1"])  # same scores, same order


def test_run_many_in_parallel_workers_matches_one_process(smoke_root, tmp_path, monkeypatch):
    rows = {"dim 16": {}, "dim 8": {"dim": 8}, "dim 8 again": {"dim": 8}}
    kw = dict(seeds=[0, 1], profile="paper", data_root=smoke_root, progress=False)
    serial = experiments.metrics_of(experiments.run_many("toy", rows, workers=1, **kw))
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path))  # an empty cache: the workers must train
    parallel = experiments.run_many("toy", rows, workers=2, **kw)
    assert experiments.metrics_of(parallel) == serial
    assert parallel["dim 8"][0].key == parallel["dim 8 again"][0].key  # one config, trained once


def test_code_version_follows_shared_code_and_own_model_only(tmp_path, monkeypatch):
    from tbpr import cache
    for rel in ("engine.py", "papers/mia/model.py", "papers/cada/model.py", "papers/cada/paper.yaml",
                "viz/plots.py", "zoo/__init__.py", "pretrain/vision.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    monkeypatch.setattr(cache, "PACKAGE_DIR", tmp_path)

    def versions():
        cache.code_version.cache_clear()
        return cache.code_version("mia"), cache.code_version("cada")

    mia, cada = versions()
    (tmp_path / "papers/cada/model.py").write_text("x = 2\n")
    assert versions() == (mia, versions()[1]) and versions()[1] != cada  # CADA's edit: MIA kept
    (tmp_path / "papers/cada/paper.yaml").write_text("x: 2\n")
    assert versions()[0] == mia and versions()[1] != cada
    (tmp_path / "viz/plots.py").write_text("x = 2\n")
    assert versions()[0] == mia  # plotting code cannot change a trained model
    (tmp_path / "pretrain/vision.py").write_text("x = 2\n")
    assert versions()[0] == mia  # a zoo recipe: runs key on the member's sha256 instead
    (tmp_path / "zoo/__init__.py").write_text("x = 2\n")
    assert versions()[0] != mia  # how members load is run code
    mia = versions()[0]
    (tmp_path / "engine.py").write_text("x = 2\n")
    assert versions()[0] != mia  # shared training code invalidates every model
    cache.code_version.cache_clear()


def test_each_run_keeps_its_per_query_values_beside_the_result(smoke_root):
    result = _run(root=smoke_root, seed=0)
    scores = result.per_query()
    assert len(scores) == result.metrics["num_queries"] and scores.query.tolist() == sorted(scores.query)
    assert 100 * scores.values["R1"].mean() == pytest.approx(result.metrics["R1"])
    assert 100 * scores.values["mAP"].mean() == pytest.approx(result.metrics["mAP"], abs=1e-4)
    assert "per_query" not in result.metrics  # the JSON stays small


def test_a_cached_run_without_per_query_values_is_evaluated_again_not_retrained(smoke_root, monkeypatch):
    first = _run(root=smoke_root, seed=0)
    per_query = experiments._per_query_file(experiments.Path(first.run_dir), 0)
    per_query.unlink()  # as written before per-query values were kept
    monkeypatch.setattr(experiments, "_train", lambda *a, **k: pytest.fail("retrained"))
    again = _run(root=smoke_root, seed=0)
    assert per_query.exists() and again.metrics == pytest.approx(first.metrics)
    assert again.train_seconds == first.train_seconds


def test_headline_seeds_extend_the_rows_seeds_to_five():
    assert experiments.headline_seeds("quick") == [0, 1, 2, 3, 4]
    assert experiments.headline_seeds("smoke") == [0, 1]
    assert experiments.headline_seeds("quick", [2, 7]) == [2, 7, 0, 1, 3]
    assert experiments.headline_seeds("quick", [0, 1, 2], [0, 1, 2, 9]) == [0, 1, 2, 9]
    with pytest.raises(ValueError, match="must begin with seeds"):
        experiments.headline_seeds("quick", [0, 1, 2], [3, 4, 5])


def test_the_headline_rows_run_at_their_own_seeds(smoke_root, monkeypatch):
    monkeypatch.setattr(experiments, "comparisons", lambda model: {
        "headline": {"table": "t", "full": "dim 16", "baseline": "dim 8"}, "reference": {"t": "dim 16"}})
    rows = {"dim 16": {}, "dim 8": {"dim": 8}, "dim 4": {"dim": 4}}
    seeds = experiments.seeds_by_row("toy", "t", rows, [0], [0, 1])
    assert seeds == {"dim 16": [0, 1], "dim 8": [0, 1], "dim 4": [0]}
    assert experiments.seeds_by_row("toy", "other table", rows, [0], [0, 1])["dim 16"] == [0]
    out = experiments.run_tables("toy", {"t": rows}, {"t": seeds}, profile="paper", data_root=smoke_root,
                                 progress=False)["t"]
    assert [r.spec["seed"] for r in out["dim 8"]] == [0, 1] and [r.spec["seed"] for r in out["dim 4"]] == [0]


def test_runs_log_whether_they_trained_evaluated_or_read_the_cache(smoke_root, tmp_path, monkeypatch):
    log = tmp_path / "runs.jsonl"
    monkeypatch.setenv(experiments.RUN_LOG, str(log))
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path / "cache"))
    first = _run(root=smoke_root, seed=0)
    assert experiments.read_run_log(log) == {"trained": 1, "evaluated": 0, "cached": 0,
                                             "train_seconds": pytest.approx(first.train_seconds)}
    log.unlink()
    _run(root=smoke_root, seed=0)
    experiments._per_query_file(experiments.Path(first.run_dir), 0).unlink()
    _run(root=smoke_root, seed=1)  # another run: trained
    assert experiments.read_run_log(log)["cached"] == 1 and experiments.read_run_log(log)["trained"] == 1
    log.unlink()
    _run(root=smoke_root, seed=0)  # its per-query values are gone: evaluated again, not retrained
    assert experiments.read_run_log(log) == {"trained": 0, "evaluated": 1, "cached": 0, "train_seconds": 0}

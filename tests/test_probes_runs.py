"""Probes of the run cache and the command line, replayed: each of these once returned a stale or
wrong result, lost work, or answered a mistake with a long traceback."""
import json
import multiprocessing
import os
import shutil

import pytest
import torch

from tbpr import experiments
from tbpr.cli import main
from tbpr.config import parse_overrides
from tbpr.evaluate import retrieval_metrics
from tbpr.papers import get_config

FAST = {"train.epochs": 1}


@pytest.fixture()
def own_data(smoke_root, tmp_path):
    """A private copy of the smoke SynthPedes that a test may cut or delete."""
    root = tmp_path / "data"
    shutil.copytree(smoke_root, root)
    return root


def _run(root, **kw):
    return experiments.run("ssan", "smoke", FAST, data_root=root, seed=0, progress=False, **kw)


def test_the_run_cache_is_keyed_by_the_data_not_its_path(own_data):
    first = _run(own_data)
    raw = json.loads((own_data / "reid_raw.json").read_text())
    test = [r for r in raw if r["split"] == "test"]
    cut = [r for r in raw if r["split"] != "test"] + test[: len(test) // 2]
    (own_data / "reid_raw.json").write_text(json.dumps(cut))
    experiments._records.cache_clear()
    second = _run(own_data)
    assert second.key != first.key
    assert second.metrics["num_queries"] < first.metrics["num_queries"]
    shutil.rmtree(own_data)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run(own_data)


def test_no_cache_trains_from_scratch_and_leaves_the_cached_run_alone(own_data):
    cached = _run(own_data)
    fresh = _run(own_data, cache=False)
    assert fresh.run_dir != cached.run_dir and fresh.train_seconds > 0
    assert fresh.metrics == cached.metrics  # same seed, same data: the same model again
    assert experiments.Result.read(experiments.Path(cached.run_dir) / "result.json").train_seconds \
        == cached.train_seconds


def test_a_damaged_cache_entry_is_recomputed_not_fatal(own_data):
    first = _run(own_data)
    run_dir = experiments.Path(first.run_dir)
    (run_dir / "result.json").write_text('{"key": "trunc')
    with pytest.warns(UserWarning, match="unreadable"):
        again = _run(own_data)
    assert again.metrics == first.metrics
    (run_dir / "result.json").unlink()
    (run_dir / "trained.json").write_text("[1, 2")
    with pytest.warns(UserWarning, match="unreadable"):
        retrained = _run(own_data)
    assert retrained.metrics == first.metrics


def _run_in_process(root, cache, queue):
    os.environ["TBPR_CACHE"] = cache
    torch.set_num_threads(1)
    queue.put(_run(root).metrics)


def test_two_processes_on_one_run_key_both_finish_with_one_result(own_data):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_run_in_process, args=(own_data, os.environ["TBPR_CACHE"], queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = queue.get(timeout=5), queue.get(timeout=5)
    assert a == b


@pytest.mark.parametrize("overrides, message", [
    ({"train.epochs": 0}, "train.epochs=0"),
    ({"train.epochs": -2}, "train.epochs=-2"),
    ({"data.batch_size": 0}, "data.batch_size=0"),
])
def test_settings_that_would_train_nothing_are_refused_before_training(own_data, overrides, message):
    with pytest.raises(ValueError, match=message):
        experiments.run("ssan", "smoke", overrides, data_root=own_data, progress=False)


def test_values_of_the_wrong_kind_name_the_field():
    with pytest.raises(TypeError, match="epochs=1.5"):
        get_config("ssan", "smoke", {"train.epochs": 1.5})
    with pytest.raises(TypeError, match="lr='abc'"):
        get_config("ssan", "smoke", parse_overrides(["train.lr=abc"]))


def test_half_precision_scores_and_mixed_id_types_are_refused():
    scores = torch.rand(4, 4)
    with pytest.raises(TypeError, match="float32"):
        retrieval_metrics(scores.half(), [1, 2, 3, 4], [1, 2, 3, 4])
    with pytest.raises(TypeError, match="mix text and numeric"):
        retrieval_metrics(scores, ["1", 2, 3, 4], [1, 2, 3, 4])


@pytest.mark.parametrize("args, names", [
    (["train", "nomodel", "--profile", "smoke"], "nomodel"),
    (["train", "ssan", "--profile", "smoke", "--set", "nokey=1"], "nokey"),
    (["train", "ssan", "--profile", "smoke", "--set", "train.lr=abc"], "lr"),
    (["train", "ssan", "--profile", "smoke", "--seed", "-1"], "seed"),
    (["train", "ssan", "--profile", "smoke", "--rerank-k", "-3"], "rerank_k"),
    (["train", "ssan", "--profile", "smoke", "--data-root", "/no/such/folder"], "/no/such/folder"),
    (["train", "ssan", "--profile", "smoke", "--dataset", "cuhk-pedes"], "data_root"),
    (["train", "ssan", "--profile", "smoke", "--device", "cuda"], "cuda"),
])
def test_cli_mistakes_are_one_line_with_exit_status_2(args, names, smoke_root, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "Traceback" not in err
    assert any(names in ln for ln in err.splitlines() if "error" in ln), err[-2000:]


def test_cli_answer_is_the_only_thing_on_stdout(smoke_root, capsys):
    main(["train", "ssan", "--profile", "smoke", "--set", "train.epochs=1"])
    assert "R1" in json.loads(capsys.readouterr().out)

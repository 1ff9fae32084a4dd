"""Shipped models (tbpr/shipped/): every one present loads and reproduces the metrics its manifest
records on the quick test split, within the budget; the mechanism (ship, verify, find, the run cache
first) is exercised on a smoke-profile model shipped to a temporary folder."""
import json
import subprocess
import sys
import time

import pytest
import torch

from tbpr import cli, experiments, shipped, synthpedes
from tbpr.engine import read_checkpoint

SHIPPED = shipped.available()
NONE_YET = "no model shipped in tbpr/shipped/ yet: make them with `tbpr ship all` (quick, trained if not cached)"


@pytest.mark.parametrize("name", SHIPPED or [None])
def test_every_shipped_model_reproduces_its_recorded_metrics(name):
    if name is None:
        pytest.skip(NONE_YET)
    torch.set_num_threads(1)
    recorded, measured = shipped.verify(name)
    assert shipped.differences(recorded, measured) == {}, f"re-make it with `tbpr ship {name}`"


def test_shipped_models_fit_the_budget():
    if not SHIPPED:
        pytest.skip(NONE_YET)
    sizes = shipped.sizes()
    assert set(sizes) == set(SHIPPED), "a manifest without its weights"
    assert sum(sizes.values()) <= shipped.BUDGET_BYTES, {n: f"{b / 1e6:.2f} MB" for n, b in sizes.items()}


@pytest.fixture(scope="module")
def smoke_shipped(smoke_root, tmp_path_factory):
    """SSAN at smoke, shipped to a temporary folder (trained into the session's cache first)."""
    folder = tmp_path_factory.mktemp("shipped")
    torch.set_num_threads(1)
    meta = shipped.ship("ssan", "smoke", folder=folder)
    return folder, meta


def test_ship_writes_weights_and_a_manifest_in_the_zoo_scheme(smoke_shipped):
    folder, meta = smoke_shipped
    weights = folder / "ssan.safetensors"
    assert json.loads((folder / "ssan.json").read_text()) == meta
    assert meta["file"] == "ssan.safetensors" and meta["bytes"] == weights.stat().st_size
    assert meta["sha256"] == shipped.zoo.sha256(weights) and meta["dtype"] == "float16"
    result = experiments.run("ssan", "smoke")  # the run it was made from, read from the cache
    assert (meta["run_key"], meta["code"], meta["data"]) == (result.key, result.spec["code"], result.spec["data"])
    assert meta["config"] == json.loads(json.dumps(result.spec["config"]))
    assert meta["run_metrics"] == result.metrics
    assert abs(meta["metrics"]["R1"] - result.metrics["R1"]) < 5  # float16 storage moves little
    stored = read_checkpoint(weights)
    assert stored["extra"]["shipped"]["run_key"] == result.key
    original = {k: v for k, v in result.load_model().state_dict().items()}
    loaded = shipped.load("ssan", folder).state_dict()
    for key, value in original.items():  # the weights, rounded to float16, computed in float32
        expected = value.half().float() if value.is_floating_point() else value
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], expected), key


def test_a_shipped_model_reproduces_its_metrics_and_a_wrong_record_is_caught(smoke_shipped):
    folder, meta = smoke_shipped
    recorded, measured = shipped.verify("ssan", folder)
    assert shipped.differences(recorded, measured) == {}
    assert set(shipped.differences({**recorded, "R1": recorded["R1"] + 0.5}, measured)) == {"R1"}
    assert set(shipped.differences({**recorded, "num_queries": recorded["num_queries"] + 1}, measured)) == {"num_queries"}


def test_damaged_weights_or_other_data_are_refused_in_one_line(smoke_shipped, tmp_path):
    folder, meta = smoke_shipped
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("ssan.safetensors", "ssan.json"):
        (copy / name).write_bytes((folder / name).read_bytes())
    weights = bytearray((copy / "ssan.safetensors").read_bytes())
    weights[-1] ^= 1
    (copy / "ssan.safetensors").write_bytes(bytes(weights))
    with pytest.raises(shipped.ShippedError, match=r"sha256 .* does not match its manifest.*`tbpr ship ssan`"):
        shipped.path("ssan", copy)
    (copy / "ssan.safetensors").write_bytes((folder / "ssan.safetensors").read_bytes())
    (copy / "ssan.json").write_text(json.dumps({**meta, "data": "0" * 64}))
    with pytest.raises(shipped.ShippedError, match=r"recorded on SynthPedes smoke data 000000000000.*`tbpr ship ssan`"):
        shipped.verify("ssan", copy)
    with pytest.raises(shipped.ShippedError, match=r"no shipped model 'mia' \(shipped: ssan\).*`tbpr ship mia`"):
        shipped.manifest("mia", copy)


def test_the_run_cache_comes_first_then_the_shipped_model_of_that_config(smoke_shipped, tmp_path, monkeypatch):
    folder, meta = smoke_shipped
    assert shipped.find("ssan", "smoke", folder=folder) == folder / "ssan.safetensors"
    assert shipped.find("ssan", "smoke", {"train.epochs": 1}, folder=folder) is None  # another config
    assert shipped.find("ssan", "quick", folder=folder) is None
    _, source, metrics = shipped.trained("ssan", "smoke", folder=folder)
    assert source.startswith("run cache ") and metrics == meta["run_metrics"]
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path / "empty-cache"))  # a fresh clone: nothing trained
    model, source, metrics = shipped.trained("ssan", "smoke", folder=folder)
    assert source.startswith(f"shipped model {folder / 'ssan.safetensors'} (smoke, seed 0, R1 ")
    assert metrics == meta["metrics"] and not model.training
    with pytest.raises(shipped.ShippedError, match=r"no trained ssan at profile 'smoke' with \{'train.epochs': 1\}.*tbpr train ssan"):
        shipped.trained("ssan", "smoke", {"train.epochs": 1}, folder=folder)


def test_tbpr_eval_uses_the_shipped_model_and_says_so(smoke_shipped, tmp_path, monkeypatch, capsys):
    folder, meta = smoke_shipped
    monkeypatch.setattr(shipped, "DIR", folder)
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TBPR_PROGRESS", "off")
    cli.main(["eval", "ssan", "--profile", "smoke"])
    out, err = capsys.readouterr()
    assert json.loads(out)["R1"] == pytest.approx(meta["metrics"]["R1"], abs=shipped.TOLERANCE)
    assert f"tbpr eval: ssan from the shipped model {folder / 'ssan.safetensors'}" in err
    # evaluated on the test split rendered alone (recorded on the full render: the same split)
    assert [p.name for p in (tmp_path / "empty-cache" / "synthpedes").glob("smoke-*")] == \
        [f"smoke-seed0-v{synthpedes.VERSION}-test"]


def test_tbpr_ship_prints_the_sizes_and_answers_json(smoke_root, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tbpr.cli", "ship", "ssan", "--profile", "smoke", "--out",
                           str(tmp_path)], capture_output=True, text=True, env={**__import__("os").environ,
                                                                                "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout)
    size = (tmp_path / "ssan.safetensors").stat().st_size
    assert answer["shipped"]["ssan"]["bytes"] == size and answer["total_bytes"] == size
    assert answer["budget_bytes"] == shipped.BUDGET_BYTES
    assert f"ssan   {size / 1e6:6.2f} MB" in proc.stderr and "MB of the 25 MB budget" in proc.stderr


def test_the_explorer_opens_on_a_shipped_model_without_training(smoke_shipped, tmp_path, monkeypatch):
    from tbpr.explorer import Explorer
    folder, meta = smoke_shipped
    monkeypatch.setattr(shipped, "DIR", folder)
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path / "empty-cache"))  # a fresh clone: nothing trained
    monkeypatch.setattr(experiments, "_train_evaluate_save", lambda *a: pytest.fail("the explorer trained"))
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="no trained mia at profile 'smoke'.*none shipped"):
        explorer = Explorer.from_runs("smoke", ["ssan", "mia"])
    explorer.widget()  # its first search: ranking, word list, figure
    seconds = time.perf_counter() - start
    assert list(explorer.models) == ["ssan"] and explorer.sources["ssan"].startswith("shipped model")
    assert explorer.r1("ssan") == meta["metrics"]["R1"] and explorer.last["results"]
    # a fresh clone renders the gallery's split alone, not the training data the shipped model needs not
    rendered = [p.name for p in (tmp_path / "empty-cache" / "synthpedes").iterdir() if not p.name.startswith(".")]
    assert rendered == [f"smoke-seed0-v{synthpedes.VERSION}-test"] and not (tmp_path / "empty-cache" / "experiments").exists()
    print(f"explorer cold start on a shipped smoke model (data rendered): {seconds:.1f} s")

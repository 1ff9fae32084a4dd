"""``tbpr search`` ranks a folder of the user's own images with a trained (or shipped) model, names and
skips what it cannot read, and draws the top images with the word maps; the explorer takes a folder
as its gallery too."""
import json
import shutil
from pathlib import Path

import matplotlib
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

from tbpr import cli, experiments, shipped  # noqa: E402
from tbpr.data.datasets import load_eval_images  # noqa: E402
from tbpr.data.formats import load  # noqa: E402
from tbpr.explorer import Explorer, read_image_folder  # noqa: E402

QUERY = "a woman in a red jacket and black shorts"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TBPR_PROGRESS", "off")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ssan(smoke_root):
    """SSAN trained at smoke (into the session's cache): its checkpoint."""
    result = experiments.run("ssan", "smoke", progress=False)
    return result.run_dir + "/model.safetensors"


@pytest.fixture
def photos(smoke_root, tmp_path):
    """Six SynthPedes test images under other names, a corrupt .jpg and a text file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for n, record in enumerate(load("synthpedes", smoke_root, verbose=False)["test"][:6]):
        shutil.copy(record.image_path, folder / f"person_{n}{record.image_path.suffix}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _search(capsys, *args):
    cli.main(["search", QUERY, *args])
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_search_ranks_the_folder_as_the_model_scores_it(ssan, photos, tmp_path, capsys):
    answer, err = _search(capsys, "--images", str(photos), "--checkpoint", ssan, "--top", "4",
                          "--out", str(tmp_path / "grid.png"))
    assert answer["model"] == "ssan" and answer["source"] == f"checkpoint {ssan}"
    assert answer["searched"] == 6 and answer["skipped"] == [str(photos / "broken.jpg")]
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and skipped[0].startswith(f"tbpr search: skipped {photos / 'broken.jpg'}: cannot read")
    model = shipped.load_checkpoint_model(ssan)
    paths = sorted(photos.glob("person_*"))
    with torch.no_grad():
        scores = model.similarity(model.encode_texts([QUERY]), model.encode_images(load_eval_images(paths, model.cfg.data)))[0]
    best = torch.argsort(scores, descending=True, stable=True)[:4]
    assert [r["image"] for r in answer["ranking"]] == [str(paths[i]) for i in best]
    assert [r["score"] for r in answer["ranking"]] == pytest.approx(scores[best].tolist(), abs=1e-4)
    assert [r["rank"] for r in answer["ranking"]] == [1, 2, 3, 4]
    with Image.open(answer["grid"]) as grid:  # the top images, then a row of maps per word
        assert grid.size[0] > 400 and grid.size[1] > 300
    assert answer["words"] and not {"a", "in", "and"} & set(answer["words"])
    assert set(answer["words"]) <= set(QUERY.split()) | {"red jacket", "black shorts"}


def test_the_grid_has_a_row_per_mapped_word_and_names_the_others(ssan, photos):
    explorer = Explorer({"ssan": shipped.load_checkpoint_model(ssan)}, images=photos)
    fig = explorer.words_figure("ssan", QUERY, k=3, words=["jacket", "red", "zebra"])
    assert explorer.last["words"] == ["jacket", "red"] and explorer.last["no_map"] == ["zebra"]
    assert len(fig.axes) == 3 * 3  # image row + two map rows, three columns
    assert [r["label"] for r in explorer.last["results"]] == [Path(r["path"]).name for r in explorer.last["results"]]


def test_search_takes_the_cached_run_of_a_model(ssan, photos, capsys):
    answer, err = _search(capsys, "--images", str(photos), "--model", "ssan", "--profile", "smoke", "--top", "2")
    assert answer["source"].startswith("run cache ") and len(answer["ranking"]) == 2
    assert f"tbpr search: ssan from the {answer['source']}" in err


def test_search_refuses_in_one_line(ssan, photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shipped, "DIR", tmp_path / "nothing-shipped")
    cases = [
        (["--images", str(photos)], "no model is shipped yet (tbpr/shipped/): give --model NAME"),
        (["--images", str(tmp_path / "absent"), "--checkpoint", ssan], "is not a folder"),
        (["--images", str(photos), "--checkpoint", ssan, "--model", "mia"], "holds a ssan model, not mia"),
        (["--images", str(photos), "--checkpoint", ssan, "--top", "0"], "--top 0: give a whole number >= 1"),
    ]
    empty = tmp_path / "only-broken"
    empty.mkdir()
    (empty / "x.png").write_bytes(b"garbage")
    cases.append((["--images", str(empty), "--checkpoint", ssan], "no readable image"))
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            cli.main(["search", QUERY, *args])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and err.count("\n") <= 2, err


def test_read_image_folder_names_each_unreadable_file(photos):
    Image.new("RGB", (8, 16)).save(photos / "truncated.png")
    data = (photos / "truncated.png").read_bytes()
    (photos / "truncated.png").write_bytes(data[: len(data) // 2])
    readable, skipped = read_image_folder(photos)
    assert readable == sorted(photos.glob("person_*"))
    assert sorted(p.name for p, _ in skipped) == ["broken.jpg", "truncated.png"]
    assert all(why for _, why in skipped)


def test_the_explorer_takes_a_folder_and_goes_back_to_the_split(ssan, photos, smoke_root):
    explorer = Explorer.from_checkpoints({"ssan": ssan}, data_root=smoke_root, profile="smoke")
    split_size = len(explorer.eval_set.image_paths)
    explorer.widget()
    c, p = explorer.controls, explorer.panels
    c["images"].value = str(photos)
    assert len(explorer.eval_set.image_paths) == 6 and explorer.last["truth"] is None
    assert all(r["match"] is None and r["label"].startswith("person_") for r in explorer.last["results"])
    assert "gallery: 6 images of" in p["info"].value and "skipped (unreadable): broken.jpg" in p["info"].value
    c["images"].value = str(photos / "absent")  # a mistake: said in red, the folder stays
    assert "is not a folder" in p["info"].value and len(explorer.eval_set.image_paths) == 6
    c["images"].value = ""
    assert len(explorer.eval_set.image_paths) == split_size and "gallery:" not in p["info"].value
    assert explorer.last["truth"] is not None  # a test caption again: its person is known

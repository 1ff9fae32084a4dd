"""Readers of the three real layouts (written by the generator) and every bad-input case."""
import json
import shutil

import pytest

from tbpr import synthpedes as synthetic
from tbpr.data import formats
from tbpr.data.formats import DatasetError


@pytest.fixture(scope="module")
def raw(smoke_root):
    return json.loads((smoke_root / "reid_raw.json").read_text())


@pytest.mark.parametrize("name", ["synthpedes", "cuhk-pedes", "icfg-pedes", "rstpreid"])
def test_every_layout_round_trips_through_load(name, smoke_root, raw):
    fmt = "cuhk-pedes" if name == "synthpedes" else name
    synthetic.write_layout(smoke_root, fmt)
    splits = formats.load(name, smoke_root, verbose=False)
    expected = {s: [r for r in raw if r["split"] == s] for s in ("train", "val", "test")}
    if name == "icfg-pedes":  # no val split, one caption per image
        expected["val"] = []
        expected = {s: [dict(r, captions=r["captions"][:1]) for r in rs]
                    for s, rs in expected.items()}
    for split, records in splits.items():
        want = expected[split]
        assert [r.file_path for r in records] == [w["file_path"] for w in want]
        assert [r.captions for r in records] == [w["captions"] for w in want]
        assert [r.orig_id for r in records] == [w["id"] for w in want]
        assert all(r.image_path == smoke_root / "imgs" / r.file_path for r in records)


def test_training_ids_are_remapped_to_0_to_C_minus_1_in_id_order(smoke_root, raw):
    train = formats.load("synthpedes", smoke_root, verbose=False)["train"]
    orig = sorted({r["id"] for r in raw if r["split"] == "train"})
    assert sorted({r.pid for r in train}) == list(range(len(orig)))
    assert all(orig[r.pid] == r.orig_id for r in train)


def test_load_prints_the_split_table(smoke_root, capsys, raw):
    formats.load("synthpedes", smoke_root)
    out = capsys.readouterr().out
    n_test = [r for r in raw if r["split"] == "test"]
    row = next(line for line in out.splitlines() if line.startswith("test"))
    assert row.split()[1:] == [str(len({r["id"] for r in n_test})), str(len(n_test)),
                              str(sum(len(r["captions"]) for r in n_test))]


# --- bad input -----------------------------------------------------------------------------------
@pytest.fixture
def tiny(tmp_path, smoke_root, raw):
    """A three-record CUHK-PEDES folder whose annotation each test corrupts."""
    root = tmp_path / "cuhk"
    records = [r for r in raw if r["split"] == "train"][:2] + [r for r in raw if r["split"] == "test"][:1]
    records = json.loads(json.dumps(records))  # each test corrupts its own copy
    for r in records:
        (root / "imgs" / r["file_path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(smoke_root / "imgs" / r["file_path"], root / "imgs" / r["file_path"])
    (root / "reid_raw.json").write_text(json.dumps(records))
    return root, records


def _write(root, records):
    (root / "reid_raw.json").write_text(json.dumps(records))


def test_missing_annotation_file_names_the_file_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"reid_raw\.json not found.*imgs"):
        formats.load("cuhk-pedes", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data_captions\.json"):
        formats.load("rstpreid", tmp_path)


def test_malformed_json_reports_file_line_and_column(tiny):
    root, _ = tiny
    (root / "reid_raw.json").write_text('[{"id": 1,\n "captions": [}]')
    with pytest.raises(DatasetError, match=r"reid_raw\.json: malformed JSON at line 2"):
        formats.load("cuhk-pedes", root)


@pytest.mark.parametrize("captions", [[], ["", "   "], None])
def test_record_without_captions_is_named(tiny, captions):
    root, records = tiny
    records[1]["captions"] = captions
    if captions is None:
        del records[1]["captions"]
    _write(root, records)
    with pytest.raises(DatasetError, match=rf"record 1 \({records[1]['file_path']}\).*caption"):
        formats.load("cuhk-pedes", root)


def test_missing_and_undecodable_images_are_counted_and_named_before_training(tiny):
    root, records = tiny
    (root / "imgs" / records[0]["file_path"]).unlink()
    (root / "imgs" / records[2]["file_path"]).write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"2 of 3 images") as err:
        formats.load("cuhk-pedes", root)
    assert records[0]["file_path"] in str(err.value) and "missing" in str(err.value)
    assert records[2]["file_path"] in str(err.value) and "cannot decode" in str(err.value)


def test_truncated_image_passes_the_header_check_but_not_a_full_decode(tiny):
    root, records = tiny
    path = root / "imgs" / records[0]["file_path"]
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DatasetError, match=r"1 of 3 images"):
        formats.load("cuhk-pedes", root, check="decode", verbose=False)


def test_empty_captions_are_dropped_and_non_ascii_ones_normalised(tiny):
    root, records = tiny
    records[0]["captions"] = ["", "A woman in a caf\u00e9\u2019s red co\u00e4t  with\u00a0boots."]
    _write(root, records)
    with pytest.warns(UserWarning) as warned:
        splits = formats.load("cuhk-pedes", root, verbose=False)
    assert splits["train"][0].captions == ["A woman in a cafe's red coat with boots."]
    messages = " ".join(str(w.message) for w in warned)
    assert "1 empty caption" in messages and "non-ASCII" in messages


def test_records_with_missing_fields_or_unknown_splits_are_named(tiny):
    root, records = tiny
    del records[2]["id"]
    _write(root, records)
    with pytest.raises(DatasetError, match=r"record 2 .* no 'id' field"):
        formats.load("cuhk-pedes", root)
    records[2]["id"] = 5
    records[2]["split"] = "query"
    _write(root, records)
    with pytest.raises(DatasetError, match=r"record 2 .*split 'query'"):
        formats.load("cuhk-pedes", root)


def test_annotation_that_is_not_a_list_is_rejected(tiny):
    root, _ = tiny
    (root / "reid_raw.json").write_text('{"images": []}')
    with pytest.raises(DatasetError, match="expected a JSON list"):
        formats.load("cuhk-pedes", root)


def test_unknown_dataset_name_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="rstpreid"):
        formats.load("market", tmp_path)


def test_load_without_a_root_says_where_synthpedes_comes_from():
    with pytest.raises(ValueError, match="ensure"):
        formats.load("synthpedes", None)

"""Probes of "nothing silently wrong" for the data: each replays an input that used to load (or
render) without a word and is now refused with one line naming the file, the record and the fix,
or gives an exact result."""
import json
import os
import re
import shutil

import pytest

from tbpr.data import formats
from tbpr.data.formats import DatasetError
from tbpr.synthpedes import render as S


@pytest.fixture(scope="module")
def raw(smoke_root):
    return json.loads((smoke_root / "reid_raw.json").read_text())


@pytest.fixture
def tiny(tmp_path, smoke_root, raw):
    """A CUHK-PEDES folder of four records (train: two people, val: one, test: one)."""
    root = tmp_path / "cuhk"
    train = [r for r in raw if r["split"] == "train"]
    train = [train[0], next(r for r in train if r["id"] != train[0]["id"])]
    pick = train + [next(r for r in raw if r["split"] == s) for s in ("val", "test")]
    records = [{k: r[k] for k in ("id", "file_path", "captions", "split")} for r in pick]
    for r in records:
        (root / "imgs" / r["file_path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(smoke_root / "imgs" / r["file_path"], root / "imgs" / r["file_path"])
    _write(root, records)
    return root, records


def _write(root, records):
    (root / "reid_raw.json").write_text(json.dumps(records, ensure_ascii=False))


def _refused(root, pattern):
    with pytest.raises(DatasetError, match=pattern) as err:
        formats.load("cuhk-pedes", root, verbose=False)
    assert "\n" not in str(err.value), "the error is one line"
    return str(err.value)


# --- 1. identity ids -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [1000.2, 1000.7, 1000.0, True, False])
def test_float_and_boolean_ids_are_refused_naming_the_record(tiny, bad):
    root, records = tiny
    records[1]["id"] = bad
    _write(root, records)
    kind = "boolean" if isinstance(bad, bool) else "float"
    _refused(root, rf"reid_raw\.json: record 1 \({records[1]['file_path']}\) has the {kind} id")


def test_ids_mixing_integers_and_strings_are_refused_naming_two_records(tiny):
    root, records = tiny
    records[0]["id"], records[1]["id"] = 7, "7"  # one person or two? the file does not say
    _write(root, records)
    message = _refused(root, r"ids mix JSON integers .* and strings")
    assert f"record 0 ({records[0]['file_path']})" in message
    assert f"record 1 ({records[1]['file_path']})" in message


def test_string_ids_load_as_their_numbers_but_two_spellings_of_one_number_are_refused(tiny):
    root, records = tiny
    want = [r["id"] for r in records]
    for r in records:
        r["id"] = str(r["id"])
    _write(root, records)
    splits = formats.load("cuhk-pedes", root, verbose=False)
    assert [r.orig_id for s in ("train", "val", "test") for r in splits[s]] == want
    records[1]["id"] = f"00{records[0]['id']}"  # "1" and "001": int() would merge them
    _write(root, records)
    _refused(root, rf"record 1 .* has id '{records[1]['id']}' and record 0 .* has id "
                   rf"'{records[0]['id']}', the same number spelled twice")


# --- 2. duplicate records ------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same split", "other split", "spelled ./"])
def test_an_image_listed_twice_is_refused_naming_the_path(tiny, where):
    root, records = tiny
    if where == "same split":
        records[1]["file_path"] = records[0]["file_path"]
    elif where == "other split":
        records[3]["file_path"] = records[0]["file_path"]
    else:
        records[1]["file_path"] = "./" + records[0]["file_path"]
    _write(root, records)
    i = 1 if where != "other split" else 3
    _refused(root, rf"record {i} .*lists the image '(\./)?{records[0]['file_path']}' again, after "
                   rf"record 0 .*\(train\); each image must appear once")


# --- 3. identities shared by train and val/test --------------------------------------------------
@pytest.mark.parametrize("split", ["val", "test"])
def test_an_identity_in_train_and_in_val_or_test_is_refused_naming_both(tiny, split):
    root, records = tiny
    i = 2 if split == "val" else 3
    records[i]["id"] = records[0]["id"]
    _write(root, records)
    _refused(root, rf"identity {records[0]['id']} is in train \(record 0 .*\) and in {split} "
                   rf"\(record {i} .*\).*splits by identity")


def test_val_and_test_may_share_an_identity_each_is_evaluated_on_its_own(tiny):
    root, records = tiny
    records[3]["id"] = records[2]["id"]
    _write(root, records)
    splits = formats.load("cuhk-pedes", root, verbose=False)
    assert splits["val"][0].orig_id == splits["test"][0].orig_id == records[2]["id"]
    # the rule is not the old silence: train and test sharing the same id is refused
    records[0]["id"] = records[2]["id"]
    _write(root, records)
    _refused(root, r"is in train")


# --- 4. paths outside imgs/ ----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_an_image_path_leaving_imgs_is_refused_naming_the_record(tiny, how):
    root, records = tiny
    outside = root / "outside.jpg"  # a real image, so only the path rule can stop it
    shutil.copy(root / "imgs" / records[0]["file_path"], outside)
    records[0]["file_path"] = "../outside.jpg" if how == "dotdot" else str(outside)
    _write(root, records)
    what = "has a '\\.\\.' component" if how == "dotdot" else "is absolute"
    _refused(root, rf"record 0 \(.*outside\.jpg\) has file_path .*, which {what} and would read "
                   rf"outside .*imgs")


# --- 5. captions that cleaning empties -----------------------------------------------------------
def test_captions_emptied_by_ascii_cleaning_are_named_with_record_and_index(tiny):
    root, records = tiny
    records[0]["captions"] = ["\u4e00\u4e2a\u7a7f\u7ea2\u8272\u5916\u5957\u7684\u5973\u4eba",
                              "A woman in a red coat."]
    records[1]["captions"] = ["A man in blue jeans.", "\U0001f600\U0001f600"]
    _write(root, records)
    with pytest.warns(UserWarning, match="dropped 2 empty caption") as warned:
        splits = formats.load("cuhk-pedes", root, verbose=False)
    assert [r.captions for r in splits["train"]] == [["A woman in a red coat."],
                                                    ["A man in blue jeans."]]
    message = next(str(w.message) for w in warned if "dropped" in str(w.message))
    assert f"record 0 ({records[0]['file_path']}) caption 0" in message
    assert f"record 1 ({records[1]['file_path']}) caption 1" in message
    assert "non-English" in message and "translate" in message and "\n" not in message


def test_a_record_whose_only_caption_is_not_english_says_so(tiny):
    root, records = tiny
    records[2]["captions"] = ["\u7a7f\u9ed1\u8272\u88e4\u5b50"]
    _write(root, records)
    _refused(root, rf"record 2 \({records[2]['file_path']}\) has no \(non-empty\) captions "
                   rf"\(.*empty once cleaned to ASCII.*non-English.*translate")


# --- 6. images corrupt past their header ---------------------------------------------------------
def test_an_image_truncated_past_its_header_fails_the_default_check(tiny):
    root, records = tiny
    path = root / "imgs" / records[1]["file_path"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # header intact
    _refused(root, rf"1 of 4 images .* {re.escape(str(path))} \(cannot decode: .*\); restore them")


def test_image_verdicts_are_cached_by_size_and_mtime(tiny, monkeypatch):
    root, records = tiny
    formats.load("cuhk-pedes", root, verbose=False)
    cache = list((formats.cache_dir() / "image_checks").glob("*.json"))
    assert any(json.loads(c.read_text())["annotation"] == str(root / "reid_raw.json")
               for c in cache)
    decoded = []
    real = formats._decode
    monkeypatch.setattr(formats, "_decode", lambda p: decoded.append(p) or real(p))
    formats.load("cuhk-pedes", root, verbose=False)
    assert decoded == []  # warm: only stats
    path = root / "imgs" / records[2]["file_path"]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    formats.load("cuhk-pedes", root, verbose=False)
    assert decoded == [str(path)]  # a touched file is decoded again, the others are not
    path.write_bytes(path.read_bytes()[: st.st_size // 2])  # and a broken one is caught
    _refused(root, rf"{re.escape(str(path))} \(cannot decode")


# --- 7. tbpr synth into a folder holding another seed --------------------------------------------
def _fake_render(profile, seed, out, workers=None, splits=None):
    out.mkdir(parents=True)
    (out / "reid_raw.json").write_text("[]")
    (out / S.GT_FILE).write_text(json.dumps({"profile": profile, "seed": seed,
                                             "version": S.VERSION}))
    return out


def test_synth_refuses_an_out_folder_that_holds_another_seed(tmp_path, smoke_root, capsys,
                                                             monkeypatch):
    out = tmp_path / "synth"
    shutil.copytree(smoke_root, out)
    with pytest.raises(SystemExit) as exited:
        S.main(["--profile", "smoke", "--out", str(out), "--seed", "5"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(out) in err and "smoke seed 0" in err
    assert "not smoke seed 5" in err and "--force" in err and "another folder" in err
    assert S.rendered_as(out)["seed"] == 0  # untouched
    monkeypatch.setattr(S, "render", _fake_render)
    assert S.main(["--profile", "smoke", "--out", str(out), "--seed", "5", "--force"]) == 0
    assert S.rendered_as(out) == {"profile": "smoke", "seed": 5, "version": S.VERSION}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # no temporary folder left


def test_synth_never_replaces_a_folder_that_is_not_synthpedes(tmp_path, monkeypatch):
    out = tmp_path / "CUHK-PEDES"
    out.mkdir()
    (out / "reid_raw.json").write_text("[]")
    monkeypatch.setattr(S, "render", _fake_render)
    for force in (False, True):
        with pytest.raises(FileExistsError,
                           match=rf"{re.escape(str(out))} holds a reid_raw\.json but no SynthPedes"):
            S.ensure("smoke", 0, out, force=force)
    assert sorted(p.name for p in out.iterdir()) == ["reid_raw.json"]

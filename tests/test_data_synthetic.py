"""SynthPedes: deterministic, cached, with the structure and ground truth the spec asks for."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tbpr.synthpedes import render as S


@pytest.fixture(scope="module")
def gt(smoke_root):
    return S.load_ground_truth(smoke_root)


def test_same_seed_renders_byte_identical_files_whatever_the_worker_count(smoke_root, tmp_path):
    again = S.render("smoke", 0, tmp_path / "again", workers=2)
    for name in ("reid_raw.json", S.GT_FILE):
        assert (again / name).read_bytes() == (smoke_root / name).read_bytes()
    first = sorted((smoke_root / "imgs").rglob("*.jpg"))[:5]
    for path in first:
        assert (again / path.relative_to(smoke_root)).read_bytes() == path.read_bytes()


def test_another_seed_renders_other_people():
    a, b = S.build_identities("smoke", 0), S.build_identities("smoke", 1)
    assert [p["attrs"] for p in a] != [p["attrs"] for p in b]


def test_ensure_returns_the_cached_root_without_rendering_again(smoke_root, monkeypatch):
    stamp = os.stat(smoke_root / "reid_raw.json").st_mtime_ns
    monkeypatch.setattr(S, "render", lambda *a, **k: pytest.fail("rendered twice"))
    assert S.ensure("smoke", 0) == smoke_root
    assert os.stat(smoke_root / "reid_raw.json").st_mtime_ns == stamp
    assert not list(smoke_root.parent.glob(".*tmp*")), "temporary render folder left behind"


def test_cuhk_layout_has_disjoint_splits_of_the_profile_sizes(smoke_root):
    records = json.loads((smoke_root / "reid_raw.json").read_text())
    ids = {s: {r["id"] for r in records if r["split"] == s} for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ids] == list(S.PROFILES["smoke"]["ids"])
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert min(min(v) for v in ids.values()) == 1  # 1-based like CUHK-PEDES
    for r in records:
        assert set(r) == {"split", "captions", "file_path", "processed_tokens", "id"}
        assert len(r["captions"]) == 2 and r["captions"][0] != r["captions"][1]
        assert (smoke_root / "imgs" / r["file_path"]).exists()
        with Image.open(smoke_root / "imgs" / r["file_path"]) as im:
            assert im.size == (128, 384)


def test_family_members_differ_from_their_founder_in_at_most_two_attributes(gt):
    people = sorted(gt.identities.items())
    founders, diffs = {}, []
    for pid, attrs in people:
        if attrs["family"] not in founders:
            founders[attrs["family"]] = attrs
            continue
        base = founders[attrs["family"]]
        diffs.append(sum(attrs[k] != base[k] for k in attrs if k not in ("family",)))
    assert diffs and max(diffs) <= 2
    assert np.mean([d >= 1 for d in diffs]) > .8
    sizes = np.bincount([a["family"] for a in gt.identities.values()])
    assert sizes.max() <= 6 and np.median(sizes) >= 3


def test_attribute_spans_point_at_words_of_their_region(gt, smoke_root):
    words = {"upper_colour": {w for c in S.COLOURS.values() for v in c[3] for w in v.split()} |
             {"dark", "light"}}
    n_attrs = []
    for (fp, i), cap in gt.captions.items():
        assert "".join(cap.tokens) == cap.text.replace(" ", "")
        assert len(cap.pos) == len(cap.tokens)
        groups = set()
        for start, end, attr, region in cap.attributes:
            span = cap.text[start:end].lower()
            assert span and span == span.strip()
            assert region in S.REGIONS + ("person",)
            if attr == "upper_colour":
                assert set(span.split()) <= words["upper_colour"], span
            if region != "person":
                groups.add(attr.split("_")[0])
        for start, end in cap.noun_phrases:
            assert cap.text[start:end].strip() == cap.text[start:end]
        n_attrs.append(len(groups))
    assert min(n_attrs) >= 3  # every caption mentions at least three attributes


def test_region_boxes_enclose_their_pixels_and_body_bands_are_ordered(gt):
    centres = {r: [] for r in ("head", "upper", "lower", "shoes")}
    for img in gt.images.values():
        mask = img.mask
        assert mask.shape == S.SIZE and .05 < mask.mean() < .6
        for region, (x0, y0, x1, y1) in img.regions.items():
            m = S.region_mask(img, region) if region not in ("upper", "lower") else \
                img.labels == S.REGION_CODES[region]
            ys, xs = np.nonzero(m)
            assert ys.min() == y0 and ys.max() + 1 == y1 and xs.min() == x0 and xs.max() + 1 == x1
            if region in centres:
                centres[region].append((y0 + y1) / 2)
    means = [np.mean(centres[r]) for r in ("head", "upper", "lower", "shoes")]
    assert means == sorted(means)


def test_region_mask_resizes_to_a_model_grid(gt):
    img = next(iter(gt.images.values()))
    small = S.region_mask(img, "person", size=(24, 8))
    assert small.shape == (24, 8) and small.dtype == bool
    assert abs(small.mean() - img.mask.mean()) < .1
    with pytest.raises(KeyError, match="unknown region"):
        S.region_mask(img, "tail")


def test_accessories_move_between_images_while_garments_stay_in_their_band(gt):
    bag_x = {}
    for img in gt.images.values():
        if "bag" in img.regions and gt.identities[img.id]["bag"] == "handbag":
            x0, _, x1, _ = img.regions["bag"]
            bag_x.setdefault(img.id, []).append((x0 + x1) / 2)
    spreads = [np.ptp(v) for v in bag_x.values() if len(v) > 1]
    assert spreads and max(spreads) > 30  # a handbag switches hands / sides with the view


def test_both_views_occur(gt):
    views = [img.view for img in gt.images.values()]
    assert {"front", "back"} == set(views)


def test_write_layout_rejects_unknown_format(smoke_root):
    with pytest.raises(ValueError, match="unknown format"):
        S.write_layout(smoke_root, "market1501")


def test_cli_main_reuses_a_rendered_out_folder_and_writes_the_requested_layout(tmp_path, smoke_root):
    out = tmp_path / "synth"
    shutil.copytree(smoke_root, out)
    assert S.main(["--profile", "smoke", "--out", str(out), "--format", "rstpreid"]) == 0
    assert (out / "data_captions.json").exists()


def test_ensure_refuses_a_non_empty_folder_that_is_not_synthpedes(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "render", lambda profile, seed, out, workers=None, splits=None: out.mkdir())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no SynthPedes"):
        S.ensure("smoke", 0, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary render left

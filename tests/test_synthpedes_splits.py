"""Rendering one split of SynthPedes alone (the explorer's cold start renders only the test gallery):
its files, records and ground truth must be the full render's, byte for byte, or a gallery read from
the split would differ from the one a run is evaluated on."""
import json
from pathlib import Path

import pytest

from tbpr.data.formats import load
from tbpr.synthpedes import GT_FILE, SPLITS, VERSION, ensure, ensure_split
from tbpr.synthpedes.render import render, rendered_as


def _files(root: Path, split: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for folder in ("imgs", "gt") for p in sorted((root / folder / split).iterdir())}


def test_a_split_alone_is_the_full_renders_split(tmp_path, smoke_root):
    part = render("smoke", 0, tmp_path / "test-only", splits=("test",))
    assert _files(part, "test") == _files(smoke_root, "test") != {}
    for split in ("train", "val"):
        assert not any((part / "imgs" / split).iterdir())
    records = json.loads((part / "reid_raw.json").read_text())
    full_records = json.loads((smoke_root / "reid_raw.json").read_text())
    assert records == [r for r in full_records if r["split"] == "test"]
    gt, full_gt = (json.loads((root / GT_FILE).read_text()) for root in (part, smoke_root))
    assert gt["images"] == {k: v for k, v in full_gt["images"].items() if k.startswith("test/")}
    assert gt["captions"] == {k: v for k, v in full_gt["captions"].items() if k.startswith("test/")}
    assert gt["identities"] == {k: v for k, v in full_gt["identities"].items() if v["split"] == "test"}
    assert "splits" not in full_gt and gt["splits"] == ["test"]
    test, full_test = (load("synthpedes", root, verbose=False)["test"] for root in (part, smoke_root))
    assert [(r.pid, r.file_path, r.captions) for r in test] == [(r.pid, r.file_path, r.captions) for r in full_test]


def test_a_part_is_never_taken_for_the_whole(tmp_path):
    part = render("smoke", 0, tmp_path / "part", splits=("val",))
    assert rendered_as(part) == {"profile": "smoke", "seed": 0, "version": VERSION, "splits": ["val"]}
    with pytest.raises(FileExistsError, match="val only"):
        ensure("smoke", 0, root=part)
    with pytest.raises(ValueError, match="splits="):
        render("smoke", 0, tmp_path / "none", splits=("dev",))
    assert SPLITS == ("train", "val", "test")


def test_ensure_split_prefers_the_full_render(tmp_path, monkeypatch, smoke_root):
    assert ensure_split("smoke", "test") == smoke_root  # the session's full render is in the cache
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path))
    root = ensure_split("smoke", "test")
    assert root.name == f"smoke-seed0-v{VERSION}-test" and rendered_as(root)["splits"] == ["test"]
    assert ensure_split("smoke", "test") == root  # rendered once
    full = ensure("smoke")
    assert ensure_split("smoke", "test") == full != root
    with pytest.raises(ValueError, match="split="):
        ensure_split("smoke", "dev")

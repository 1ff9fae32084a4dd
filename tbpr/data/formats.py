"""Readers for CUHK-PEDES, ICFG-PEDES, RSTPReid (and SynthPedes, written in the CUHK-PEDES layout).

    splits = load("cuhk-pedes", "/data/CUHK-PEDES")   # {"train": [Record], "val": [...], "test": [...]}

Where the files go (``root`` is the folder you pass):

| name | annotation file | images | splits |
|---|---|---|---|
| cuhk-pedes, synthpedes | ``root/reid_raw.json`` (``file_path``) | ``root/imgs/<file_path>`` | train/val/test |
| icfg-pedes | ``root/ICFG-PEDES.json`` (``file_path``) | ``root/imgs/<file_path>`` | train/test |
| rstpreid | ``root/data_captions.json`` (``img_path``) | ``root/imgs/<img_path>`` | train/val/test |

Training identities are remapped to 0..C-1 (``Record.pid``); val/test keep their dataset id.
Bad input raises ``DatasetError`` naming the file, the record and the fix, before any training.
"""
from __future__ import annotations

import json
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

FORMATS = {  # name -> (annotation file, image key, splits)
    "cuhk-pedes": ("reid_raw.json", "file_path", ("train", "val", "test")),
    "synthpedes": ("reid_raw.json", "file_path", ("train", "val", "test")),
    "icfg-pedes": ("ICFG-PEDES.json", "file_path", ("train", "test")),
    "rstpreid": ("data_captions.json", "img_path", ("train", "val", "test")),
}
_TYPOGRAPHIC = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                              "\u2013": "-", "\u2014": "-", "\u00a0": " ", "\u2026": "..."})


class DatasetError(ValueError):
    """Bad dataset files: the message names the file, the record and what to do."""


@dataclass
class Record:
    pid: int  # training identity 0..C-1 (train split) or the dataset id (val/test)
    image_path: Path
    captions: list[str]
    file_path: str  # path relative to imgs/, the key of the ground truth for SynthPedes
    orig_id: int


def clean_caption(text: str) -> str:
    """ASCII, single-spaced text: typographic quotes and dashes mapped, accents stripped."""
    text = unicodedata.normalize("NFKD", text.translate(_TYPOGRAPHIC))
    text = text.encode("ascii", "ignore").decode()
    return " ".join(text.split())


def _read_json(path: Path, name: str):
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {name} expects {FORMATS[name][0]} in the dataset root and the "
            f"images under {path.parent / 'imgs'}; pass the folder that holds them as root")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno} "
                           f"({err.msg}); re-download or repair the file") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err}); is this the annotation file?") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return data


def _captions(raw, path: Path, where: str, stats: dict) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise DatasetError(f"{path}: {where} has captions of type {type(raw).__name__}, "
                           f"expected a list of strings")
    out = []
    for c in raw:
        if not isinstance(c, str):
            raise DatasetError(f"{path}: {where} has a caption that is not a string: {c!r}")
        cleaned = clean_caption(c)
        stats["non_ascii"] += cleaned != " ".join(c.split())
        if cleaned:
            out.append(cleaned)
        else:
            stats["empty"] += 1
    if not out:
        raise DatasetError(f"{path}: {where} has no (non-empty) captions; add a caption or remove "
                           f"the record")
    return out


def check_images(paths: list[Path], how: str = "open", source: Path | None = None) -> None:
    """Raise one ``DatasetError`` listing every missing or unreadable image (with a count).

    ``how``: "exists", "open" (reads the header: catches truncated and non-image files) or "decode"
    (full decode, slower), or "none".
    """
    if how == "none":
        return
    bad = []
    for p in paths:
        if not p.is_file():
            bad.append(f"{p} (missing)")
        elif how in ("open", "decode"):
            try:
                with Image.open(p) as im:
                    if how == "decode":
                        im.load()
            except Exception as err:  # PIL raises many types for corrupt files
                bad.append(f"{p} (cannot decode: {type(err).__name__})")
    if bad:
        shown = "\n  ".join(bad[:10]) + ("\n  ..." if len(bad) > 10 else "")
        raise DatasetError(f"{len(bad)} of {len(paths)} images listed in {source} are missing or "
                           f"cannot be decoded:\n  {shown}\nrestore them or remove their records")


def split_statistics(splits: dict[str, list[Record]]) -> dict[str, dict[str, int]]:
    """ids / images / captions per split, as the papers' dataset tables report them."""
    return {name: {"ids": len({r.orig_id for r in recs}), "images": len(recs),
                   "captions": sum(len(r.captions) for r in recs)} for name, recs in splits.items()}


def format_statistics(stats: dict, title: str = "") -> str:
    lines = [title, f"{'split':<6} {'ids':>7} {'images':>8} {'captions':>9}"]
    lines += [f"{s:<6} {d['ids']:>7} {d['images']:>8} {d['captions']:>9}" for s, d in stats.items()]
    return "\n".join(line for line in lines if line)


def load(name: str, root, *, check: str = "open", verbose: bool = True) -> dict[str, list[Record]]:
    """Records per split of dataset ``name`` at ``root`` (see the module docstring for layouts)."""
    if name not in FORMATS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(FORMATS)}")
    if root is None:
        raise ValueError(f"root of {name} is None: pass the dataset folder (for SynthPedes, "
                         f"tbpr.synthpedes.ensure(profile) returns it)")
    root = Path(root).expanduser()
    ann_file, image_key, split_names = FORMATS[name]
    path = root / ann_file
    data = _read_json(path, name)
    stats = {"empty": 0, "non_ascii": 0}
    rows = {s: [] for s in split_names}
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DatasetError(f"{path}: record {i} is a {type(rec).__name__}, expected an object")
        where = f"record {i} ({rec.get(image_key, '?')})"
        for key in ("id", image_key, "captions", "split"):
            if key not in rec:
                raise DatasetError(f"{path}: {where} has no {key!r} field; {name} records need "
                                   f"id, {image_key}, captions and split")
        if rec["split"] not in rows:
            raise DatasetError(f"{path}: {where} has split {rec['split']!r}; {name} uses "
                               f"{list(split_names)}")
        try:
            orig_id = int(rec["id"])
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: {where} has a non-integer id {rec['id']!r}") from None
        rows[rec["split"]].append((orig_id, rec[image_key], _captions(rec["captions"], path,
                                                                        where, stats)))
    if stats["empty"]:
        warnings.warn(f"{path}: dropped {stats['empty']} empty caption(s)", stacklevel=2)
    if stats["non_ascii"]:
        warnings.warn(f"{path}: normalised {stats['non_ascii']} caption(s) with non-ASCII "
                      f"characters or irregular spacing", stacklevel=2)
    image_dir = root / "imgs"
    check_images([image_dir / fp for rs in rows.values() for _, fp, _ in rs], check, path)
    train_ids = {oid: k for k, oid in enumerate(sorted({oid for oid, _, _ in rows["train"]}))}
    splits = {s: [Record(pid=train_ids[oid] if s == "train" else oid, image_path=image_dir / fp,
                         captions=caps, file_path=fp, orig_id=oid) for oid, fp, caps in rs]
              for s, rs in rows.items()}
    splits.setdefault("val", [])
    if verbose:
        print(format_statistics(split_statistics(splits), f"{name} ({root})"))
    return splits

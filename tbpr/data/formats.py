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
What is refused (the published files and SynthPedes follow these rules, so a file that breaks one
is most likely damaged or hand-edited):

- an ``id`` that is not a JSON integer or a string of digits (a float would be truncated, so 1000.2
  and 1000.7 would merge; ``true`` would become 1); integer and string ids mixed in one file; two
  string spellings of one number ("12" and "0012");
- an image path that is absolute or has a ``..`` component (it would read outside ``imgs/``), or
  that appears twice (within a split or across splits);
- an identity in train and in val or test: every layout splits by identity (CUHK-PEDES
  11,003/1,000/1,000 ids, ICFG-PEDES 3,102/-/1,000, RSTPReid 3,701/200/200), so a shared id would
  put test people into training. Val and test may share ids: each is evaluated on its own.

Captions that are empty after cleaning to ASCII (blank, Chinese, emoji-only) are dropped with a
warning naming the first few (image path and caption index); a record left with none is refused.
Images are fully decoded before training (``check_images``), the verdict cached per file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image

from ..config import cache_dir

FORMATS = {  # name -> (annotation file, image key, splits)
    "cuhk-pedes": ("reid_raw.json", "file_path", ("train", "val", "test")),
    "synthpedes": ("reid_raw.json", "file_path", ("train", "val", "test")),
    "icfg-pedes": ("ICFG-PEDES.json", "file_path", ("train", "test")),
    "rstpreid": ("data_captions.json", "img_path", ("train", "val", "test")),
}
_DIGITS = re.compile(r"[0-9]+")
_SHOWN = 5  # records named in a warning
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
    out, emptied = [], []
    for k, c in enumerate(raw):
        if not isinstance(c, str):
            raise DatasetError(f"{path}: {where} has a caption that is not a string: {c!r}")
        cleaned = clean_caption(c)
        stats["non_ascii"] += bool(cleaned) and cleaned != " ".join(c.split())
        if cleaned:
            out.append(cleaned)
        else:
            stats["empty"].append((where, k, c))
            if c.strip():
                emptied.append(c)
    if not out:
        why = (f" (its {len(emptied)} non-blank caption(s) are empty once cleaned to ASCII, e.g. "
               f"{_short(emptied[0])}: non-English text or emoji; translate them to English)"
               if emptied else "")
        raise DatasetError(f"{path}: {where} has no (non-empty) captions{why}; add an English "
                           f"caption or remove the record")
    return out


def _short(text: str, n: int = 30) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def _empty_caption_warning(path: Path, empty: list) -> str:
    """One line: how many captions were dropped, the first few by record and index, the fix."""
    foreign = [(w, k, c) for w, k, c in empty if c.strip()]
    shown = ", ".join(f"{w} caption {k} {_short(c)}" for w, k, c in (foreign or empty)[:_SHOWN])
    more = len(foreign or empty) - _SHOWN
    kind = (f"{len(foreign)} of them non-English or emoji-only text that cleaning to ASCII empties"
            if foreign else "all blank")
    return (f"{path}: dropped {len(empty)} empty caption(s) ({kind}), e.g. {shown}"
            f"{f' and {more} more' if more > 0 else ''}; the models read English ASCII text: "
            f"translate or delete those captions in the file to silence this")


def _identity(value, path: Path, where: str) -> tuple[int, str]:
    """(id, "integer" | "string") of a record's ``id``; anything else is refused."""
    if isinstance(value, bool):
        raise DatasetError(f"{path}: {where} has the boolean id {json.dumps(value)}; ids must be "
                           f"integers (or strings of digits): write the person's id")
    if isinstance(value, float):
        raise DatasetError(f"{path}: {where} has the float id {value!r}; ids must be integers "
                           f"(a float would be truncated and merge people, e.g. 1000.2 and "
                           f"1000.7): write the person's integer id")
    if isinstance(value, int):
        return value, "integer"
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value), "string"
    raise DatasetError(f"{path}: {where} has a non-integer id {value!r}; ids must be integers "
                       f"(or strings of digits)")


def _image_path(value, path: Path, where: str, key: str, image_dir: Path) -> str:
    """The relative image path of a record, as written; refused when it would leave ``imgs/``."""
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{path}: {where} has {key} {value!r}; expected the image path "
                           f"relative to {image_dir}")
    parts = re.split(r"[/\\]", value)
    if value.startswith(("/", "\\")) or PureWindowsPath(value).drive or ".." in parts:
        what = "is absolute" if ".." not in parts else "has a '..' component"
        raise DatasetError(f"{path}: {where} has {key} {value!r}, which {what} and would read "
                           f"outside {image_dir}; write the path relative to imgs/ (move the "
                           f"image into imgs/ if it lives elsewhere)")
    return value


def _verdict_file(source: Path) -> Path:
    key = hashlib.sha256(os.path.abspath(source).encode()).hexdigest()[:16]
    return cache_dir() / "image_checks" / f"{key}.json"


def _read_verdicts(file: Path) -> dict:
    try:
        return json.loads(file.read_text())["ok"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_verdicts(file: Path, source: Path, ok: dict) -> None:
    """Best effort: an unwritable cache only makes the next check slow again."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"annotation": os.path.abspath(source), "ok": ok}))
        os.replace(tmp, file)
    except OSError:
        pass


def _decode(path: str) -> str | None:
    """None if every pixel of ``path`` decodes, else why not."""
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as err:  # PIL raises many types for corrupt files
        return f"cannot decode: {type(err).__name__}: {' '.join(str(err).split())}"
    return None


def check_images(paths: list[Path], how: str = "decode", source: Path | None = None,
                 workers: int | None = None) -> None:
    """Raise one one-line ``DatasetError`` naming the missing or undecodable images (with a count
    and the fix); a bad image is never skipped.

    ``how``: "decode" (default) decodes every pixel, so a file corrupt or truncated past its header
    is caught, on ``workers`` threads (PIL decodes without the GIL); each good image's verdict is
    cached by (path, size, mtime_ns) in ``$TBPR_CACHE/image_checks/`` (keyed by the annotation file
    ``source``), so a second load only stats the files. "open" reads the header only (misses
    corruption past it), "exists" only looks for the file, "none" checks nothing.
    """
    if how == "none":
        return
    if how not in ("exists", "open", "decode"):
        raise ValueError(f"unknown image check {how!r}; choose decode, open, exists or none")
    bad, todo, ok = [], [], {}
    cache = _verdict_file(source) if how == "decode" and source is not None else None
    known = _read_verdicts(cache) if cache else {}
    for p in paths:
        key = os.path.abspath(p)
        try:
            st = os.stat(key)
        except OSError:
            bad.append(f"{p} (missing)")
            continue
        if not os.path.isfile(key):
            bad.append(f"{p} (missing: not a file)")
            continue
        stamp = [st.st_size, st.st_mtime_ns]
        if how == "exists" or known.get(key) == stamp:
            ok[key] = stamp
        elif how == "open":
            try:
                with Image.open(key):
                    pass
                ok[key] = stamp
            except Exception as err:  # PIL raises many types for corrupt files
                bad.append(f"{p} (cannot decode: {type(err).__name__})")
        else:
            todo.append((p, key, stamp))
    if todo:
        workers = workers or min(16, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            for (p, key, stamp), why in zip(todo, pool.map(_decode, [k for _, k, _ in todo])):
                if why is None:
                    ok[key] = stamp
                else:
                    bad.append(f"{p} ({why})")
    if cache and ok != {k: known.get(k) for k in ok}:
        _write_verdicts(cache, source, ok)
    if bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DatasetError(f"{len(bad)} of {len(paths)} images listed in {source} are missing or "
                           f"cannot be decoded: {shown}; restore them from the dataset archive or "
                           f"remove their records")


def split_statistics(splits: dict[str, list[Record]]) -> dict[str, dict[str, int]]:
    """ids / images / captions per split, as the papers' dataset tables report them."""
    return {name: {"ids": len({r.orig_id for r in recs}), "images": len(recs),
                   "captions": sum(len(r.captions) for r in recs)} for name, recs in splits.items()}


def format_statistics(stats: dict, title: str = "") -> str:
    lines = [title, f"{'split':<6} {'ids':>7} {'images':>8} {'captions':>9}"]
    lines += [f"{s:<6} {d['ids']:>7} {d['images']:>8} {d['captions']:>9}" for s, d in stats.items()]
    return "\n".join(line for line in lines if line)


def load(name: str, root, *, check: str = "decode",
         verbose: bool = True) -> dict[str, list[Record]]:
    """Records per split of dataset ``name`` at ``root`` (see the module docstring for layouts
    and for what is refused). ``check``: how the images are verified, see ``check_images``."""
    if name not in FORMATS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(FORMATS)}")
    if root is None:
        raise ValueError(f"root of {name} is None: pass the dataset folder (for SynthPedes, "
                         f"tbpr.synthpedes.ensure(profile) returns it)")
    root = Path(root).expanduser()
    ann_file, image_key, split_names = FORMATS[name]
    path = root / ann_file
    data = _read_json(path, name)
    image_dir = root / "imgs"
    stats = {"empty": [], "non_ascii": 0}
    rows = {s: [] for s in split_names}
    kinds: dict[str, str] = {}  # "integer" | "string" -> the first record with such an id
    spelled: dict[int, tuple[str, str]] = {}  # id -> (first string spelling, its record)
    seen: dict[str, tuple[str, str]] = {}  # normalised image path -> (record, split)
    first: dict[tuple[str, int], str] = {}  # (split, id) -> first record
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DatasetError(f"{path}: record {i} is a {type(rec).__name__}, expected an object")
        where = f"record {i} ({rec.get(image_key, '?')})"
        for key in ("id", image_key, "captions", "split"):
            if key not in rec:
                raise DatasetError(f"{path}: {where} has no {key!r} field; {name} records need "
                                   f"id, {image_key}, captions and split")
        split = rec["split"]
        if not isinstance(split, str) or split not in rows:
            raise DatasetError(f"{path}: {where} has split {split!r}; {name} uses "
                               f"{list(split_names)}")
        orig_id, kind = _identity(rec["id"], path, where)
        kinds.setdefault(kind, where)
        if len(kinds) > 1:
            raise DatasetError(f"{path}: ids mix JSON integers ({kinds['integer']}) and strings "
                               f"({kinds['string']}), so 5 and \"5\" could be one person or two; "
                               f"write every id as an integer")
        if kind == "string":
            other, other_where = spelled.setdefault(orig_id, (rec["id"], where))
            if other != rec["id"]:
                raise DatasetError(f"{path}: {where} has id {rec['id']!r} and {other_where} has "
                                   f"id {other!r}, the same number spelled twice; write each "
                                   f"person's id one way")
        fp = _image_path(rec[image_key], path, where, image_key, image_dir)
        norm = PurePosixPath(fp.replace("\\", "/")).as_posix()
        if norm in seen:
            before, before_split = seen[norm]
            raise DatasetError(f"{path}: {where} ({split}) lists the image {fp!r} again, after "
                               f"{before} ({before_split}); each image must appear once: merge "
                               f"their captions into one record and delete the other")
        seen[norm] = (where, split)
        first.setdefault((split, orig_id), where)
        rows[split].append((orig_id, fp, _captions(rec["captions"], path, where, stats)))
    train = {oid for oid, _, _ in rows["train"]}
    for split in split_names[1:]:
        shared = sorted(train & {oid for oid, _, _ in rows[split]})
        if shared:
            x = shared[0]
            more = f" (and {len(shared) - 1} more ids)" if len(shared) > 1 else ""
            raise DatasetError(f"{path}: identity {x} is in train ({first['train', x]}) and in "
                               f"{split} ({first[split, x]}){more}; {name} splits by identity, so "
                               f"this would train on {split} people: move all of an identity's "
                               f"records into one split")
    if stats["empty"]:
        warnings.warn(_empty_caption_warning(path, stats["empty"]), stacklevel=2)
    if stats["non_ascii"]:
        warnings.warn(f"{path}: normalised {stats['non_ascii']} caption(s) with non-ASCII "
                      f"characters or irregular spacing", stacklevel=2)
    check_images([image_dir / fp for rs in rows.values() for _, fp, _ in rs], check, path)
    train_ids = {oid: k for k, oid in enumerate(sorted({oid for oid, _, _ in rows["train"]}))}
    splits = {s: [Record(pid=train_ids[oid] if s == "train" else oid, image_path=image_dir / fp,
                         captions=caps, file_path=fp, orig_id=oid) for oid, fp, caps in rs]
              for s, rs in rows.items()}
    splits.setdefault("val", [])
    if verbose:
        print(format_statistics(split_statistics(splits), f"{name} ({root})"))
    return splits

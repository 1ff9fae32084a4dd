"""Everything tbpr keeps on disk between runs, in one place: the cache location, the code version
that keys every cached result, and the per-item feature cache.

    $TBPR_CACHE (default ~/.cache/tbpr)/
      synthpedes/<profile>-seed<s>-v<version>/   rendered benchmarks
      experiments/<model>-<profile>-<hash>/      trained runs and their results
      features/<namespace>/<key>/*.pt            per-item features of frozen pretrained encoders
      pretrain/<namespace>/<key>/                pre-trained weights made here
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from .config import cache_dir

PACKAGE_DIR = Path(__file__).parent
PAPERS = ("mia", "ssan", "lgur", "ivt", "cada", "irra")  # the papers in the order they appeared; IRRA the reference
# modules that cannot change a trained model or its metrics: editing them keeps the cache valid
PRESENTATION = {"bench.py", "cli.py", "explorer.py", "progress.py", "reproduce.py", "shipped", "summary.py", "viz"}
# the zoo's pre-training recipes and probes: a run depends on a member's weights, which its cache key
# holds by sha256 (zoo.fingerprints), not on the code that made them
ZOO_MAKING = {"pretrain"}


@functools.lru_cache(maxsize=None)
def code_version(model: str | None = None) -> str:
    """Hash of the library source a run of ``model`` depends on: a result computed by other code is
    never reused. Another paper's folder is left out, so finishing one paper does not invalidate
    the cached runs of the others."""
    others = {f"papers/{m}" for m in PAPERS if m != model}
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        rel = path.relative_to(PACKAGE_DIR)
        if path.suffix in {".py", ".yaml", ".json"} and "__pycache__" not in rel.parts \
                and rel.parts[0] not in PRESENTATION | ZOO_MAKING and "/".join(rel.parts[:2]) not in others:
            digest.update(rel.as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def data_fingerprint(root) -> str:
    """What a run's result depends on in a dataset folder, cheaply: the bytes of its annotation
    files (``*.json`` at the top) and the path and size of every image under it. A run cache keyed
    by it can never return a result computed on other data (a cut test split, a replaced image)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder; pass the folder "
                                "holding the dataset's annotation file and images")
    return _fingerprint(str(root), _annotation_signature(root))


def _annotation_signature(root: Path) -> tuple:
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.glob("*.json")))


@functools.lru_cache(maxsize=16)
def _fingerprint(root: str, signature: tuple) -> str:
    digest = hashlib.sha256()
    for name, *_ in signature:
        digest.update(name.encode())
        digest.update((Path(root) / name).read_bytes())
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                path = os.path.join(dirpath, name)
                digest.update(f"{os.path.relpath(path, root)}|{os.path.getsize(path)}\n".encode())
    return digest.hexdigest()[:16]


def write_json(path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temp file of this process, then a rename), so
    a crash or a concurrent writer never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path) -> dict | None:
    """The JSON object at ``path``; None if it is missing, or if it cannot be read (then it is
    reported and removed, so the entry is recomputed instead of failing every later run)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
        if not isinstance(value, dict):
            raise ValueError(f"expected an object, found {type(value).__name__}")
        return value
    except (OSError, UnicodeDecodeError, ValueError) as err:
        warnings.warn(f"cache entry {path} is unreadable ({err}); removed, it will be recomputed",
                      stacklevel=2)
        path.unlink(missing_ok=True)
        return None


@contextlib.contextmanager
def locked(folder):
    """Hold an exclusive lock on ``folder`` (a run's cache directory) for the block: a second
    process asking for the same run waits, then finds the first one's result in the cache."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_SHARED_FEATURES: dict[tuple[str, str], dict[str, torch.Tensor]] = {}


class FeatureCache:
    """Per-item outputs of a frozen pretrained encoder (e.g. a caption's token features), shared by
    every model in the process and persisted on disk as shards under ``features/<namespace>/<key>``.
    Without a ``key`` (an encoder that is not reproducible, e.g. randomly initialised) it lives in
    memory only. Anything stored must be a function of its item alone (no padding to other items),
    or a run's result would depend on the cache's history."""

    def __init__(self, namespace: str, key: str | None):
        self.dir = cache_dir() / "features" / namespace / key if key else None
        self.store = _SHARED_FEATURES.setdefault((namespace, key), {}) if key else {}
        self._loaded = False

    def _load_disk(self) -> None:
        self._loaded = True
        if self.dir is None or not self.dir.exists():
            return
        for shard in sorted(self.dir.glob("*.pt")):
            self.store.update(torch.load(shard, map_location="cpu", weights_only=True))

    def missing(self, items: list[str]) -> list[str]:
        if not self._loaded:
            self._load_disk()
        return list(dict.fromkeys(c for c in items if c not in self.store))

    def add(self, feats: dict[str, torch.Tensor]) -> None:
        self.store.update(feats)
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            name = hashlib.sha1("\n".join(sorted(feats)).encode()).hexdigest()[:20]
            tmp = self.dir / f".{name}.{os.getpid()}.tmp"
            torch.save(feats, tmp)
            tmp.replace(self.dir / f"{name}.pt")

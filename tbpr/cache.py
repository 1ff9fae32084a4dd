"""Everything tbpr keeps on disk between runs, in one place: the cache location, the code version
that keys every cached result, and the per-item feature cache.

    $TBPR_CACHE (default ~/.cache/tbpr)/
      synthpedes/<profile>-seed<s>-v<version>/   rendered benchmarks
      experiments/<model>-<profile>-<hash>/      trained runs and their results
      features/<namespace>/<key>/*.pt            per-item features of frozen pretrained encoders
      pretrain/<namespace>/<key>/                pre-trained weights made here
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).parent
PAPERS = ("mia", "ssan", "lgur", "ivt", "cada")  # the papers, in the order they appeared
# modules that cannot change a trained model or its metrics: editing them keeps the cache valid
PRESENTATION = {"bench.py", "cli.py", "explorer.py", "reproduce.py", "summary.py", "viz"}


def cache_dir() -> Path:
    """Root of everything tbpr caches: ``$TBPR_CACHE``, default ``~/.cache/tbpr``."""
    return Path(os.environ.get("TBPR_CACHE", Path.home() / ".cache" / "tbpr"))


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
                and rel.parts[0] not in PRESENTATION and "/".join(rel.parts[:2]) not in others:
            digest.update(rel.as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


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

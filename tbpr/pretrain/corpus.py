"""A look at the zoo's pre-training corpora without rendering them whole.

``pretrain`` (12,000 images, ~105 s to render) and ``pretrain-shifted`` (16,000 images, ~240 s) are
rendered once, for ``tbpr pretrain``. To show a few of their people (notebook 00) ``sample`` reads
them from the cached render when it is there, and otherwise renders only those people in memory:
each identity is drawn from its own seeded stream, so these are the same bytes the full render
writes (only the identity list, which skips every benchmark identity, must be built: ~10 s).
"""
from __future__ import annotations

import io
import json

from PIL import Image

from ..synthpedes import render as R


def cached_root(profile: str, seed: int = 0):
    """The folder ``tbpr.synthpedes.ensure(profile, seed)`` renders into, or None if not rendered yet."""
    root = R.cache_root(profile, seed)
    return root if (root / "reid_raw.json").exists() else None


def _from_cache(root, n: int) -> list[dict]:
    first = {}
    for rec in sorted(json.loads((root / "reid_raw.json").read_text()), key=lambda r: r["file_path"]):
        first.setdefault(rec["id"], rec)
        if len(first) == n:
            break
    return [{"id": r["id"], "file_path": r["file_path"], "caption": r["captions"][0],
             "image": Image.open(root / "imgs" / r["file_path"]).convert("RGB")} for r in first.values()]


def _in_memory(profile: str, seed: int, n: int) -> list[dict]:
    spec = R.PROFILES[profile]
    people = R.build_identities(profile, seed)[:n]
    out = []
    for person in people:  # the unit of work of R.render: the same seeds, so the same bytes
        first = R._render_person((seed, person, spec["captions"], spec.get("look", "benchmark"),
                                  spec.get("captions_style", "benchmark")))[0]
        out.append({"id": person["id"], "file_path": first["file_path"], "caption": first["captions"][0],
                    "image": Image.open(io.BytesIO(first["jpeg"])).convert("RGB")})
    return out


def sample(profile: str, n: int = 6, seed: int = 0) -> tuple[list[dict], str]:
    """The first image and its first caption of each of the corpus's first ``n`` people, as
    ``{"id", "file_path", "caption", "image" (PIL)}``, and where they came from (``cache`` or
    ``rendered in memory``)."""
    if profile not in R.PROFILES or not R.PROFILES[profile].get("corpus"):
        corpora = [p for p, spec in R.PROFILES.items() if spec.get("corpus")]
        raise ValueError(f"{profile!r} is not a pre-training corpus; choose one of {corpora}")
    root = cached_root(profile, seed)
    return (_from_cache(root, n), "cache") if root else (_in_memory(profile, seed, n), "rendered in memory")

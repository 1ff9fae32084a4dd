"""How hard is a benchmark? A floor (a simple baseline) and, for SynthPedes, a ceiling.

Floor, ``baseline_rank1``: text as bag of words (train vocabulary), images as colour histograms of
six horizontal stripes; a regularised CCA learned on the training pairs maps both into one space and
test captions rank test images by cosine similarity there. A trained model must beat it widely.
Ceiling, ``text_oracle_rank1``: what perfect perception reaches given what captions leave out.

    python -m tbpr.synthpedes.baseline ROOT [--dataset synthpedes]
"""
from __future__ import annotations

import argparse

import numpy as np

from ..data import formats
from ..data.text import Vocabulary, word_tokenize
from ..data.transforms import decode_image
from ..evaluate import retrieval_metrics
from .render import load_ground_truth

STRIPES, BINS = 6, 4  # 6 body bands, 4×4×4 RGB bins each


def image_features(paths) -> np.ndarray:
    feats = []
    for p in paths:
        img = decode_image(p, (96, 32)).numpy()  # [3, 96, 32] uint8
        q = (img // (256 // BINS)).astype(np.int64)
        code = (q[0] * BINS + q[1]) * BINS + q[2]  # [96, 32] colour bin per pixel
        rows = np.array_split(code, STRIPES, axis=0)
        hist = np.concatenate([np.bincount(r.ravel(), minlength=BINS ** 3) for r in rows])
        feats.append(np.sqrt(hist / hist.sum()))
    return np.asarray(feats, np.float64)


def text_features(captions, vocab: Vocabulary) -> np.ndarray:
    out = np.zeros((len(captions), len(vocab)))
    for i, c in enumerate(captions):
        for w in word_tokenize(c):
            out[i, vocab.stoi.get(w, vocab.UNK)] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


def fit_cca(x: np.ndarray, y: np.ndarray, dim: int = 64, reg: float = 1e-1):
    """Projections (Wx, Wy) and means of a ridge-regularised CCA between paired rows of x and y."""
    mx, my = x.mean(0), y.mean(0)
    x, y = x - mx, y - my
    cxx = x.T @ x / len(x) + reg * np.eye(x.shape[1]) * np.trace(x.T @ x) / len(x) / x.shape[1]
    cyy = y.T @ y / len(y) + reg * np.eye(y.shape[1]) * np.trace(y.T @ y) / len(y) / y.shape[1]
    kx, ky = _inv_sqrt(cxx), _inv_sqrt(cyy)
    u, s, vt = np.linalg.svd(kx @ (x.T @ y / len(x)) @ ky)
    dim = min(dim, len(s))
    scale = s[:dim] ** 2  # weight canonical directions by their correlation
    return (kx @ u[:, :dim] * scale, mx), (ky @ vt[:dim].T * scale, my)


def _project(feats, proj):
    w, mean = proj
    z = (feats - mean) @ w
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def baseline_rank1(root, dataset: str = "synthpedes", split: str = "test", dim: int = 64) -> dict:
    """R@1/5/10 and mAP (percent) of the BoW-vs-colour-histogram CCA matcher on ``split``."""
    splits = formats.load(dataset, root, verbose=False)
    train, test = splits["train"], splits[split]
    vocab = Vocabulary.build([c for r in train for c in r.captions], min_count=1, unknown="token")
    train_img = image_features([r.image_path for r in train])
    x = text_features([c for r in train for c in r.captions], vocab)
    y = np.repeat(train_img, [len(r.captions) for r in train], axis=0)
    text_proj, image_proj = fit_cca(x, y, dim)
    queries = _project(text_features([c for r in test for c in r.captions], vocab), text_proj)
    gallery = _project(image_features([r.image_path for r in test]), image_proj)
    query_pids = [r.pid for r in test for _ in r.captions]
    metrics = retrieval_metrics(queries @ gallery.T, query_pids, [r.pid for r in test])
    return {k: float(v) for k, v in metrics.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root")
    ap.add_argument("--dataset", default="synthpedes")
    args = ap.parse_args()
    print(baseline_rank1(args.root, args.dataset))


# attribute named in a caption span -> identity attribute it pins down
_ORACLE_KEYS = {"gender": "gender", "age": "age", "hair_colour": "hair_colour",
                "hair_length": "hair_length", "hat_type": "hat", "hat_colour": "hat_colour",
                "glasses": "glasses", "upper_type": "upper", "upper_colour": "upper_colour",
                "upper_pattern": "pattern", "upper_sleeve": "sleeve", "lower_type": "lower",
                "lower_colour": "lower_colour", "shoes_type": "shoes",
                "shoes_colour": "shoes_colour", "bag_type": "bag", "bag_colour": "bag_colour",
                "held_type": "held", "held_colour": "held_colour"}


def text_oracle_rank1(root, split: str = "test") -> float:
    """Expected R@1 (percent) of a reader that knows every image's true attributes and ranks
    at random among the images consistent with what the caption says: the ceiling set by what
    captions leave out (family members that differ only in unmentioned details stay tied)."""
    gt = load_ground_truth(root)
    records = formats.load("synthpedes", root, verbose=False)[split]
    gallery = [gt.identities[r.orig_id] for r in records]
    ids = np.array([r.orig_id for r in records])
    hits = []
    for r in records:
        me = gt.identities[r.orig_id]
        for i in range(len(r.captions)):
            keys = {_ORACLE_KEYS[a[2]] for a in gt.captions[(r.file_path, i)].attributes
                    if a[2] in _ORACLE_KEYS}
            consistent = np.array([all(g[k] == me[k] for k in keys) for g in gallery])
            hits.append((ids[consistent] == r.orig_id).sum() / consistent.sum())
    return 100 * float(np.mean(hits))

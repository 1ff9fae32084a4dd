"""Training pairs, evaluation sets and the loader every model trains from.

    loader = build_train_loader(splits["train"], cfg.data, seed=0)   # batches as in models/base.py
    test = EvalSet(splits["test"]); images = load_eval_images(test.image_paths, cfg.data)

Images are decoded once per process at the model's input size and kept as uint8 (CPU training is
decode-bound otherwise), and DDP ranks see disjoint shards.

Determinism: the batches of an epoch are a function of (seed, epoch) only, whatever the number of
DataLoader workers and whether the epoch was interrupted and resumed:

- the sampler draws an epoch's order and one 31-bit seed per item from
  ``np.random.default_rng([seed, epoch])``, for every batch of every rank, before any is used;
- an item's augmentations (every view of it) are drawn from its own ``torch.Generator`` seeded with
  that seed, never from a process-wide generator, so the process that makes it and what that process
  made before do not matter; each pair is one item, so no caption is drawn;
- iterating the loader leaves torch's global generator untouched (a plain DataLoader draws the
  workers' base seed from it for every new iterator, i.e. once per epoch without persistent workers
  and once in all with them, which moved the model's own draws, e.g. dropout, with the worker count);
- ``set_epoch(epoch, start=j)`` starts an epoch at its batch ``j`` with the same batches an
  uninterrupted epoch has from there on.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .formats import DatasetError, Record
from .transforms import build_transforms, decode_image

CACHE_BYTES = 4 << 30  # decoded images kept per process; beyond this, images are decoded per item
_CACHE: OrderedDict = OrderedDict()


def _decode_all(paths, size) -> torch.Tensor:
    def one(p):
        try:
            return decode_image(p, size)
        except Exception as err:  # report every bad file at once, not the first deep in a worker
            return f"{p} ({type(err).__name__}: {err})"
    with ThreadPoolExecutor(2) as pool:  # PIL releases the GIL while decoding
        out = list(pool.map(one, paths))
    bad = [o for o in out if isinstance(o, str)]
    if bad:
        raise DatasetError(f"{len(bad)} of {len(paths)} images cannot be decoded:\n  " +
                           "\n  ".join(bad[:10]) + "\nrestore them or remove their records")
    return torch.stack(out) if out else torch.empty(0, 3, *size, dtype=torch.uint8)


def decoded_images(paths, size: tuple[int, int]) -> torch.Tensor | None:
    """uint8 [N, 3, H, W] of ``paths`` at ``size``, memoised; None when too big to keep."""
    size = tuple(size)
    if len(paths) * 3 * size[0] * size[1] > CACHE_BYTES:
        return None
    key = (hashlib.sha1("\n".join(map(str, paths)).encode()).hexdigest(), size)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    images = _decode_all(list(paths), size)
    _CACHE[key] = images
    while sum(v.numel() for v in _CACHE.values()) > CACHE_BYTES:
        _CACHE.popitem(last=False)
    return images


class TrainPairs(Dataset):
    """One item per (image, caption) pair; items are looked up with (pair index, draw seed)."""

    def __init__(self, records: list[Record], data_cfg):
        self.records = records
        self.data_cfg = data_cfg
        self.transform = build_transforms(data_cfg, train=True)
        self.pairs = [(i, c, r.pid, caption) for i, r in enumerate(records)
                      for c, caption in enumerate(r.captions)]
        self.pids = np.array([p[2] for p in self.pairs])
        self.num_classes = len({r.pid for r in records})
        self.images = decoded_images([r.image_path for r in records], data_cfg.image_size)

    def __len__(self):
        return len(self.pairs)

    def image(self, i) -> torch.Tensor:
        if self.images is not None:
            return self.images[i]
        return decode_image(self.records[i].image_path, self.data_cfg.image_size)

    def __getitem__(self, key):
        index, draw = key
        image_idx, caption_idx, pid, caption = self.pairs[index]
        image = self.image(image_idx)
        generator = torch.Generator().manual_seed(int(draw))  # the item's own: no global state
        views = [self.transform(image, generator) for _ in range(self.data_cfg.n_views)]
        return {"images": views[0] if len(views) == 1 else torch.stack(views), "pids": pid,
                "captions": caption, "image_idx": image_idx, "caption_idx": index}


def collate(items: list[dict]) -> dict:
    return {"images": torch.stack([it["images"] for it in items]),
            "pids": torch.tensor([it["pids"] for it in items], dtype=torch.long),
            "captions": [it["captions"] for it in items],
            "image_idx": torch.tensor([it["image_idx"] for it in items], dtype=torch.long),
            "caption_idx": torch.tensor([it["caption_idx"] for it in items], dtype=torch.long)}


class PairBatchSampler(Sampler):
    """Batches of (pair index, draw seed) for one rank: shuffled pairs, or P identities × K pairs.

    The global order of an epoch and the draw seed of each of its items depend only on
    (seed, epoch); rank r takes every world_size-th batch. Each consumed iteration advances the
    epoch; ``set_epoch`` sets it explicitly, and its ``start`` skips the first batches of that
    epoch's next iteration (a resumed epoch) without changing the others. ``len`` is the number of
    batches of a whole epoch.
    """

    def __init__(self, pids, batch_size: int, mode: str = "random", num_instances: int = 4,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if mode not in ("random", "pk"):
            raise ValueError(f"sampler must be 'random' or 'pk', not {mode!r}")
        if mode == "pk" and batch_size < num_instances:
            raise ValueError(f"P×K sampler: batch_size {batch_size} < num_instances {num_instances}")
        self.pids, self.batch_size, self.mode, self.k = np.asarray(pids), batch_size, mode, \
            num_instances
        self.seed, self.rank, self.world_size, self.epoch, self.start = seed, rank, world_size, 0, 0

    def set_epoch(self, epoch: int, start: int = 0):
        """The next iteration yields epoch ``epoch`` from its batch ``start`` (of this rank) on."""
        if start < 0:
            raise ValueError(f"set_epoch: start must be >= 0, not {start}")
        self.epoch, self.start = epoch, start

    def _random_batches(self, rng) -> list[np.ndarray]:
        n, b = len(self.pids), self.batch_size
        n_batches = max(1, n // b)
        n_batches -= n_batches % self.world_size if n_batches >= self.world_size else 0
        order = rng.permutation(n)
        if n_batches * b > n:  # tiny splits: top up with repeats rather than drop everything
            order = np.concatenate([order, rng.choice(n, n_batches * b - n)])
        return list(order[:n_batches * b].reshape(n_batches, b))

    def _pk_batches(self, rng) -> list[np.ndarray]:
        chunks: dict[int, list[np.ndarray]] = {}
        for pid in np.unique(self.pids):
            idx = rng.permutation(np.flatnonzero(self.pids == pid))
            if len(idx) % self.k:  # fill the last chunk with other pairs of the same identity
                idx = np.concatenate([idx, rng.choice(idx, self.k - len(idx) % self.k)])
            chunks[int(pid)] = list(idx.reshape(-1, self.k))
        p = min(self.batch_size // self.k, len(chunks))
        batches = []
        while sum(1 for c in chunks.values() if c) >= p:
            live = sorted(pid for pid, c in chunks.items() if c)
            weights = np.array([len(chunks[pid]) for pid in live], float)
            chosen = rng.choice(live, size=p, replace=False, p=weights / weights.sum())
            batches.append(np.concatenate([chunks[int(pid)].pop() for pid in chosen]))
        return batches

    def _epoch_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._random_batches(rng) if self.mode == "random" else self._pk_batches(rng)
        if batches and len(batches) < self.world_size:  # every rank must step, or DDP hangs
            batches = [batches[i % len(batches)] for i in range(self.world_size)]
        usable = len(batches) - len(batches) % self.world_size
        draws = rng.integers(2 ** 31, size=(len(batches), len(batches[0]) if batches else 0))
        return [list(zip(b.tolist(), d.tolist())) for b, d in
                zip(batches[self.rank:usable:self.world_size], draws[self.rank:usable:self.world_size])]

    def __iter__(self):
        # a generator: DataLoader may call iter() more than once per epoch, only the consumed one counts
        batches, start = self._epoch_batches(), self.start
        self.epoch, self.start = self.epoch + 1, 0
        yield from batches[start:]

    def __len__(self):
        return len(self._epoch_batches())


class TrainLoader(DataLoader):
    """A DataLoader whose iterators leave torch's global generator as they found it.

    Creating a DataLoader iterator draws the workers' base seed from the global generator (unless the
    loader has a ``generator``): per epoch with no or non-persistent workers, once with persistent
    ones, so the model's later draws (dropout, sampled negatives) depended on the worker count and a
    resumed run diverged. Every item here seeds its own generator, so the base seed is not needed.
    """

    def __iter__(self):
        with torch.random.fork_rng(devices=[]):  # the CPU generator; accelerators are not touched
            return super().__iter__()


def build_train_loader(records: list[Record], data_cfg, seed: int = 0, rank: int = 0,
                       world_size: int = 1) -> DataLoader:
    """Training batches (``batch_size`` per rank) in the format of ``tbpr/papers/base.py``; the same
    batches for any ``data_cfg.num_workers`` (see the module's docstring)."""
    if not records:
        raise DatasetError("build_train_loader: no training records (is the train split empty?)")
    dataset = TrainPairs(records, data_cfg)
    sampler = PairBatchSampler(dataset.pids, data_cfg.batch_size, data_cfg.sampler,
                               data_cfg.num_instances, seed, rank, world_size)
    workers = data_cfg.num_workers
    return TrainLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                       persistent_workers=workers > 0)


class EvalSet:
    """Gallery images and query captions of an evaluation split (captions point at their image)."""

    def __init__(self, records: list[Record]):
        self.records = records
        self.image_paths = [r.image_path for r in records]
        self.image_pids = torch.tensor([r.pid for r in records], dtype=torch.long)
        self.captions = [c for r in records for c in r.captions]
        self.caption_image_idx = torch.tensor([i for i, r in enumerate(records) for _ in r.captions],
                                              dtype=torch.long)
        self.caption_pids = self.image_pids[self.caption_image_idx]

    def __repr__(self):
        return (f"EvalSet({len(self.image_paths)} images, {len(self.captions)} captions, "
                f"{len(set(self.image_pids.tolist()))} ids)")


def load_eval_images(paths, data_cfg) -> torch.Tensor:
    """Normalised float [N, 3, H, W] at ``data_cfg.image_size`` (no augmentation)."""
    transform = build_transforms(data_cfg, train=False)
    images = decoded_images(list(paths), data_cfg.image_size)
    if images is None:
        return torch.stack([transform(decode_image(p, data_cfg.image_size)) for p in paths])
    return transform(images)

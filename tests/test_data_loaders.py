"""Training loader (batch format, P×K sampler, determinism, DDP shards), eval sets, transforms."""
import dataclasses
from collections import Counter

import pytest
import torch

from tbpr.config import DataConfig
from tbpr.data import datasets, formats, transforms
from tbpr.data.datasets import EvalSet, PairBatchSampler, build_train_loader, load_eval_images
from tbpr.data.transforms import build_transforms, decode_image

CFG = DataConfig(image_size=(48, 16), batch_size=16, num_instances=4, pad_crop=10,
                 random_erasing=0.5)


@pytest.fixture(scope="module")
def splits(smoke_root):
    return formats.load("synthpedes", smoke_root, verbose=False)


def _first_batch(records, cfg, **kw):
    return next(iter(build_train_loader(records, cfg, **kw)))


def test_batch_has_the_model_contract_format(splits):
    batch = _first_batch(splits["train"], CFG)
    assert batch["images"].shape == (16, 3, 48, 16) and batch["images"].dtype == torch.float32
    assert batch["pids"].dtype == torch.long and len(batch["captions"]) == 16
    train = splits["train"]
    for pid, caption, img, cap in zip(batch["pids"], batch["captions"], batch["image_idx"],
                                      batch["caption_idx"]):
        record = train[img]
        assert record.pid == pid and caption in record.captions
        pairs = [c for r in train for c in r.captions]
        assert pairs[cap] == caption


def test_n_views_are_independent_augmentations_of_one_image(splits):
    cfg = dataclasses.replace(CFG, n_views=3)
    images = _first_batch(splits["train"], cfg)["images"]
    assert images.shape == (16, 3, 3, 48, 16)
    assert not torch.equal(images[:, 0], images[:, 1])


def test_pk_batches_hold_P_identities_with_K_pairs_each(splits):
    pids = [r.pid for r in splits["train"] for _ in r.captions]
    sampler = PairBatchSampler(pids, 16, "pk", 4, seed=0)
    batches = list(sampler)
    assert len(batches) >= 5
    for batch in batches:
        counts = Counter(pids[i] for i, _ in batch)
        assert len(counts) == 4 and set(counts.values()) == {4}


def test_random_sampler_visits_each_pair_at_most_once_per_epoch(splits):
    n = sum(len(r.captions) for r in splits["train"])
    batches = list(PairBatchSampler(list(range(n)), 16, "random", seed=0))
    seen = [i for b in batches for i, _ in b]
    assert len(seen) == len(set(seen)) == n // 16 * 16


def test_loader_is_deterministic_per_seed_and_changes_with_epoch_and_seed(splits):
    a = build_train_loader(splits["train"], CFG, seed=3)
    b = build_train_loader(splits["train"], CFG, seed=3)
    a1, b1 = next(iter(a)), next(iter(b))
    assert torch.equal(a1["images"], b1["images"]) and a1["captions"] == b1["captions"]
    a2 = next(iter(a))  # a new epoch
    assert a2["captions"] != a1["captions"]
    assert _first_batch(splits["train"], CFG, seed=4)["captions"] != a1["captions"]


def test_ddp_ranks_get_disjoint_equal_shards(splits):
    cfg = dataclasses.replace(CFG, sampler="random")
    shards = [[i for b in PairBatchSampler(range(200), 16, "random", seed=1, rank=r, world_size=2)
               for i, _ in b] for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) > 0 and not set(shards[0]) & set(shards[1])
    r0 = _first_batch(splits["train"], cfg, seed=1, rank=0, world_size=2)
    r1 = _first_batch(splits["train"], cfg, seed=1, rank=1, world_size=2)
    assert not set(r0["caption_idx"].tolist()) & set(r1["caption_idx"].tolist())


def test_two_workers_give_the_same_batches_as_the_main_process(splits):
    main = _first_batch(splits["train"], CFG, seed=5)
    workers = _first_batch(splits["train"], dataclasses.replace(CFG, num_workers=2), seed=5)
    assert torch.equal(main["images"], workers["images"])


def test_eval_set_links_captions_to_their_images(splits):
    test = EvalSet(splits["test"])
    assert len(test.image_paths) == len(splits["test"]) == len(test.image_pids)
    assert len(test.captions) == len(test.caption_pids) == len(test.caption_image_idx)
    for caption, img, pid in zip(test.captions, test.caption_image_idx, test.caption_pids):
        assert caption in splits["test"][img].captions and test.image_pids[img] == pid


def test_eval_images_are_resized_and_normalised_without_augmentation(splits):
    paths = [r.image_path for r in splits["test"][:4]]
    images = load_eval_images(paths, CFG)
    assert images.shape == (4, 3, 48, 16)
    raw = decode_image(paths[1], (48, 16)).float() / 255
    mean, std = torch.tensor(CFG.mean).view(3, 1, 1), torch.tensor(CFG.std).view(3, 1, 1)
    torch.testing.assert_close(images[1], (raw - mean) / std)
    assert torch.equal(load_eval_images(paths, CFG), images)


def test_undecodable_image_fails_the_loader_with_a_count_not_inside_a_worker(splits, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    records = [dataclasses.replace(r) for r in splits["train"][:6]]
    records[2].image_path = records[4].image_path = bad
    with pytest.raises(formats.DatasetError, match=r"2 of 6 images cannot be decoded"):
        build_train_loader(records, dataclasses.replace(CFG, image_size=(40, 16)))


def test_train_transform_pads_crops_flips_and_erases_but_keeps_the_size():
    image = torch.randint(0, 256, (3, 48, 16), dtype=torch.uint8)
    train = build_transforms(CFG, train=True)
    outs = [train(image) for _ in range(8)]
    assert all(o.shape == (3, 48, 16) for o in outs)
    assert len({o.sum().item() for o in outs}) > 1
    evals = build_transforms(CFG, train=False)
    assert torch.equal(evals(image), evals(image))


def test_train_transform_without_augmentation_normalises_exactly_as_evaluation():
    image = torch.randint(0, 256, (3, 48, 16), dtype=torch.uint8)
    plain = dataclasses.replace(CFG, flip=False, pad_crop=0, random_erasing=0.0,
                                mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    assert torch.allclose(build_transforms(plain, train=True)(image),
                          build_transforms(plain, train=False)(image), atol=1e-5)


def test_train_transform_draws_exactly_what_torchvisions_v2_pipeline_draws_from_the_same_seed():
    from torchvision.transforms import v2
    cfg = dataclasses.replace(CFG, pad_crop=16, random_erasing=0.5)
    size = tuple(cfg.image_size)
    reference = v2.Compose([v2.RandomHorizontalFlip(), v2.Pad(transforms.pad_for(cfg)), v2.RandomCrop(size),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std)),
                            v2.RandomErasing(p=0.5, value=0)])
    ours, image = build_transforms(cfg, train=True), torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    for seed in range(50):
        torch.manual_seed(seed)
        expected = reference(image)
        torch.manual_seed(seed)
        assert torch.allclose(ours(image), expected, atol=1e-5)


def test_flip_and_pad_crop_give_a_mirrored_window_shifted_by_at_most_the_pad():
    image = torch.randint(1, 256, (3, 48, 16), dtype=torch.uint8)
    cfg = dataclasses.replace(CFG, pad_crop=16, random_erasing=0.0, mean=(0.0,) * 3, std=(1 / 255,) * 3)
    pad = transforms.pad_for(cfg)
    padded = torch.nn.functional.pad(image, (pad,) * 4).float()
    train, seen = build_transforms(cfg, train=True), set()
    for _ in range(60):
        out = train(image)
        matches = [(flip, i, j) for flip in (False, True) for i in range(2 * pad + 1)
                   for j in range(2 * pad + 1)
                   if torch.equal(out, (padded.flip(-1) if flip else padded)[:, i:i + 48, j:j + 16])]
        assert matches
        seen.update(matches)
    assert {m[0] for m in seen} == {False, True} and len({m[1:] for m in seen}) > 3


def test_random_erasing_zeroes_one_box_of_2_to_33_percent_with_probability_p():
    cfg = dataclasses.replace(CFG, flip=False, pad_crop=0, random_erasing=0.5, mean=(-1.0,) * 3)
    train, image = build_transforms(cfg, train=True), torch.zeros(3, 48, 16, dtype=torch.uint8)
    fractions = [(train(image)[0] == 0).float().mean().item() for _ in range(400)]
    erased = [f for f in fractions if f > 0]
    assert 0.4 < len(erased) / len(fractions) < 0.6
    assert min(erased) >= 0.01 and max(erased) <= 0.36  # area 2-33 %, rounded to whole pixels


def test_images_are_cached_once_per_size(splits):
    paths = [r.image_path for r in splits["val"]]
    first = datasets.decoded_images(paths, (32, 16))
    assert datasets.decoded_images(paths, (32, 16)) is first
    assert datasets.decoded_images(paths, (48, 16)).shape[-2:] == (48, 16)

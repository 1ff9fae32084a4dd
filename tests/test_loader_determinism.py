"""The training loader's batches are a function of (seed, epoch) only: the same for 0, 1 or N
DataLoader workers, for an epoch started mid-way (a resumed run), and whatever the process drew
before; so a training run gives the same weights with any worker count, interrupted or not."""
import dataclasses
import json

import pytest
import torch

from tbpr import experiments
from tbpr.config import DataConfig
from tbpr.data import formats
from tbpr.data.datasets import build_train_loader
from tbpr.data.transforms import build_transforms, pad_for
from tbpr.engine import fit, seed_everything
from tbpr.papers import get_config, recipe

# every augmentation on, two views per item (IVT's multi-view), P×K batches
CFG = DataConfig(image_size=(48, 16), batch_size=16, sampler="pk", num_instances=4, pad_crop=10,
                 random_erasing=0.5, n_views=2)


@pytest.fixture(scope="module")
def train_records(smoke_root):
    return formats.load("synthpedes", smoke_root, verbose=False)["train"]


def _loader(records, workers=0, seed=7, cfg=CFG):
    return build_train_loader(records, dataclasses.replace(cfg, num_workers=workers), seed=seed)


def _assert_same_batches(a: list[dict], b: list[dict]):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if torch.is_tensor(x[key]):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def _epochs(loader, n=2) -> list[list[dict]]:
    out = []
    for _ in range(n):
        torch.rand(3)  # other draws in between must not matter
        out.append(list(loader))
    return out


def test_two_epochs_are_bit_identical_with_0_1_and_2_workers_and_leave_the_global_rng_alone(
        train_records):
    reference = None
    for workers in (0, 1, 2):
        torch.manual_seed(100 + workers)  # a different global state for each
        loader = _loader(train_records, workers)
        epochs = _epochs(loader)
        state = torch.get_rng_state()
        list(loader)  # creating and consuming an iterator draws nothing from the global generator
        assert torch.equal(torch.get_rng_state(), state)
        if reference is None:
            reference = epochs
            assert epochs[0][0]["images"].shape == (16, 2, 3, 48, 16)
            assert not torch.equal(epochs[0][0]["images"][:, 0], epochs[0][0]["images"][:, 1])
            assert epochs[0][0]["captions"] != epochs[1][0]["captions"]
        else:
            for ours, theirs in zip(epochs, reference):
                _assert_same_batches(ours, theirs)


def test_an_epoch_started_at_batch_j_equals_the_tail_of_the_uninterrupted_epoch(train_records):
    full = _loader(train_records)
    full.batch_sampler.set_epoch(3)
    epoch3, epoch4 = list(full), list(full)
    j = len(epoch3) // 2
    assert 0 < j < len(epoch3)

    # the sampler's own start (nothing of batches 0..j-1 is loaded), in another "process" state
    torch.manual_seed(5)
    started = _loader(train_records, workers=2)
    started.batch_sampler.set_epoch(3, start=j)
    _assert_same_batches(list(started), epoch3[j:])
    _assert_same_batches(list(started), epoch4)  # the next epoch starts at its first batch again

    # what the engine does on resume: set the epoch, re-draw the j consumed batches, go on
    torch.manual_seed(6)
    skipped = _loader(train_records, workers=1)
    skipped.batch_sampler.set_epoch(3)
    batches = iter(skipped)
    _assert_same_batches([next(batches) for _ in range(j)], epoch3[:j])
    _assert_same_batches(list(batches), epoch3[j:])


def test_item_generators_draw_what_torchvisions_v2_pipeline_draws_from_the_same_seed():
    from torchvision.transforms import v2
    cfg = dataclasses.replace(CFG, pad_crop=16)
    size = tuple(cfg.image_size)
    reference = v2.Compose([v2.RandomHorizontalFlip(), v2.Pad(pad_for(cfg)), v2.RandomCrop(size),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(list(cfg.mean), list(cfg.std)), v2.RandomErasing(p=0.5, value=0)])
    ours, image = build_transforms(cfg, train=True), torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    for seed in range(30):
        torch.manual_seed(seed)
        expected = [reference(image), reference(image)]  # two views from one stream
        torch.manual_seed(12345)  # the global generator is not read
        generator = torch.Generator().manual_seed(seed)
        for view in expected:
            assert torch.allclose(ours(image, generator), view, atol=1e-5)


def _train_ssan(records, out_dir, workers, max_steps=None):
    cfg = get_config("ssan", "smoke", {"data.num_workers": workers, "train.ckpt_every_steps": 2})
    seed_everything(0)
    model = experiments.build_model("ssan", cfg, records)
    paper = recipe("ssan")
    paper.attach_training_data(model, records)
    (stage, train_cfg), = paper.stages(model)
    paper.enter_stage(model, stage)
    loader = build_train_loader(records, model.cfg.data, seed=0)
    history = fit(model, loader, train_cfg, out_dir=out_dir, seed=0, progress=False,
                  max_steps=max_steps)
    return model, history, len(loader)


def _without_timing(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in history]


def test_ssan_smoke_gives_the_same_weights_with_0_workers_as_with_2_workers_killed_and_resumed(
        train_records, tmp_path):
    records = train_records[:len(train_records) // 2]  # 6 steps per epoch
    full, full_history, steps = _train_ssan(records, tmp_path / "full", workers=0)
    assert len(full_history) == 2 and steps >= 4
    kill_at = steps // 2 + 1  # mid-epoch 1: resumes from a step-checkpoint of epoch 1, epoch 2 follows
    _, partial, _ = _train_ssan(records, tmp_path / "killed", workers=2, max_steps=kill_at)
    assert partial == []
    torch.manual_seed(99)  # a fresh process state
    resumed, resumed_history, _ = _train_ssan(records, tmp_path / "killed", workers=2)
    assert _without_timing(resumed_history) == _without_timing(full_history)
    theirs = resumed.state_dict()
    for name, value in full.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    logged = [json.loads(line) for line in
              (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert _without_timing(logged) == _without_timing(full_history)

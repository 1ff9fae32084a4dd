"""Probes of "nothing silently wrong" for the training engine's checkpoints: a kill between the
writes of a checkpoint pair, a training state that is not plain tensors, and damaged weights. Each
replays what used to lose a run, crash with torch's advice or load silently, and now resumes to
exactly the uninterrupted result or stops with one line naming the file and the fix."""
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_model

sys.path.insert(0, str(Path(__file__).parent))
from test_engine import make_loader, make_model, run, weights, without_timing  # noqa: E402

from tbpr import engine  # noqa: E402
from tbpr.engine import (STATE_FILE, WEIGHTS_FILE, fit, load_checkpoint, read_checkpoint,  # noqa: E402
                         save_checkpoint)

# 3 epochs of 6 steps, a checkpoint every 2 steps: the n-th checkpoint is written at global step 2n
# (the 3rd, 6th and 9th at the ends of the epochs)
OVER = {"train.ckpt_every_steps": 2, "train.epochs": 3}


class Killed(Exception):
    """Stands for SIGKILL at one point of a checkpoint write."""


def assert_same_run(tmp_path, full_model, full_hist, resumed_model, resumed_hist, name):
    assert without_timing(resumed_hist) == without_timing(full_hist)
    for key, value in weights(full_model).items():
        assert torch.equal(value, weights(resumed_model)[key]), key
    logged = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert without_timing(logged) == without_timing(full_hist)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == [
        "metrics.jsonl", WEIGHTS_FILE, STATE_FILE]


# ----------------------------------------------------------------------------- 1. kill mid-write

@pytest.mark.parametrize("nth", [2, 3, 4])  # mid-epoch 1, end of epoch 1, mid-epoch 2
def test_kill_between_writing_the_weights_and_the_state_resumes_exactly(tmp_path, monkeypatch, capsys,
                                                                         nth):
    """The weights of checkpoint n are written, the process dies before the state: formerly a
    'disagree, delete both' error (all progress lost); now the previous pair resumes exactly."""
    full_model, full_hist = run(tmp_path, "full", **OVER)
    real_save, calls = torch.save, []

    def dying_save(obj, path, *args, **kwargs):
        if Path(path).name.startswith(STATE_FILE):
            calls.append(path)
            if len(calls) == nth:
                raise Killed
        return real_save(obj, path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", dying_save)
        with pytest.raises(Killed):
            run(tmp_path, "killed", **OVER)
    assert read_checkpoint(tmp_path / "killed" / WEIGHTS_FILE)["extra"]["global_step"] == 2 * (nth - 1)
    capsys.readouterr()
    resumed_model, resumed_hist = run(tmp_path, "killed", **OVER)
    assert_same_run(tmp_path, full_model, full_hist, resumed_model, resumed_hist, "killed")
    notice = capsys.readouterr().err.strip().splitlines()
    assert notice == [f"tbpr.engine: a checkpoint write in {tmp_path / 'killed'} was interrupted; "
                      f"resuming from step {2 * (nth - 1)} ({WEIGHTS_FILE} + {STATE_FILE}): deleted "
                      f"the incomplete {WEIGHTS_FILE}.next, step {2 * nth}"]


@pytest.mark.parametrize("nth", [1, 3, 5])
@pytest.mark.parametrize("target", [WEIGHTS_FILE, STATE_FILE])
def test_kill_while_the_new_pair_replaces_the_old_resumes_exactly_from_the_new(
        tmp_path, monkeypatch, capsys, target, nth):
    """Both new files are whole; the process dies before renaming the weights, or between renaming
    the weights and the state: the resumed run starts from the new step and ends exactly as an
    uninterrupted one."""
    full_model, full_hist = run(tmp_path, "full", **OVER)
    real_replace, hits = os.replace, []

    def dying_replace(src, dst, *args, **kwargs):
        if Path(src).name.endswith(".next") and Path(dst).name == target:
            hits.append(dst)
            if len(hits) == nth:
                raise Killed
        return real_replace(src, dst, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", dying_replace)
        with pytest.raises(Killed):
            run(tmp_path, "killed", **OVER)
    capsys.readouterr()
    resumed_model, resumed_hist = run(tmp_path, "killed", **OVER)
    assert_same_run(tmp_path, full_model, full_hist, resumed_model, resumed_hist, "killed")
    moved = [f"moved {WEIGHTS_FILE}.next into place"] if target == WEIGHTS_FILE else []
    used = f"{WEIGHTS_FILE}.next" if target == WEIGHTS_FILE else WEIGHTS_FILE
    assert capsys.readouterr().err.strip().splitlines() == [
        f"tbpr.engine: a checkpoint write in {tmp_path / 'killed'} was interrupted; resuming from "
        f"step {2 * nth} ({used} + {STATE_FILE}.next): "
        + ", ".join(moved + [f"moved {STATE_FILE}.next into place"])]


def test_a_pair_that_does_not_agree_is_one_line_naming_every_file(tmp_path):
    run(tmp_path, "a", max_steps=5, **OVER)  # checkpoint at step 4
    run(tmp_path, "b", **OVER)  # finished: step 18
    shutil.copy(tmp_path / "a" / STATE_FILE, tmp_path / "b" / STATE_FILE)
    with pytest.raises(ValueError) as err:
        run(tmp_path, "b", **OVER)
    assert str(err.value) == (
        f"cannot resume from {tmp_path / 'b'}: no weights file agrees with a training state on the "
        f"step ({WEIGHTS_FILE} step 18, {STATE_FILE} step 4); delete {WEIGHTS_FILE}* and "
        f"{STATE_FILE}* there to start over")


def test_resume_false_also_deletes_an_interrupted_write(tmp_path):
    run(tmp_path, "x", max_steps=5, **OVER)
    for name in (WEIGHTS_FILE, STATE_FILE):
        shutil.copy(tmp_path / "x" / name, tmp_path / "x" / (name + ".next"))
    model = make_model(**OVER)
    fit(model, make_loader(), model.cfg.train, out_dir=tmp_path / "x", resume=False, progress=False,
        max_steps=1)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == []


# ----------------------------------------------------------------------------- 2. state.pt

class NotATensor:
    pass


def killed_run(tmp_path):
    run(tmp_path, "r", max_steps=3, **OVER)  # model.safetensors + state.pt of step 2
    return tmp_path / "r" / STATE_FILE


def refusal(tmp_path, reason):
    out = tmp_path / "r"
    return (f"cannot resume from {out}: {out / STATE_FILE} is not a plain-tensor training state "
            f"({reason}); delete it (and {WEIGHTS_FILE}) to start over")


def test_state_pickling_an_object_is_refused_naming_the_file(tmp_path):
    state = killed_run(tmp_path)
    torch.save({"global_step": 2, "note": NotATensor()}, state)
    with pytest.raises(ValueError) as err:
        run(tmp_path, "r", **OVER)
    assert str(err.value) == refusal(
        tmp_path, f"it pickles a {__name__}.NotATensor object, not only tensors and containers")
    assert "weights_only=False" not in str(err.value) and err.value.__context__ is None


def test_truncated_state_is_refused_naming_the_file(tmp_path):
    state = killed_run(tmp_path)
    state.write_bytes(state.read_bytes()[:300])
    with pytest.raises(ValueError) as err:
        run(tmp_path, "r", **OVER)
    assert str(err.value) == refusal(tmp_path, "it is truncated or not written by torch.save")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_state_of_plain_pickle_or_another_object_is_refused_naming_the_file(tmp_path):
    import pickle
    state = killed_run(tmp_path)
    state.write_bytes(pickle.dumps({"global_step": 2, "note": NotATensor()}))
    with pytest.raises(ValueError, match=r"is not a plain-tensor training state \(its pickle is "
                                         r"refused: .*\); delete it \(and model.safetensors\)") as err:
        run(tmp_path, "r", **OVER)
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)
    torch.save(torch.zeros(3), state)
    with pytest.raises(ValueError) as err:
        run(tmp_path, "r", **OVER)
    assert str(err.value) == refusal(tmp_path, "it holds a Tensor without a global_step")


# ----------------------------------------------------------------------------- 3. sha256 of weights

def data_start(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def flip_kilobyte(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset:offset + 1024] = bytes(b ^ 0x01 for b in blob[offset:offset + 1024])
    path.write_bytes(bytes(blob))


def damaged(path):
    return f"{path} does not match its recorded sha256: the file is damaged; delete the run folder " \
           "and train again"


def test_flipped_kilobyte_of_weights_is_refused_naming_the_file(tmp_path):
    model = make_model(hidden=512)  # 20 KB of tensors
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    flip_kilobyte(path, data_start(path) + 4096)
    load_file(str(path))  # the safetensors format itself loads the damaged file without a word
    with pytest.raises(ValueError) as err:
        load_checkpoint(make_model(hidden=512), path)
    assert str(err.value) == damaged(path)
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        read_checkpoint(path)


def test_edited_metadata_of_weights_is_refused(tmp_path):
    path = save_checkpoint(make_model(), tmp_path / "m.safetensors")
    blob = path.read_bytes()
    vocab = b'[\\"a\\", \\"b\\"]'
    assert blob.count(vocab) == 1
    path.write_bytes(blob.replace(vocab, b'[\\"c\\", \\"b\\"]'))  # the vocabulary the model is built from
    with pytest.raises(ValueError) as err:
        read_checkpoint(path)
    assert str(err.value) == damaged(path)


def test_resume_from_damaged_weights_is_refused(tmp_path):
    run(tmp_path, "d", max_steps=3, hidden=512, **OVER)
    path = tmp_path / "d" / WEIGHTS_FILE
    flip_kilobyte(path, data_start(path) + 1024)
    with pytest.raises(ValueError) as err:
        run(tmp_path, "d", hidden=512, **OVER)
    assert str(err.value).startswith(f"cannot resume from {tmp_path / 'd'}: {damaged(path)}")


def test_recorded_sha256_is_the_files_own_with_the_entry_zeroed(tmp_path):
    """The checksum lives in the file's metadata (it travels with copies): anyone can check it."""
    path = save_checkpoint(make_model(), tmp_path / "m.safetensors")
    blob = path.read_bytes()
    header = json.loads(blob[8:data_start(path)])
    recorded = header["__metadata__"]["sha256"]
    assert hashlib.sha256(blob.replace(recorded.encode(), b"0" * 64)).hexdigest() == recorded
    copy = Path(shutil.copy(path, tmp_path / "copy.safetensors"))
    load_checkpoint(make_model(), copy)
    flip_kilobyte(copy, data_start(copy))
    with pytest.raises(ValueError, match="copy.safetensors does not match its recorded sha256"):
        load_checkpoint(make_model(), copy)


def test_weights_without_a_recorded_sha256_still_load(tmp_path):
    model = make_model(seed=1)
    path = save_checkpoint(model, tmp_path / "new.safetensors")
    with engine.safe_open(str(path), framework="pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != "sha256"}
    save_model(model, str(tmp_path / "old.safetensors"), metadata=metadata)  # as written before
    other = make_model(seed=2)
    assert load_checkpoint(other, tmp_path / "old.safetensors")["extra"] == {}
    assert all(torch.equal(v, weights(other)[k]) for k, v in weights(model).items())


def test_a_checkpoint_is_hashed_once_for_read_then_load(tmp_path, monkeypatch):
    path = save_checkpoint(make_model(), tmp_path / "m.safetensors")
    real, calls = hashlib.file_digest, []
    monkeypatch.setattr(hashlib, "file_digest", lambda *a, **k: calls.append(1) or real(*a, **k))
    read_checkpoint(path)
    load_checkpoint(make_model(), path)
    assert len(calls) == 1
    path.write_bytes(path.read_bytes())  # a new version of the file is hashed again
    os.utime(path, ns=(1, 1))
    read_checkpoint(path)
    assert len(calls) == 2

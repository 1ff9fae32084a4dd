"""Paper profiles that run as the papers and their code do, the ``official`` profile, and the choice
of the kept epoch (``train.select``): every defect fixed here has a test that fails on the code before
the fix."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tbpr import backbones, cli, config
from tbpr.config import DataConfig
from tbpr.data.transforms import build_transforms, pad_for
from tbpr.engine import SELECTED_FILE, build_optimizer, build_scheduler, fit
from tbpr.losses import ranking_hinges
from tbpr.papers import (MODEL_NAMES, create_model, get_config, load_presets, preset, profile_diff,
                         profile_reasons)

from test_engine import make_loader, make_model, weights

PAPERS = ("mia", "ssan", "lgur", "ivt", "cada")


# ----------------------------------------------------------------------------- 1. pre-trained weights
PAPER_WEIGHTS = {  # field -> the paper's own initialisation, by name
    "mia": {"pretrained": "vgg16.tv_in1k"},
    "ssan": {"pretrained": "resnet50.tv_in1k"},
    "lgur": {"vision_pretrained": "deit_small_distilled_patch16_224", "text_pretrained": "bert-base-uncased"},
    "ivt": {"pretrained_vit": "vit_base_patch16_224.orig_in21k_ft_in1k", "pretrained_bert": "bert-base-uncased"},
    "cada": {"pretrained": "model_base.pth"},
}


@pytest.mark.parametrize("name", PAPERS)
def test_paper_and_official_profiles_name_the_papers_pretrained_weights(name):
    for profile in ("paper", "official"):
        cfg = preset(name, profile)
        assert {f: getattr(cfg, f) for f in PAPER_WEIGHTS[name]} == PAPER_WEIGHTS[name]


@pytest.mark.parametrize("name", PAPERS)
def test_cpu_profiles_set_their_weights_explicitly(name):
    """The CPU profiles do not inherit a hub name they never load: each sets the field itself."""
    for profile in ("quick", "smoke"):
        section = load_presets(name)[profile]
        fields = [f for f in PAPER_WEIGHTS[name] if f != "text_pretrained"]  # LGUR: packaged MiniLM
        assert all(f in section for f in fields), (profile, fields)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, and an empty hub cache."""
    import huggingface_hub.constants as constants
    monkeypatch.setattr(backbones, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # no model_base.pth here


@pytest.mark.parametrize("name, overrides, field", [
    ("ssan", {}, "pretrained"),
    ("mia", {}, "pretrained"),
    ("lgur", {}, "vision_pretrained"),
    ("lgur", {"vision_pretrained": None}, "text_pretrained"),
    ("ivt", {"pretrain": False}, "pretrained_vit"),
    ("cada", {}, "pretrained"),
])
def test_offline_a_paper_profile_stops_in_one_line_naming_the_field(offline, name, overrides, field):
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        create_model(name, "paper", **overrides)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{field}=") and f"{field}=null" in message


def test_the_cli_answers_missing_weights_in_one_line(smoke_root, offline, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "ssan", "--profile", "paper", "--data-root", str(smoke_root), "--no-cache"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "pretrained='resnet50.tv_in1k'" in err[-1] and "pretrained=null" in err[-1]


# ----------------------------------------------------------------------------- 2. pad-and-crop
PADS = {"mia": 0, "ssan": 0, "lgur": 10, "ivt": 10, "cada": 10}  # what each official code pads, px


@pytest.mark.parametrize("name", PAPERS)
def test_paper_profile_pads_what_its_code_pads(name):
    assert pad_for(preset(name, "paper").data) == PADS[name]  # CADA: 10 px of 224, was 6


@pytest.mark.parametrize("name", ["lgur", "ivt", "cada"])
def test_cpu_profiles_state_their_scaled_pad(name):
    for profile in ("quick", "smoke"):
        data = load_presets(name)[profile]["data"]
        assert data["pad_crop"] == pad_for(preset(name, profile).data) == 1  # 10 px scaled, at least 1


def test_pad_is_in_pixels_of_the_input():
    assert pad_for(DataConfig(image_size=(224, 224), pad_crop=10)) == 10
    assert pad_for(DataConfig(image_size=(48, 16), pad_crop=3)) == 3


# ----------------------------------------------------------------------------- 3. IVT's schedule
def test_ivt_paper_schedule_starts_where_its_code_does():
    """The code calls scheduler.step(epoch) with epoch = 1..120 before each epoch (timm cosine with a
    5-epoch warm-up from 1 % of the lr): its first epoch trains at warm-up step 1."""
    train = preset("ivt", "paper").train
    opt = build_optimizer(torch.nn.Linear(2, 2), train)
    sched = build_scheduler(opt, train, steps_per_epoch=10)
    lr, init = train.lr, 0.01 * train.lr
    code = [init + e * (lr - init) / 5 if e < 5 else
            train.min_lr + 0.5 * (lr - train.min_lr) * (1 + math.cos(math.pi * e / 120)) for e in (1, 2, 6)]
    seen = []
    for epoch in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(code[0]) and seen[1] == pytest.approx(code[1])
    assert seen[5] == pytest.approx(code[2])
    for profile in ("quick", "smoke"):  # the CPU profiles keep their own clock
        assert preset("ivt", profile).train.lr_epoch_offset == 0


# ----------------------------------------------------------------------------- 4. CADA-L by default
def test_cli_rerank_k_defaults_to_the_configs():
    args = cli.build_parser().parse_args(["train", "cada", "--profile", "paper"])
    assert args.rerank_k is None
    assert cli._rerank_k(args, get_config("cada", "paper")) == 32
    assert cli._rerank_k(args, get_config("cada", "quick")) == preset("cada", "quick").rerank_k
    assert cli._rerank_k(args, get_config("ssan", "quick")) == 0
    args = cli.build_parser().parse_args(["eval", "cada", "--checkpoint", "x", "--rerank-k", "0"])
    assert cli._rerank_k(args, get_config("cada", "paper")) == 0


# ----------------------------------------------------------------------------- 5. erasing, SSAN fallback
def test_erasing_fill_follows_each_code():
    ivt, cada = preset("ivt", "paper").data, preset("cada", "paper").data
    assert ivt.erasing_fill == "noise"  # timm RandomErasing(mode="pixel")
    assert cada.erasing_fill == "mean" and tuple(cada.erasing_scale) == (0.02, 0.4)
    assert DataConfig().erasing_fill == "zero"  # torchvision's default, the other papers


@pytest.mark.parametrize("fill", ["mean", "noise", "zero"])
def test_erased_box_holds_the_fill(fill):
    cfg = DataConfig(image_size=(48, 16), flip=False, pad_crop=0, random_erasing=1.0, erasing_fill=fill,
                     mean=(0.25, 0.5, 0.75), std=(1.0, 1.0, 1.0))
    image = torch.full((3, 48, 16), 255, dtype=torch.uint8)  # normalised: 1 - mean, never the fill
    out = build_transforms(cfg, train=True)(image, torch.Generator().manual_seed(0))
    erased = (out != (1 - torch.tensor(cfg.mean).view(3, 1, 1))).any(0)
    assert erased.any()
    box = out[:, erased]
    if fill == "mean":
        assert torch.allclose(box, torch.tensor(cfg.mean)[:, None].expand_as(box))
    elif fill == "zero":
        assert (box == 0).all()
    else:
        assert box.std() > 0.5


def test_ssan_ranking_loss_falls_back_to_one_triplet_as_its_code():
    pids = torch.tensor([0, 1, 2])
    S = torch.tensor([[0.9, 0.1, 0.2], [0.0, 0.8, 0.1], [0.3, 0.2, 0.7]])  # no semi-hard negative at 0.2
    margins = torch.full((3,), 0.2)
    assert ranking_hinges(S, pids, margins) == 0
    expected = (0.2 - S[2, 2] + S[2, 0]).clamp(min=0)  # last anchor, its first negative
    assert torch.isclose(ranking_hinges(S, pids, margins, fallback=True), expected)
    assert preset("ssan", "paper").cr_fallback is True


# ----------------------------------------------------------------------------- the official profile
def test_official_is_a_profile():
    assert "official" in config.PROFILES


@pytest.mark.parametrize("name", PAPERS)
def test_official_differs_from_paper_only_where_a_reason_is_recorded(name):
    rows = profile_diff(name, "paper", "official")
    assert all(reason for *_, reason in rows), [r for r in rows if not r[3]]
    assert set(profile_reasons(name, "official")) == {field for field, *_ in rows}


def test_official_profiles_hold_the_codes_values():
    assert {f: b for f, a, b, _ in profile_diff("cada", "paper", "official")} == {
        "ndf_variant": "official", "ara.mask_mode": "word", "ara.decoder": "separate", "atp.hardneg_sim": "dot",
        "train.epochs": 30, "data.batch_size": 120}
    assert {f: b for f, a, b, _ in profile_diff("ivt", "paper", "official")} == {
        "patch_stride": 12, "mask_ratio": 0.2, "cmpm_q_norm": "l2", "word_level": "dictionary",
        "word_dictionary": "cuhk_pedes_att.json"}
    assert {f: b for f, a, b, _ in profile_diff("lgur", "paper", "official")} == {"text_dropout_from_epoch": 2}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_official_profile_builds_on_the_meta_device(name):
    model = create_model(name, "official", device="meta")
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_cli_diff_prints_every_field_with_its_reason(capsys):
    cli.main(["diff", "ivt", "paper", "official"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 5 and all("->" in line and "# " in line and ".py:" in line for line in out)


def test_lgur_official_turns_the_frozen_berts_dropout_on_from_epoch_2():
    model = create_model("lgur", "smoke", text_dropout_from_epoch=2).train()
    model.steps_per_epoch = 2
    caption = ["a man in a red shirt and blue jeans"]
    assert not model.text_dropout_on
    assert torch.equal(model.encode_words(caption)[0], model.encode_words(caption)[0])
    model.steps_done += 2  # epoch 2
    assert model.text_dropout_on
    assert not torch.equal(model.encode_words(caption)[0], model.encode_words(caption)[0])
    assert not model.eval().text_dropout_on
    assert "steps_done" not in create_model("lgur", "smoke").state_dict()


# ----------------------------------------------------------------------------- train.select
class ScriptedValidation:
    """An eval_fn whose R1 follows a script, recording the weights it saw each epoch."""

    def __init__(self, r1):
        self.r1, self.seen = list(r1), []

    def __call__(self, model):
        self.seen.append(weights(model))
        return {"R1": self.r1[len(self.seen) - 1]}


@pytest.mark.parametrize("on_disk", [True, False])
def test_select_val_keeps_the_best_validation_epoch(tmp_path, on_disk):
    model = make_model(**{"train.epochs": 3, "train.milestones": (), "train.select": "val"})
    val = ScriptedValidation([10.0, 30.0, 20.0])
    history = fit(model, make_loader(), model.cfg.train, out_dir=tmp_path / "run" if on_disk else None,
                  eval_fn=val, progress=False)
    assert [h.get("selected", False) for h in history] == [True, True, False]
    assert all(torch.equal(v, val.seen[1][k]) for k, v in weights(model).items())
    if on_disk:
        assert (tmp_path / "run" / SELECTED_FILE).exists()


def test_select_last_keeps_the_last_epoch(tmp_path):
    model = make_model(**{"train.epochs": 3, "train.milestones": ()})
    val = ScriptedValidation([10.0, 30.0, 20.0])
    fit(model, make_loader(), model.cfg.train, out_dir=tmp_path / "run", eval_fn=val, progress=False)
    assert len(val.seen) == 1  # eval_every 0: only after the last epoch
    assert all(torch.equal(v, val.seen[-1][k]) for k, v in weights(model).items())
    assert not (tmp_path / "run" / SELECTED_FILE).exists()


def test_select_is_checked():
    model = make_model(**{"train.select": "best"})
    with pytest.raises(ValueError, match="train.select='best'"):
        fit(model, make_loader(), model.cfg.train, eval_fn=lambda m: {"R1": 0.0}, progress=False)


def test_select_val_without_a_validation_split_warns_and_keeps_the_last():
    from tbpr import experiments
    with pytest.warns(UserWarning, match="no validation split"):
        assert experiments._validation({"train": [], "val": []}, preset("ssan", "smoke"), "cpu") is None

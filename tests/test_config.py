"""Configs are data: overrides, presets, hashing, YAML round trip."""
from dataclasses import dataclass, field

import pytest

from tbpr.config import ModelConfig, TrainConfig, apply_overrides, config_hash, load_config, save_config
from tbpr.papers import preset


@dataclass
class ToyConfig(ModelConfig):
    width: int = 8
    use_part: bool = True
    sizes: tuple[int, ...] = (1, 2)
    extra: dict = field(default_factory=dict)


def test_dotted_and_nested_overrides_agree():
    a = apply_overrides(ToyConfig(), {"train.lr": 0.5, "width": 3})
    b = apply_overrides(ToyConfig(), {"train": {"lr": 0.5}, "width": 3})
    assert a == b and a.train.lr == 0.5 and a.width == 3
    assert a.train.epochs == TrainConfig().epochs  # untouched fields keep their defaults


def test_override_leaves_the_original_untouched():
    cfg = ToyConfig()
    apply_overrides(cfg, {"train.lr": 0.5})
    assert cfg.train.lr == TrainConfig().lr


def test_unknown_field_is_a_clear_error():
    with pytest.raises(KeyError, match="no field 'widht'"):
        apply_overrides(ToyConfig(), {"widht": 3})


def test_lists_from_yaml_become_tuples():
    assert apply_overrides(ToyConfig(), {"sizes": [4, 5]}).sizes == (4, 5)


def test_hash_changes_with_any_field():
    assert config_hash(ToyConfig()) == config_hash(ToyConfig())
    assert config_hash(ToyConfig()) != config_hash(apply_overrides(ToyConfig(), {"train.lr": 2e-3}))


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(ToyConfig(), {"width": 5, "train.milestones": [3, 4], "extra": {"a": 1}})
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(ToyConfig, tmp_path / "c.yaml") == cfg


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        preset("ssan", "fast")

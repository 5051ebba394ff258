"""The experiment config: YAML round trip, overrides, and errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecl.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_diff,
    config_hash,
    config_to_dict,
    load_config,
    save_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))


def test_round_trip_default(tmp_path):
    cfg = apply_overrides(
        ExperimentConfig(),
        [
            "loss.lambda=0.25",
            "optim.milestones=[0.3, 0.9]",
            "data.options={foo: 1}",
            "model.target_layer=layer3",
        ],
    )
    path = save_config(cfg, tmp_path / "c.yaml")
    assert load_config(path) == apply_overrides(cfg, ["run.name=c"])


def test_yaml_uses_lambda_not_lambda_(tmp_path):
    text = save_config(ExperimentConfig(), tmp_path / "c.yaml").read_text()
    assert "lambda:" in text and "lambda_" not in text


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_presets_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    assert cfg.run.name == path.stem
    again = load_config(save_config(cfg, tmp_path / path.name))
    assert again == cfg


def test_presets_exist():
    names = {p.name for p in PRESETS}
    for name in (
        "faceparts-quick.yaml",
        "faceparts-full.yaml",
        "lfw-quick.yaml",
        "lfw-full.yaml",
        "casia-r50.yaml",
    ):
        assert name in names


def test_overrides_parse_yaml_values():
    cfg = apply_overrides(
        ExperimentConfig(),
        [
            "optim.lr=1e-3",
            "run.compile=true",
            "optim.clip_grad_norm=null",
            "loss.lambda_=2",
            "optim.epochs=3",
        ],
    )
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.run.compile is True
    assert cfg.optim.clip_grad_norm is None
    assert cfg.loss.lambda_ == 2.0
    assert cfg.optim.epochs == 3 and isinstance(cfg.optim.epochs, int)


def test_overrides_do_not_mutate_input():
    cfg = ExperimentConfig()
    apply_overrides(cfg, ["optim.lr=0.5"])
    assert cfg.optim.lr == ExperimentConfig().optim.lr


def test_unknown_key_names_the_key_and_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.learning_rate'.*lr"):
        apply_overrides(ExperimentConfig(), ["optim.learning_rate=0.1"])


def test_unknown_key_in_yaml_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  lamda: 1.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'loss\.lamda'.*lambda"):
        load_config(path)


def test_unknown_section_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match="unknown config section 'trainer'"):
        load_config(path)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("loss.method=ecl", "loss.method.*none, ecloss, icnn, sad"),
        ("optim.optimizer=adam", "optim.optimizer.*sgd, adamw"),
        ("run.amp=fp8", "run.amp"),
        ("run.device=tpu", "run.device"),
        ("optim.batch_size=abc", "optim.batch_size.*integer"),
        ("optim.lr=-1", "optim.lr.*positive"),
        ("model.dropout=1.5", "model.dropout"),
        ("optim.lr", "section.key=value"),
        ("optim.batch_size=10", None),  # valid: checks the parametrisation itself can pass
    ],
)
def test_invalid_values_are_named(override, pattern):
    if pattern is None:
        apply_overrides(ExperimentConfig(), [override])
        return
    with pytest.raises(ConfigError, match=pattern):
        apply_overrides(ExperimentConfig(), [override])


def test_missing_file_lists_presets(tmp_path):
    with pytest.raises(FileNotFoundError, match="faceparts-quick.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_hash_ignores_result_neutral_keys_only():
    base = ExperimentConfig()
    assert config_hash(base) == config_hash(apply_overrides(base, ["run.device=cpu", "run.log_every=1"]))
    assert config_hash(base) != config_hash(apply_overrides(base, ["loss.gamma=0.1"]))
    assert config_diff(base, apply_overrides(base, ["loss.gamma=0.1", "run.progress=false"])) == {
        "loss.gamma": (0.0, 0.1)
    }


def test_to_dict_has_all_sections():
    assert list(config_to_dict(ExperimentConfig())) == ["data", "model", "loss", "optim", "run"]

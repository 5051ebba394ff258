"""One dataclass configuration per experiment, loaded from and saved to YAML.

An :class:`ExperimentConfig` has five sections: ``data``, ``model``, ``loss``, ``optim`` and
``run``. Every YAML file in ``configs/`` is one such config; any field may be overridden on the
command line with ``--set section.key=value`` (the value is parsed as YAML, so ``1e-3``, ``true``,
``null`` and ``[0.5, 0.75]`` all work). An unknown section or key is an error that names the key and
lists the valid ones, so a typo never silently trains the wrong experiment.

The YAML key for the regulariser weight is ``lambda`` (``lambda`` is a Python keyword, so the
dataclass field is ``lambda_``; both spellings are accepted in YAML and in overrides).

Example:
    >>> from ecl.config import ExperimentConfig, apply_overrides
    >>> cfg = apply_overrides(ExperimentConfig(), ["loss.method=none", "optim.lr=1e-3"])
    >>> cfg.loss.method, cfg.optim.lr
    ('none', 0.001)
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "RunConfig",
    "ExperimentConfig",
    "ConfigError",
    "load_config",
    "save_config",
    "config_to_dict",
    "config_from_dict",
    "config_to_yaml",
    "apply_overrides",
    "validate_config",
    "config_hash",
    "config_diff",
    "RESULT_NEUTRAL_KEYS",
]


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type or invalid choice."""


@dataclass
class DataConfig:
    """Which training data, at which size.

    Attributes:
        name: dataset for ``ecl.data.build_dataset``: ``faceparts`` (built in, synthetic),
            ``lfw``, ``celeba``, ``folder`` / ``orl`` / ``casia`` / ``vggface2`` (one sub-folder per
            identity) or ``bin`` (an InsightFace pack).
        root: folder of a real dataset (unused by ``faceparts``). ``~`` and environment
            variables are expanded.
        split: the training split passed to ``build_dataset``.
        image_size: side S of the square training images, in pixels.
        num_identities: FaceParts only: number of synthetic identities.
        images_per_identity: FaceParts only: images per identity.
        seed: seed of the dataset itself (which synthetic faces, which identities).
        jitter: maximum translation as a fraction of the image (0 = none), applied with
            ``ecl.data.jittered``: each image gets its own fixed shift (a function of seed and
            index), i.e. an unaligned copy of the data; the paper trains on unaligned crops.
        hflip: random horizontal flips of training batches (the usual face-recognition
            augmentation; it swaps image-left and image-right parts).
        num_workers: data-loader worker processes; ``-1`` picks ``min(8, cpu_count)`` on CUDA
            and 0 on CPU (where the synthetic data is generated in memory).
        options: further keyword arguments for ``build_dataset`` (dataset specific).
    """

    name: str = "faceparts"
    root: str | None = None
    split: str = "train"
    image_size: int = 112
    num_identities: int = 64
    images_per_identity: int = 16
    seed: int = 0
    jitter: float = 0.0
    hflip: bool = False
    num_workers: int = -1
    options: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The backbone, its embedding and the target layer that the explainability loss acts on.

    Attributes:
        backbone: a timm model name (``resnet18``, ``resnet50``, ``resnet10t`` ...).
        embedding_dim: size D of the face embedding.
        target_layer: name of the target layer (see ``FaceModel.layer_names()``); ``null``
            picks the model's default (a map of about 28 x 28 at 112 x 112).
        face_stem: replace the ImageNet stem by a face-recognition stem (stride 2 less).
        output_stride: timm ``output_stride`` (8, 16 or 32), ``null`` for the default.
        dropout: dropout before the embedding layer.
        forward_mask: multiply the target activations by their template before later layers
            (ICNN's forward mask, METHOD section 4).
        mask_beta: beta of the forward-mask template.
        pretrained: start from ImageNet weights (needs a download; never in tests).
    """

    backbone: str = "resnet18"
    embedding_dim: int = 512
    target_layer: str | None = None
    face_stem: bool = True
    output_stride: int | None = None
    dropout: float = 0.0
    forward_mask: bool = False
    mask_beta: float = 4.0
    pretrained: bool = False


@dataclass
class LossConfig:
    """The identity loss and the explainability regulariser.

    The training objective, by ``method`` (METHOD section 4 and 5):

    - ``none`` (the baseline): ``L_id``
    - ``ecloss``: ``L_id + lambda * (L_match + gamma * L_div + consistency * L_cons)``
    - ``icnn``: ``L_id + lambda * icnn_filter_loss``
    - ``sad``: ``L_id + gamma * L_div``

    Attributes:
        identity: ``arcface``, ``cosface`` or ``softmax``.
        s: logit scale of the margin head.
        margin: additive angular (ArcFace) or cosine (CosFace) margin; ``null`` for the head's
            default (0.5 for ArcFace, 0.35 for CosFace, none for softmax).
        method: the regulariser: ``none``, ``ecloss``, ``icnn`` or ``sad``.
        lambda_: weight of the regulariser (YAML key ``lambda``).
        gamma: weight of the diversity term ``L_div``.
        consistency: weight of the part-consistency term ``L_cons`` (``ecl.losses.consistency_loss``;
            this project's choice, 0 for none).
        beta: template slope (8 by default; 4 in ICNN).
        peak: peak selection, ``argmax``, ``centroid``, ``subcell`` or ``anchored`` (see
            ``ecl.losses.find_peaks``).
        tau: ICNN negative-template value, ``null`` for ``0.5 / n^2``.
        alpha: ICNN positive-template prior, ``null`` for ``n^2 / (1 + n^2)``.
    """

    identity: str = "arcface"
    s: float = 64.0
    margin: float | None = None
    method: str = "ecloss"
    # ECLoss's default setting (ecl.losses.DEFAULT_WEIGHT, DEFAULT_BETA, DEFAULT_PEAK; a test checks).
    lambda_: float = 10.0
    gamma: float = 0.0
    consistency: float = 0.0
    beta: float = 8.0
    peak: str = "anchored"
    tau: float | None = None
    alpha: float | None = None


@dataclass
class OptimConfig:
    """Optimiser, batch and learning-rate schedule.

    Attributes:
        optimizer: ``sgd`` (with momentum, Nesterov off) or ``adamw``.
        lr: peak learning rate (reached after the warm-up).
        weight_decay: decoupled for AdamW, L2 for SGD; not applied to norms and biases.
        momentum: SGD momentum (AdamW uses its default betas).
        batch_size: the *global* batch: split evenly over processes under DDP.
        accum_steps: gradient accumulation: each step runs ``accum_steps`` micro-batches of
            ``batch_size / (accum_steps * world_size)`` images.
        epochs: passes over the training set; ignored when ``max_steps`` is set.
        max_steps: total optimisation steps (the length of the schedule), overrides ``epochs``.
        warmup_steps: linear warm-up from ``lr * warmup_start`` to ``lr``.
        warmup_start: warm-up starts at this fraction of ``lr``.
        schedule: after the warm-up: ``cosine`` (to ``lr * min_lr_ratio``), ``step`` (times
            ``step_gamma`` at each milestone) or ``constant``.
        milestones: ``step`` schedule milestones as fractions of the total steps.
        step_gamma: factor applied at each milestone.
        min_lr_ratio: final learning rate of the cosine schedule, as a fraction of ``lr``.
        clip_grad_norm: clip the global gradient norm to this value, ``null`` for no clipping.
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 64
    accum_steps: int = 1
    epochs: int = 10
    max_steps: int | None = None
    warmup_steps: int = 0
    warmup_start: float = 0.1
    schedule: str = "cosine"
    milestones: list = field(default_factory=lambda: [0.5, 0.75])
    step_gamma: float = 0.1
    min_lr_ratio: float = 0.0
    clip_grad_norm: float | None = 5.0


@dataclass
class RunConfig:
    """How the run executes: device, precision, seeds, checkpoints and logging.

    Attributes:
        name: run name; the run folder of ``load_or_train`` is ``<root>/<name>-<hash>``.
        seed: seed of the model initialisation, data order, augmentation and dropout.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: mixed precision: ``auto`` (bf16 where supported, else fp16 with a grad scaler, off
            on CPU and MPS), ``bf16``, ``fp16`` or ``off``.
        channels_last: store the model and images channels-last (faster convolutions on GPUs).
        compile: wrap the backbone in ``torch.compile``.
        checkpoint_every: write a checkpoint every N steps (0 = only at the end).
        keep_checkpoints: number of most recent checkpoints kept on disk.
        log_every: write a metrics line every N steps.
        deterministic: ``torch.use_deterministic_algorithms`` and deterministic cuDNN (slower).
        progress: show a tqdm progress bar.
        out_dir: run folder for ``fit`` when none is given; ``null`` uses ``runs/<name>-<hash>``.
    """

    name: str | None = None
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    deterministic: bool = False
    progress: bool = True
    out_dir: str | None = None


@dataclass
class ExperimentConfig:
    """A complete experiment: data, model, loss, optimisation and run settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}

# YAML spelling -> dataclass field name, for keys that are Python keywords.
_ALIASES = {"lambda": "lambda_"}
_YAML_NAMES = {v: k for k, v in _ALIASES.items()}

_CHOICES: dict[str, tuple[str, ...]] = {
    # ecl.data.DATASETS (not imported here: the config module stays light).
    "data.name": ("faceparts", "lfw", "celeba", "folder", "orl", "casia", "vggface2", "bin"),
    "loss.identity": ("arcface", "cosface", "softmax"),
    "loss.method": ("none", "ecloss", "icnn", "sad"),
    "loss.peak": ("argmax", "centroid", "subcell", "anchored"),
    "optim.optimizer": ("sgd", "adamw"),
    "optim.schedule": ("cosine", "step", "constant"),
    "run.amp": ("auto", "bf16", "fp16", "off"),
}

# Keys that do not change the trained weights (where and how verbosely a run executes, and the
# layout of tensors in memory). They are left out of `config_hash`, so a run trained on a GPU is
# found again on a laptop, and they may differ between a checkpoint and the config it is loaded with.
RESULT_NEUTRAL_KEYS = frozenset(
    {
        "data.num_workers",
        "run.name",
        "run.device",
        "run.channels_last",
        "run.compile",
        "run.checkpoint_every",
        "run.keep_checkpoints",
        "run.log_every",
        "run.progress",
        "run.out_dir",
    }
)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _valid_keys(cls: type) -> list[str]:
    return [_YAML_NAMES.get(f.name, f.name) for f in dataclasses.fields(cls)]


def _resolve_key(section: str, key: str) -> str:
    """Map a YAML key to the field name of ``section``; raise naming the valid keys if unknown."""
    cls = _SECTIONS[section]
    name = _ALIASES.get(key, key)
    if name not in {f.name for f in dataclasses.fields(cls)}:
        valid = ", ".join(_valid_keys(cls))
        raise ConfigError(f"unknown config key '{section}.{key}'; valid keys of '{section}' are: {valid}")
    return name


def _resolve_section(section: str) -> str:
    if section not in _SECTIONS:
        raise ConfigError(f"unknown config section '{section}'; valid sections are: {', '.join(_SECTIONS)}")
    return section


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a parsed YAML value to the annotated field type, or raise naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"'{where}' cannot be {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"'{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"'{where}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
        raise ConfigError(f"'{where}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string: accept it as the number it means.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{where}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{where}' must be a string, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"'{where}' must be a list such as [0.5, 0.75], got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"'{where}' must be a mapping such as {{key: value}}, got {value!r}")
    return value


def config_from_dict(raw: dict | None) -> ExperimentConfig:
    """Build a validated config from a nested dict (as read from YAML); missing keys keep defaults.

    Raises:
        ConfigError: an unknown section or key (named, with the valid ones), a value of the wrong
            type, or an invalid choice.
    """
    cfg = ExperimentConfig()
    if raw is None:
        return cfg
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    for section, values in raw.items():
        _resolve_section(str(section))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping of keys, got {values!r}")
        for key, value in values.items():
            _set(cfg, str(section), str(key), value)
    validate_config(cfg)
    return cfg


def _set(cfg: ExperimentConfig, section: str, key: str, value: Any) -> None:
    name = _resolve_key(section, key)
    sub = getattr(cfg, section)
    tp = _field_types(type(sub))[name]
    setattr(sub, name, _coerce(value, tp, f"{section}.{_YAML_NAMES.get(name, name)}"))


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """The config as a nested dict with YAML key names (``lambda``, not ``lambda_``)."""
    out: dict[str, dict] = {}
    for section in _SECTIONS:
        sub = getattr(cfg, section)
        out[section] = {
            _YAML_NAMES.get(f.name, f.name): copy.deepcopy(getattr(sub, f.name))
            for f in dataclasses.fields(sub)
        }
    return out


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """The config as YAML text (sections and keys in declaration order)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config, apply ``section.key=value`` overrides and validate.

    When the file does not set ``run.name``, the file name without extension is used.

    Args:
        path: a YAML file such as ``configs/faceparts-quick.yaml``.
        overrides: strings ``section.key=value`` applied after loading.

    Returns:
        The validated :class:`ExperimentConfig`.

    Raises:
        FileNotFoundError: the file does not exist (the message lists the presets in ``configs/``).
        ConfigError: unknown keys, wrong types or invalid choices.
    """
    path = Path(path)
    if not path.is_file():
        presets = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
        hint = f"; presets in configs/: {', '.join(presets)}" if presets else ""
        raise FileNotFoundError(f"config file {path} does not exist{hint}")
    with open(path, encoding="utf-8") as fh:
        try:
            raw = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    try:
        cfg = config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    if cfg.run.name is None:
        cfg.run.name = path.stem
    return apply_overrides(cfg, overrides)


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the config as YAML (``load_config`` reads it back to an equal config).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_yaml(cfg), encoding="utf-8")
    return path


_OVERRIDE = re.compile(r"^\s*([A-Za-z_]\w*)\.([A-Za-z_]\w*)\s*=(.*)$", re.S)


def apply_overrides(cfg: ExperimentConfig, overrides: typing.Sequence[str]) -> ExperimentConfig:
    """Return a copy of ``cfg`` with ``section.key=value`` overrides applied and validated.

    The value is parsed with ``yaml.safe_load``: ``optim.lr=1e-3``, ``run.compile=true``,
    ``model.target_layer=null``, ``optim.milestones=[0.5,0.8]``.

    Raises:
        ConfigError: a malformed override, an unknown section or key, or an invalid value.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        match = _OVERRIDE.match(item)
        if match is None:
            raise ConfigError(
                f"override {item!r} is not of the form section.key=value (e.g. loss.lambda=0.5)"
            )
        section, key, text = match.groups()
        _resolve_section(section)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({err})") from err
        _set(cfg, section, key, value)
    validate_config(cfg)
    return cfg


def validate_config(cfg: ExperimentConfig) -> None:
    """Check choices and ranges; raise :class:`ConfigError` naming the key and the fix."""
    flat = _flatten(cfg)
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"'{key}' is {flat[key]!r}; choose one of: {', '.join(choices)}")
    device = cfg.run.device
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"'run.device' is {device!r}; choose auto, cpu, cuda, cuda:N or mps")
    positive = {
        "data.image_size": cfg.data.image_size,
        "data.num_identities": cfg.data.num_identities,
        "data.images_per_identity": cfg.data.images_per_identity,
        "model.embedding_dim": cfg.model.embedding_dim,
        "optim.lr": cfg.optim.lr,
        "optim.batch_size": cfg.optim.batch_size,
        "optim.accum_steps": cfg.optim.accum_steps,
        "optim.epochs": cfg.optim.epochs,
        "run.log_every": cfg.run.log_every,
        "run.keep_checkpoints": cfg.run.keep_checkpoints,
        "loss.s": cfg.loss.s,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"'{key}' must be positive, got {value!r}")
    non_negative = {
        "data.jitter": cfg.data.jitter,
        "model.dropout": cfg.model.dropout,
        "loss.lambda": cfg.loss.lambda_,
        "loss.gamma": cfg.loss.gamma,
        "loss.consistency": cfg.loss.consistency,
        "loss.margin": 0.0 if cfg.loss.margin is None else cfg.loss.margin,
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.momentum": cfg.optim.momentum,
        "optim.warmup_steps": cfg.optim.warmup_steps,
        "optim.min_lr_ratio": cfg.optim.min_lr_ratio,
        "run.checkpoint_every": cfg.run.checkpoint_every,
    }
    for key, value in non_negative.items():
        if not value >= 0:
            raise ConfigError(f"'{key}' must be >= 0, got {value!r}")
    if cfg.optim.max_steps is not None and cfg.optim.max_steps <= 0:
        raise ConfigError(f"'optim.max_steps' must be positive or null, got {cfg.optim.max_steps}")
    if cfg.optim.clip_grad_norm is not None and cfg.optim.clip_grad_norm <= 0:
        raise ConfigError("'optim.clip_grad_norm' must be positive, or null for no clipping")
    if not 0 <= cfg.model.dropout < 1:
        raise ConfigError(f"'model.dropout' must be in [0, 1), got {cfg.model.dropout}")
    if not 0 <= cfg.data.jitter < 0.5:
        raise ConfigError(f"'data.jitter' must be in [0, 0.5), got {cfg.data.jitter}")
    if cfg.optim.batch_size % cfg.optim.accum_steps:
        raise ConfigError(
            f"'optim.batch_size' ({cfg.optim.batch_size}) must be divisible by 'optim.accum_steps' "
            f"({cfg.optim.accum_steps})"
        )
    if not all(isinstance(m, (int, float)) and 0 < m < 1 for m in cfg.optim.milestones):
        raise ConfigError(
            f"'optim.milestones' are fractions of the total steps in (0, 1), got {cfg.optim.milestones}"
        )


def _flatten(cfg: ExperimentConfig) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in config_to_dict(cfg).items()
        for key, value in values.items()
    }


# Keys added after run folders existed, with the value that reproduces the behaviour from before them.
# While a key holds that value it is left out of `config_hash`, so the run folders trained before the key
# existed keep their names (and are found again); any other value is part of the hash as usual.
_HASHED_UNLESS = {"loss.consistency": 0.0}


def config_hash(cfg: ExperimentConfig, length: int = 8) -> str:
    """A short hash of everything in the config that changes the trained weights.

    Keys in :data:`RESULT_NEUTRAL_KEYS` (device, logging, run name ...) are left out, so the same
    experiment has the same hash wherever it runs, and a changed experiment gets a new one.
    """
    flat = {
        k: v
        for k, v in _flatten(cfg).items()
        if k not in RESULT_NEUTRAL_KEYS and not (k in _HASHED_UNLESS and v == _HASHED_UNLESS[k])
    }
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_diff(
    a: ExperimentConfig, b: ExperimentConfig, ignore: typing.Iterable[str] = RESULT_NEUTRAL_KEYS
) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two configs, as ``{"section.key": (a_value, b_value)}``."""
    ignore = set(ignore)
    fa, fb = _flatten(a), _flatten(b)
    return {k: (fa[k], fb[k]) for k in fa if k not in ignore and fa[k] != fb[k]}

"""Training: one loop for CPU, one GPU and many GPUs, with exact resume.

The public entry points:

- :func:`fit` trains a config and returns a :class:`TrainResult`;
- :func:`load_or_train` returns the trained model of a config, training only when no finished
  checkpoint of exactly that config exists (the book calls this);
- :func:`load_run` loads a checkpoint (or a run folder's latest one) for evaluation;
- ``python -m ecl train --config FILE [--set k=v ...] [--out DIR] [--max-steps N] [--resume]``
  (:func:`add_subparser`, :func:`main`).

A run folder holds ``config.yaml``, ``metrics.jsonl`` (one JSON object per line: ``event`` is
``step``, ``epoch`` or ``end``) and ``checkpoints/step_NNNNNN/`` directories with
``model.safetensors`` (backbone weights under ``model.``, identity head under ``head.``),
``state.pt`` (optimiser, grad scaler and RNG states; plain tensors and containers, loaded with
``torch.load(weights_only=True)``), ``config.yaml``, ``meta.json`` and a copy of ``metrics.jsonl``.
``checkpoints/latest`` names the newest one. A checkpoint is written into a temporary folder and
renamed into place, and ``latest`` is replaced atomically, so a crash never leaves a half-written
checkpoint that looks complete.

Exact resume: the data order is a function of ``(run.seed, epoch)`` only, random flips a function of
``(run.seed, step)``, and the global RNG (dropout) is saved in every checkpoint, so on CPU a run
stopped at step k and resumed reaches the same weights as an uninterrupted run.

Multi-GPU: started with ``torchrun --nproc_per_node=N -m ecl train ...``, every process trains on
its slice of each global batch under DistributedDataParallel (NCCL on CUDA, gloo on CPU); process 0
writes checkpoints and logs. The sampler splits every global batch of ``optim.batch_size`` images
into equal contiguous slices, so N processes see exactly the images one process would see.
BatchNorm statistics are per process (no SyncBatchNorm, which needs GPUs): N processes with batch B
are exactly equivalent to one process with ``optim.accum_steps = N`` and batch B, not to one process
with one batch of B.

Very many identities: the identity head here is one ``(num_classes, embedding_dim)`` matrix,
replicated on every GPU, which is fine for CASIA-WebFace (10,575 identities: 21.7 M parameters at
D = 512). For millions of identities insightface's *partial FC* shards the class centres over the
GPUs (each holds ``num_classes / N`` rows), all-gathers the embeddings and labels of the global
batch, computes the logits of its own shard for a sampled subset of negative classes (e.g. 10%)
plus all positive ones, and computes the softmax with an all-reduce of the max and the sum of
exponentials across shards. This project does not implement it: its datasets have at most about
10 k identities, where the replicated head costs little.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecl.config import (
    ConfigError,
    ExperimentConfig,
    config_diff,
    config_from_dict,
    config_hash,
    load_config,
    save_config,
)

__all__ = [
    "TrainResult",
    "NonFiniteLossError",
    "fit",
    "load_or_train",
    "load_run",
    "load_checkpoint",
    "find_checkpoint",
    "run_dir_for",
    "read_metrics",
    "resolve_device",
    "resolve_amp",
    "learning_rate",
    "training_objective",
    "build_train_dataset",
    "build_model",
    "resolve_data_root",
    "add_subparser",
    "main",
]

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes:
        model: the trained ``FaceModel`` (unwrapped from DDP / ``torch.compile``), in eval mode.
        head: the identity head (``MarginHead``).
        config: the config that was trained.
        run_dir: the run folder.
        checkpoint: the last checkpoint written (``None`` only on processes other than 0).
        step: optimisation steps completed.
        total_steps: length of the schedule; the run is complete when ``step == total_steps``.
        history: the metrics logged by this call (dicts, as in ``metrics.jsonl``).
        seconds: wall time of this call.
    """

    model: nn.Module
    head: nn.Module
    config: ExperimentConfig
    run_dir: Path
    checkpoint: Path | None
    step: int
    total_steps: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.step >= self.total_steps

    @property
    def final_loss(self) -> float | None:
        steps = [h for h in self.history if h.get("event") == "step"]
        return steps[-1]["loss"] if steps else None


# --------------------------------------------------------------------------------- environment
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; under torchrun CUDA uses ``cuda:LOCAL_RANK``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"run.device={name!r} but CUDA is not available; use run.device=auto or cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"run.device={name!r} but MPS is not available; use run.device=auto or cpu")
    return device


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Mixed-precision dtype and whether a grad scaler is needed.

    ``auto``: bf16 on CUDA devices that support it, else fp16 with a grad scaler; off on CPU and
    MPS (CPU autocast is slower than float32 for these convolutions, and MPS autocast is partial).

    Returns:
        ``(dtype or None for off, use_grad_scaler)``.
    """
    if amp == "off":
        return None, False
    if amp == "auto":
        if device.type != "cuda":
            return None, False
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16":
        return torch.bfloat16, False
    if amp == "fp16":
        if device.type == "cpu":
            raise ConfigError("run.amp=fp16 is not supported on the CPU; use run.amp=bf16 or off")
        return torch.float16, device.type == "cuda"
    raise ConfigError(f"run.amp must be auto, bf16, fp16 or off, got {amp!r}")


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> _Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist()
    import torch.distributed as dist

    initialised_here = False
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_name in ("auto",) or device_name.startswith("cuda")
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
        initialised_here = True
    return _Dist(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), initialised_here
    )


# ------------------------------------------------------------------------------------ schedule
def learning_rate(step: int, optim_cfg, total_steps: int) -> float:
    """Learning rate of optimisation step ``step`` (0-based): linear warm-up, then the schedule.

    Args:
        step: index of the step about to be taken, ``0 <= step < total_steps``.
        optim_cfg: the ``optim`` section of the config.
        total_steps: length of the schedule.

    Returns:
        The learning rate for that step.
    """
    lr = optim_cfg.lr
    warmup = min(optim_cfg.warmup_steps, total_steps)
    if step < warmup:
        start = optim_cfg.warmup_start
        return lr * (start + (1.0 - start) * step / warmup)
    if optim_cfg.schedule == "constant":
        return lr
    if optim_cfg.schedule == "step":
        passed = sum(step >= m * total_steps for m in optim_cfg.milestones)
        return lr * optim_cfg.step_gamma**passed
    progress = (step - warmup) / max(1, total_steps - warmup)
    floor = optim_cfg.min_lr_ratio
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


# -------------------------------------------------------------------------------- data loading
def build_train_dataset(cfg: ExperimentConfig):
    """The training dataset of a config (``ecl.data.build_dataset`` plus optional jitter)."""
    import ecl.data

    data = cfg.data
    kwargs = dict(data.options)
    if data.name == "faceparts":
        kwargs.setdefault("num_identities", data.num_identities)
        kwargs.setdefault("images_per_identity", data.images_per_identity)
        kwargs.setdefault("seed", data.seed)
    root = resolve_data_root(data.root) if data.root is not None else None
    jitter = {"max_shift": data.jitter, "seed": data.seed} if data.jitter > 0 else None
    dataset = ecl.data.build_dataset(
        data.name, root, split=data.split, image_size=data.image_size, jitter=jitter, **kwargs
    )
    return dataset


def resolve_data_root(root: str) -> Path:
    """``data.root`` as a path: ``~`` and ``$VARS`` expanded; a relative path is looked up in the
    current folder first, then in the repository root (so ``../shared/data/lfw`` in a preset works
    from the repository and from ``book/``).

    Raises:
        FileNotFoundError: neither exists (the message says how to set the root).
    """
    path = Path(os.path.expandvars(os.path.expanduser(root)))
    candidates = (
        [path] if path.is_absolute() else [Path.cwd() / path, Path(__file__).resolve().parents[1] / path]
    )
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    tried = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"data.root {root!r} does not exist (looked for {tried}); point it at the dataset folder with "
        "--set data.root=/path/to/dataset"
    )


def _collate(items: list[dict]) -> tuple[Tensor, Tensor]:
    # Only images and labels are needed to train: skip stacking landmarks and part masks.
    images = torch.stack([item["image"] for item in items])
    labels = torch.as_tensor([int(item["label"]) for item in items], dtype=torch.long)
    return images, labels


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this process's slice of every global batch; the order is a function of (seed, epoch).

    Each epoch is a seeded permutation of the dataset cut into ``len(dataset) // global_batch``
    global batches (the remainder is dropped). Process ``rank`` of ``world_size`` takes the
    contiguous slice ``[rank * b, (rank + 1) * b)`` of each, ``b = global_batch / world_size``, so
    the images of one step do not depend on the number of processes. ``set_epoch(epoch,
    start_batch)`` skips the batches a resumed run has already consumed.

    Args:
        num_items: dataset length.
        global_batch: images per optimisation step over all processes.
        seed: base seed of the order.
        rank: this process.
        world_size: number of processes.
    """

    def __init__(
        self, num_items: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if global_batch % world_size:
            raise ConfigError(
                f"optim.batch_size={global_batch} must be divisible by the number of processes ({world_size})"
            )
        if num_items < global_batch:
            raise ConfigError(
                f"the training set has {num_items} images, fewer than optim.batch_size={global_batch}; "
                "lower optim.batch_size or use more data"
            )
        self.num_items = num_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=generator)
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * self.global_batch + self.rank * self.local_batch
            yield order[start : start + self.local_batch].tolist()


def _flip_mask(seed: int, step: int, global_batch: int, rank: int, local_batch: int) -> Tensor:
    # Decided over the global batch from (seed, step), then sliced: independent of process count.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * step + 1)
    flips = torch.rand(global_batch, generator=generator) < 0.5
    return flips[rank * local_batch : (rank + 1) * local_batch]


# ------------------------------------------------------------------------------------ the model
def build_model(cfg: ExperimentConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """A fresh ``FaceModel`` and identity head for a config (seed the RNG first for reproducibility)."""
    from ecl.losses import make_head
    from ecl.models import create_face_model

    m = cfg.model
    model = create_face_model(
        backbone=m.backbone,
        embedding_dim=m.embedding_dim,
        target_layer=m.target_layer,
        pretrained=m.pretrained,
        face_stem=m.face_stem,
        output_stride=m.output_stride,
        dropout=m.dropout,
        image_size=cfg.data.image_size,
        forward_mask=m.forward_mask,
        mask_beta=m.mask_beta,
    )
    head = make_head(cfg.loss.identity, m.embedding_dim, num_classes, s=cfg.loss.s, margin=cfg.loss.margin)
    return model, head


class _TrainModule(nn.Module):
    """Backbone plus head in one module, so DDP synchronises both with one wrapper."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, images: Tensor, labels: Tensor):
        output = self.model(images)
        logits = self.head(output.embeddings.float(), labels)  # the head computes in float32
        return output, logits


def training_objective(output, logits: Tensor, labels: Tensor, loss_cfg) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of one batch, by ``loss.method`` (see :class:`ecl.config.LossConfig`).

    Args:
        output: the model's ``FaceOutput`` (``embeddings``, ``activations``).
        logits: identity logits from the head, ``(B, num_classes)``.
        labels: identity labels, ``(B,)``.
        loss_cfg: the ``loss`` section.

    Returns:
        ``(loss, parts)``: the scalar to minimise and detached 0-dim tensors for logging
        (``id`` always; ``match``, ``div``, ``active``, ``icnn`` or ``sad`` by method).
    """
    from ecl.losses import ecloss, icnn_filter_loss, sad_loss

    loss_id = F.cross_entropy(logits.float(), labels)
    parts: dict[str, Tensor] = {"id": loss_id.detach()}
    method = loss_cfg.method
    activations = output.activations
    if method == "none":
        return loss_id, parts
    if method == "ecloss":
        reg, reg_parts = ecloss(
            activations, beta=loss_cfg.beta, gamma=loss_cfg.gamma, peak=loss_cfg.peak, return_parts=True
        )
        parts.update(reg_parts)
        return loss_id + loss_cfg.lambda_ * reg, parts
    if method == "icnn":
        reg = icnn_filter_loss(activations, tau=loss_cfg.tau, alpha=loss_cfg.alpha, beta=loss_cfg.beta)
        parts["icnn"] = reg.detach()
        return loss_id + loss_cfg.lambda_ * reg, parts
    if method == "sad":
        reg = sad_loss(activations)
        parts["div"] = reg.detach()
        return loss_id + loss_cfg.gamma * reg, parts
    raise ConfigError(f"loss.method must be none, ecloss, icnn or sad, got {method!r}")


def _build_optimizer(modules: Sequence[nn.Module], optim_cfg) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for module in modules:
        for _, param in module.named_parameters():
            if not param.requires_grad:
                continue
            # Norm scales and biases are 1-D: weight decay on them only hurts (standard practice).
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim_cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if optim_cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum)
    if optim_cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=optim_cfg.lr)
    raise ConfigError(f"optim.optimizer must be sgd or adamw, got {optim_cfg.optimizer!r}")


# --------------------------------------------------------------------------------- RNG handling
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # numpy's state holds an ndarray: stored as a tensor so weights_only loading accepts it.
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------- checkpoints
def run_dir_for(config: ExperimentConfig, root: str | Path = "runs") -> Path:
    """The run folder of a config: ``<root>/<run.name>-<config_hash>`` (or the hash alone)."""
    digest = config_hash(config)
    name = f"{config.run.name}-{digest}" if config.run.name else digest
    return Path(root) / name


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The events of a run's ``metrics.jsonl``, in order (see :func:`fit` for their keys)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}: is it a run folder written by ecl.train.fit?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint a path refers to: a checkpoint folder itself, or a run folder's latest one.

    Returns:
        The checkpoint folder, or ``None`` when the run folder holds no checkpoint yet.
    """
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    ckpt_root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = ckpt_root / "latest"
    if latest.is_file():
        candidate = ckpt_root / latest.read_text().strip()
        if (candidate / "model.safetensors").is_file():
            return candidate
    # `latest` missing or stale (crash between the two renames): take the highest complete step.
    steps = sorted(p for p in ckpt_root.glob("step_*") if (p / "meta.json").is_file())
    return steps[-1] if steps else None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_checkpoint(
    run_dir: Path,
    *,
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler,
    config: ExperimentConfig,
    step: int,
    total_steps: int,
    num_classes: int,
    rng: list[dict],
    keep: int,
) -> Path:
    from safetensors.torch import save_file

    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final = ckpt_root / name
    if not (final / "meta.json").is_file():
        tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
        # clone(): safetensors refuses shared storage, and contiguous() keeps channels_last out of the file.
        save_file(
            {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
            str(tmp / "model.safetensors"),
        )
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng,
        }
        torch.save(state, tmp / "state.pt")
        save_config(config, tmp / "config.yaml")
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file():
            shutil.copyfile(metrics, tmp / "metrics.jsonl")
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "total_steps": total_steps,
            "complete": step >= total_steps,
            "num_classes": num_classes,
            "config_hash": config_hash(config),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
        }
        # meta.json last: a folder without it is incomplete and is never picked up.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    _atomic_write_text(ckpt_root / "latest", name + "\n")
    old = sorted(p for p in ckpt_root.glob("step_*") if p.name != name)
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", config: ExperimentConfig | None = None
) -> dict[str, Any]:
    """Load a checkpoint's model, head, config and metadata (no optimiser state).

    Args:
        path: a checkpoint folder or a run folder (its latest checkpoint is used).
        map_location: device for the weights.
        config: when given, the checkpoint's config must agree with it on every key that changes
            the weights (see ``ecl.config.RESULT_NEUTRAL_KEYS``).

    Returns:
        ``{"model", "head", "config", "meta", "path"}``; modules in eval mode.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the checkpoint was trained with a different config (the keys are named).
    """
    from safetensors.torch import load_file

    ckpt = find_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(
            f"no checkpoint in {path} (expected model.safetensors, or checkpoints/latest in a run folder); "
            "train one with `python -m ecl train --config FILE --out DIR`"
        )
    meta = json.loads((ckpt / "meta.json").read_text()) if (ckpt / "meta.json").is_file() else {}
    stored = _read_config(ckpt / "config.yaml")
    claimed_hash = meta.get("config_hash")
    if claimed_hash is not None and claimed_hash != config_hash(stored):
        raise ValueError(
            f"checkpoint {ckpt}: config.yaml does not match the config the weights were trained with "
            f"(hash {config_hash(stored)} vs {claimed_hash} in meta.json); it was edited after training. "
            "Restore it, or use the run folder's config.yaml"
        )
    if config is not None:
        _check_same_experiment(stored, config, ckpt)
    num_classes = meta.get("num_classes")
    if num_classes is None:
        num_classes = load_file(str(ckpt / "model.safetensors"))["head.weight"].shape[0]
    model, head = build_model(stored, int(num_classes))
    _load_weights(ckpt, model, head)
    model.to(map_location).eval()
    head.to(map_location).eval()
    return {"model": model, "head": head, "config": stored, "meta": meta, "path": ckpt}


def load_run(
    run_dir_or_checkpoint: str | Path,
    map_location: str | torch.device = "cpu",
    config: ExperimentConfig | None = None,
) -> tuple[nn.Module, ExperimentConfig]:
    """The trained model of a run folder (latest checkpoint) or checkpoint folder, in eval mode.

    Args:
        run_dir_or_checkpoint: a run folder or a checkpoint folder.
        map_location: device for the weights.
        config: when given, checked against the checkpoint's own config (differences are named).

    Returns:
        ``(model, config)``: the ``FaceModel`` and the config it was trained with.
    """
    loaded = load_checkpoint(run_dir_or_checkpoint, map_location=map_location, config=config)
    return loaded["model"], loaded["config"]


def _read_config(path: Path) -> ExperimentConfig:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint config {path} is missing; the checkpoint is incomplete")
    return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def _check_same_experiment(stored: ExperimentConfig, claimed: ExperimentConfig, where: Path) -> None:
    diff = config_diff(stored, claimed)
    if diff:
        lines = "; ".join(
            f"{k}: checkpoint {a!r} vs config {b!r}" for k, a, b in ((k, *v) for k, v in diff.items())
        )
        raise ValueError(
            f"checkpoint {where} was trained with a different config ({lines}); "
            "use the checkpoint's own config.yaml, or train the new config in another run folder"
        )


def _load_weights(ckpt: Path, model: nn.Module, head: nn.Module) -> None:
    """Copy a checkpoint's weights into existing modules (they keep their device and memory format)."""
    from safetensors.torch import load_file

    tensors = load_file(str(ckpt / "model.safetensors"))
    _load_state(
        model, {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, ckpt, "model"
    )
    _load_state(
        head, {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}, ckpt, "head"
    )


def _load_state(module: nn.Module, state: dict[str, Tensor], where: Path, what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {where} does not fit the {what} its config builds: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}; was it written by another version of ecl?"
        )


# ------------------------------------------------------------------------------------ callbacks
def _dispatch(callbacks: Iterable, event: dict) -> None:
    hook = {"step": "on_step", "epoch": "on_epoch", "end": "on_end"}[event["event"]]
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(event)
        elif callable(callback):
            callback(event)


def _scalar(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


# ----------------------------------------------------------------------------------------- fit
def fit(
    config: ExperimentConfig,
    out_dir: str | Path | None = None,
    callbacks: Sequence[Callable[[dict], None] | Any] = (),
    max_steps: int | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a config: model, head and optimiser from scratch, or resumed from the run's latest checkpoint.

    Args:
        config: the experiment.
        out_dir: run folder; default ``run.out_dir``, else ``runs/<run.name>-<config_hash>``.
        callbacks: called with an event dict after every step (``event="step"``: ``step``,
            ``epoch``, ``loss``, ``id``, regulariser parts, ``lr``, ``grad_norm``,
            ``images_per_s``, ``total_steps``), at the end of every epoch (``event="epoch"``: epoch
            means) and at the end (``event="end"``). A callback is a callable, or an object with
            ``on_step`` / ``on_epoch`` / ``on_end`` methods. Only process 0 calls them.
        max_steps: stop after this many steps in total (the schedule still spans the whole run, so
            ``--resume`` later continues exactly); ``None`` trains to the end.
        resume: continue from the latest checkpoint in ``out_dir`` (its config must match).

    Returns:
        A :class:`TrainResult`.

    Raises:
        FileExistsError: ``out_dir`` already holds checkpoints and ``resume`` is False.
        FileNotFoundError: ``resume`` is True and there is no checkpoint to resume from.
        NonFiniteLossError: the loss became NaN or infinite (names the step and last checkpoint).
        KeyboardInterrupt: re-raised after writing a resumable checkpoint.
    """
    t_start = time.perf_counter()
    cfg = config
    dist_info = _init_distributed(cfg.run.device)
    try:
        return _fit(cfg, out_dir, callbacks, max_steps, resume, dist_info, t_start)
    finally:
        if dist_info.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _fit(cfg, out_dir, callbacks, max_steps, resume, dist_info: _Dist, t_start: float) -> TrainResult:
    device = resolve_device(cfg.run.device)
    amp_dtype, use_scaler = resolve_amp(cfg.run.amp, device)
    run_dir = Path(out_dir if out_dir is not None else (cfg.run.out_dir or run_dir_for(cfg)))
    is_main = dist_info.main

    # Decide fresh vs resume before any work, so a wrong flag fails fast.
    ckpt = find_checkpoint(run_dir) if run_dir.exists() else None
    if resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir} to resume from; run without --resume")
    if not resume and ckpt is not None:
        raise FileExistsError(
            f"{run_dir} already holds checkpoint {ckpt.name}; pass --resume (resume=True) to continue it, "
            "or choose another --out folder"
        )

    if cfg.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    dataset = build_train_dataset(cfg)
    num_classes = int(dataset.num_classes)
    optim_cfg = cfg.optim
    world = dist_info.world_size
    sampler = GlobalBatchSampler(len(dataset), optim_cfg.batch_size, cfg.run.seed, dist_info.rank, world)
    local_batch = sampler.local_batch
    if local_batch % optim_cfg.accum_steps:
        raise ConfigError(
            f"the per-process batch ({local_batch}) must be divisible by optim.accum_steps ({optim_cfg.accum_steps})"
        )
    steps_per_epoch = sampler.batches_per_epoch
    total_steps = optim_cfg.max_steps or optim_cfg.epochs * steps_per_epoch
    stop_step = total_steps if max_steps is None else min(int(max_steps), total_steps)

    # Same initial weights on every process (DDP would broadcast them anyway).
    _seed_everything(cfg.run.seed)
    model, head = build_model(cfg, num_classes)
    memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    head.to(device)
    optimizer = _build_optimizer((model, head), optim_cfg)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None

    start_step = 0
    if ckpt is not None:
        stored = _read_config(ckpt / "config.yaml")
        _check_same_experiment(stored, cfg, ckpt)
        _load_weights(ckpt, model, head)
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        rng_states = state["rng"]
        _set_rng_state(rng_states[dist_info.rank] if dist_info.rank < len(rng_states) else rng_states[0])
        if is_main and (ckpt / "metrics.jsonl").is_file():
            # Drop lines logged after the checkpoint (they will be logged again).
            shutil.copyfile(ckpt / "metrics.jsonl", run_dir / "metrics.jsonl")
    else:
        # Different dropout noise on every process, from the same seed.
        torch.manual_seed(cfg.run.seed * 1_000_003 + 1 + dist_info.rank)
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.jsonl").write_text("", encoding="utf-8")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    train_module: nn.Module = _TrainModule(model, head)
    if cfg.run.compile:
        train_module.model = torch.compile(model)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_module = DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == "cuda" else None
        )

    num_workers = cfg.data.num_workers
    if num_workers < 0:
        num_workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        # A private generator: creating a loader iterator must not draw from the global RNG,
        # or resuming would shift the dropout noise.
        generator=torch.Generator().manual_seed(cfg.run.seed),
    )

    progress = None
    if is_main and cfg.run.progress and stop_step > start_step:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=stop_step,
            initial=start_step,
            desc=cfg.run.name or run_dir.name,
            unit="step",
            dynamic_ncols=True,
        )

    history: list[dict] = []
    metrics_path = run_dir / "metrics.jsonl"
    last_ckpt: Path | None = ckpt
    step = start_step
    epoch = step // steps_per_epoch
    epoch_sums: dict[str, float] = {}
    epoch_count = 0
    in_step = False
    rng_at_step_start: dict | None = None
    micro = local_batch // optim_cfg.accum_steps
    interval_start = time.perf_counter()
    interval_images = 0

    def log(record: dict) -> None:
        history.append(record)
        if is_main:
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def save(rng: list[dict]) -> Path | None:
        nonlocal last_ckpt
        if is_main:
            last_ckpt = _save_checkpoint(
                run_dir,
                model=model,
                head=head,
                optimizer=optimizer,
                scaler=scaler,
                config=cfg,
                step=step,
                total_steps=total_steps,
                num_classes=num_classes,
                rng=rng,
                keep=cfg.run.keep_checkpoints,
            )
        return last_ckpt

    def gathered_rng() -> list[dict]:
        if not dist_info.enabled:
            return [_rng_state()]
        import torch.distributed as dist

        states: list = [None] * world
        dist.all_gather_object(states, _rng_state())
        return states

    train_module.train()
    try:
        while step < stop_step:
            sampler.set_epoch(epoch, start_batch=step - epoch * steps_per_epoch)
            for images, labels in loader:
                in_step = True
                rng_at_step_start = _rng_state()
                lr = learning_rate(step, optim_cfg, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if cfg.data.hflip:
                    flips = _flip_mask(cfg.run.seed, step, optim_cfg.batch_size, dist_info.rank, local_batch)
                    images = torch.where(flips[:, None, None, None], images.flip(-1), images)
                images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                labels = labels.to(device, non_blocking=True)

                loss_sum = torch.zeros((), device=device)
                part_sums: dict[str, Tensor] = {}
                for k in range(optim_cfg.accum_steps):
                    chunk = slice(k * micro, (k + 1) * micro)
                    last_micro = k == optim_cfg.accum_steps - 1
                    sync = (
                        contextlib.nullcontext()
                        if (last_micro or not dist_info.enabled)
                        else train_module.no_sync()
                    )
                    with sync:
                        with torch.autocast(
                            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                        ):
                            output, logits = train_module(images[chunk], labels[chunk])
                        loss, parts = training_objective(output, logits, labels[chunk], cfg.loss)
                        loss = loss / optim_cfg.accum_steps
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    loss_sum += loss.detach()
                    for name, value in parts.items():
                        part_sums[name] = (
                            part_sums.get(name, 0.0)
                            + value.detach().float().to(device) / optim_cfg.accum_steps
                        )

                if dist_info.enabled:
                    import torch.distributed as dist

                    # Every process must agree on the loss (and so on stopping for NaN); the logged
                    # parts are averaged over processes too, so they describe the global batch.
                    names = list(part_sums)
                    packed = torch.stack([loss_sum.float(), *(part_sums[n].float() for n in names)])
                    dist.all_reduce(packed)
                    packed /= world
                    loss_sum = packed[0]
                    part_sums = {n: packed[i + 1] for i, n in enumerate(names)}
                loss_value = float(loss_sum.item())
                if not math.isfinite(loss_value):
                    where = (
                        str(last_ckpt)
                        if last_ckpt is not None
                        else "none (no checkpoint was written yet; set run.checkpoint_every)"
                    )
                    optimizer.zero_grad(set_to_none=True)
                    raise NonFiniteLossError(
                        f"the training loss is {loss_value} at step {step + 1} (epoch {epoch}); the weights were not "
                        f"updated with it. Last good checkpoint: {where}. Lower optim.lr, set optim.clip_grad_norm "
                        "or run.amp=off, then continue with --resume"
                    )

                if scaler is not None:
                    scaler.unscale_(optimizer)
                grad_norm = None
                if optim_cfg.clip_grad_norm is not None:
                    params = [p for g in optimizer.param_groups for p in g["params"]]
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, optim_cfg.clip_grad_norm))
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                step += 1
                in_step = False
                optimizer.zero_grad(set_to_none=True)

                interval_images += optim_cfg.batch_size
                record = {
                    "event": "step",
                    "step": step,
                    "epoch": epoch,
                    "loss": loss_value,
                    **{name: _scalar(value) for name, value in part_sums.items()},
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "total_steps": total_steps,
                }
                for name in ("loss", *part_sums):
                    epoch_sums[name] = epoch_sums.get(name, 0.0) + record[name]
                epoch_count += 1
                if step % cfg.run.log_every == 0 or step == stop_step:
                    elapsed = time.perf_counter() - interval_start
                    record["images_per_s"] = interval_images / elapsed if elapsed > 0 else None
                    interval_start, interval_images = time.perf_counter(), 0
                    log(record)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2g}", refresh=False)
                if is_main:
                    _dispatch(callbacks, record)
                if step % steps_per_epoch == 0:
                    # Logged before a checkpoint at the same step, so the checkpoint's metrics hold it.
                    epoch_record = {
                        "event": "epoch",
                        "epoch": epoch,
                        "step": step,
                        **{name: value / epoch_count for name, value in epoch_sums.items()},
                    }
                    log(epoch_record)
                    if is_main:
                        _dispatch(callbacks, epoch_record)
                    epoch_sums, epoch_count = {}, 0
                if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0 and step < stop_step:
                    save(gathered_rng())
                if step >= stop_step:
                    break
            epoch = step // steps_per_epoch
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        # Interrupted inside a step: its partial gradients are dropped and the RNG rewound to the
        # step's start, so the checkpoint is exactly "after `step` steps".
        rng = rng_at_step_start if in_step and rng_at_step_start is not None else _rng_state()
        optimizer.zero_grad(set_to_none=True)
        if step > start_step or ckpt is None:
            saved = save([rng])
        else:
            saved = last_ckpt
        if is_main:
            print(
                f"\ninterrupted after step {step}/{total_steps}; checkpoint: {saved}. "
                f"Continue with: python -m ecl train --config {run_dir / 'config.yaml'} --out {run_dir} --resume",
                file=sys.stderr,
            )
        raise
    finally:
        if progress is not None:
            progress.close()

    saved = save(gathered_rng()) if step > start_step or last_ckpt is None else last_ckpt
    seconds = time.perf_counter() - t_start
    end_record = {
        "event": "end",
        "step": step,
        "total_steps": total_steps,
        "complete": step >= total_steps,
        "seconds": seconds,
    }
    log(end_record)
    if is_main:
        _dispatch(callbacks, end_record)
    model.eval()
    head.eval()
    return TrainResult(
        model=model,
        head=head,
        config=cfg,
        run_dir=run_dir,
        checkpoint=saved if is_main else None,
        step=step,
        total_steps=total_steps,
        history=history,
        seconds=seconds,
    )


def load_or_train(
    config: ExperimentConfig,
    root: str | Path = "runs",
    callbacks: Sequence[Callable[[dict], None] | Any] = (),
    map_location: str | torch.device | None = None,
) -> tuple[nn.Module, Path]:
    """The trained model of a config: loaded when a finished run of exactly this config exists.

    The run folder is ``<root>/<run.name>-<config_hash>`` (:func:`run_dir_for`), so changing any
    key that affects the weights trains a new run. An unfinished run (interrupted, or stopped
    with ``max_steps``) is resumed.

    Args:
        config: the experiment.
        root: folder holding run folders.
        callbacks: passed to :func:`fit` when training.
        map_location: device of the returned model; default the config's device.

    Returns:
        ``(model, run_dir)``, the model in eval mode.
    """
    run_dir = run_dir_for(config, root)
    device = torch.device(map_location) if map_location is not None else resolve_device(config.run.device)
    ckpt = find_checkpoint(run_dir) if run_dir.exists() else None
    if ckpt is not None:
        meta = json.loads((ckpt / "meta.json").read_text())
        if meta.get("complete"):
            model, _ = load_run(ckpt, map_location=device, config=config)
            return model, run_dir
    result = fit(config, out_dir=run_dir, callbacks=callbacks, resume=ckpt is not None)
    return result.model.to(device).eval(), run_dir


# ------------------------------------------------------------------------------------------ CLI
_DESCRIPTION = """Train a face model with an explainability regulariser (or the baseline).

Examples:
  python -m ecl train --config configs/faceparts-quick.yaml
  python -m ecl train --config configs/faceparts-quick.yaml --set loss.method=none --out runs/baseline
  python -m ecl train --config configs/faceparts-quick.yaml --out runs/x --max-steps 20
  python -m ecl train --config configs/faceparts-quick.yaml --out runs/x --resume
  torchrun --nproc_per_node=4 -m ecl train --config configs/casia-r50.yaml --set data.root=/data/casia

The run folder holds config.yaml, metrics.jsonl and checkpoints/ (see ecl.train)."""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, metavar="FILE", help="experiment YAML, e.g. configs/faceparts-quick.yaml"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set loss.lambda=0.5 optim.lr=1e-3 (repeatable; values are parsed as YAML)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="run folder (default: run.out_dir, else runs/<name>-<config hash>)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop after N steps in total; the schedule still spans the whole run, so --resume continues it",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the run folder"
    )


def add_subparser(subparsers) -> None:
    """Register ``train`` with the ``python -m ecl`` command line."""
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML config",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments; returns the exit status (130 after Ctrl-C)."""
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = fit(cfg, out_dir=args.out, max_steps=args.max_steps, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    except (NonFiniteLossError, FileExistsError, FileNotFoundError, ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result.checkpoint is not None:
        status = (
            "complete"
            if result.complete
            else f"stopped at step {result.step}/{result.total_steps} (--resume continues)"
        )
        loss = result.final_loss
        loss_text = f", final loss {loss:.4f}" if loss is not None else ""
        print(f"{status}{loss_text}, {result.seconds:.1f} s; checkpoint: {result.checkpoint}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ecl.train ARGS`` (the same arguments as ``python -m ecl train``)."""
    parser = argparse.ArgumentParser(
        prog="python -m ecl.train",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

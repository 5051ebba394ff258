"""Training: one loop for CPU, one GPU and many GPUs, with exact resume.

The public entry points:

- :func:`fit` trains a config and returns a :class:`TrainResult`;
- :func:`load_or_train` returns the trained model of a config, training only when no finished
  checkpoint of exactly that config exists (the book calls this);
- :func:`train_step` is one optimisation step (forward, loss, backward, clipping, optimiser), the same
  one ``fit`` takes, for benchmarks and hand-written loops;
- ``python -m ecl train --config FILE [--set k=v ...] [--out DIR] [--max-steps N] [--resume]``.

``fit`` reads top to bottom as the recipe: prepare the run (:func:`_prepare`), take steps
(:func:`_train_loop`, :func:`train_step`), log them (:class:`_Log`), save checkpoints
(:mod:`ecl.checkpoint`), and save once more when interrupted. It leaves the process as it found it:
the global RNG states and every backend setting it changes (deterministic algorithms, cuDNN and TF32
flags, ``CUBLAS_WORKSPACE_CONFIG``) are restored when it returns or raises, so a training run in a
notebook does not change the cells after it.

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

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecl.checkpoint import (
    RunLock,
    check_same_experiment,
    find_checkpoint,
    load_run,
    load_training_state,
    load_weights,
    read_config,
    read_meta,
    run_dir_for,
    save_checkpoint,
)
from ecl.config import ConfigError, ExperimentConfig, config_hash, save_config
from ecl.data.factory import build_train_dataset
from ecl.data.sampler import GlobalBatchSampler, collate_images_labels, flip_mask
from ecl.losses import ecloss, icnn_filter_loss, sad_loss
from ecl.models import build_model
from ecl.optim import build_optimizer, learning_rate
from ecl.runtime import Processes, backend_settings, init_processes, resolve_amp
from ecl.utils import resolve_device, rng_state, seed_everything, set_rng_state

__all__ = [
    "NonFiniteLossError",
    "StepResult",
    "TrainModule",
    "TrainResult",
    "build_optimizer",
    "fit",
    "learning_rate",
    "load_or_train",
    "resolve_amp",
    "train_step",
    "training_objective",
]


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


# ----------------------------------------------------------------------------------- one step
class TrainModule(nn.Module):
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
    loss_id = F.cross_entropy(logits.float(), labels)
    parts: dict[str, Tensor] = {"id": loss_id.detach()}
    method = loss_cfg.method
    activations = output.activations
    if method == "none":
        return loss_id, parts
    if method == "ecloss":
        reg, reg_parts = ecloss(
            activations,
            beta=loss_cfg.beta,
            gamma=loss_cfg.gamma,
            peak=loss_cfg.peak,
            return_parts=True,
            consistency=loss_cfg.consistency,
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


@dataclass
class StepResult:
    """What :func:`train_step` returns.

    Attributes:
        loss: the step's loss (averaged over processes under DDP).
        parts: its logged parts (``id``, ``match`` ...), averaged the same way.
        grad_norm: the gradient norm before clipping, when clipping is on.
    """

    loss: float
    parts: dict[str, float]
    grad_norm: float | None


def train_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    loss_cfg,
    *,
    lr: float | None = None,
    accum_steps: int = 1,
    clip_grad_norm: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    world_size: int = 1,
) -> StepResult:
    """One optimisation step, exactly as :func:`fit` takes it.

    Runs ``accum_steps`` micro-batches (forward under autocast when ``amp_dtype`` is set, the
    :func:`training_objective`, backward), checks that the loss is finite, unscales and clips the
    gradients, steps the optimiser and clears the gradients.

    Args:
        module: a :class:`TrainModule` (or its DDP wrapper), in training mode.
        optimizer: the optimiser of the module's parameters.
        images: ``(B, 3, S, S)`` on the module's device; labels ``(B,)``.
        loss_cfg: the ``loss`` section of the config.
        lr: set as every parameter group's learning rate first (``None`` leaves it).
        accum_steps: micro-batches per step; ``B`` must be divisible by it.
        clip_grad_norm: clip the global gradient norm to this value.
        scaler: a grad scaler (fp16 on CUDA).
        amp_dtype: autocast dtype, ``None`` for float32.
        world_size: processes under DDP (the logged loss is averaged over them).

    Returns:
        A :class:`StepResult`.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite; the weights were not updated.
    """
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    device = images.device
    micro = images.shape[0] // accum_steps
    loss_sum = torch.zeros((), device=device)
    part_sums: dict[str, Tensor] = {}
    for k in range(accum_steps):
        chunk = slice(k * micro, (k + 1) * micro)
        last = k == accum_steps - 1
        sync = contextlib.nullcontext() if (last or world_size == 1) else module.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                output, logits = module(images[chunk], labels[chunk])
            loss, parts = training_objective(output, logits, labels[chunk], loss_cfg)
            loss = loss / accum_steps
            (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += loss.detach()
        for name, value in parts.items():
            part_sums[name] = part_sums.get(name, 0.0) + value.detach().float().to(device) / accum_steps
    if world_size > 1:
        import torch.distributed as dist

        # Every process must agree on the loss (and so on stopping for NaN); the logged parts are
        # averaged over processes too, so they describe the global batch.
        names = list(part_sums)
        packed = torch.stack([loss_sum.float(), *(part_sums[n].float() for n in names)])
        dist.all_reduce(packed)
        packed /= world_size
        loss_sum = packed[0]
        part_sums = {n: packed[i + 1] for i, n in enumerate(names)}
    loss_value = float(loss_sum.item())
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(f"the training loss is {loss_value}")
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = None
    if clip_grad_norm is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    parts_out = {
        name: float(value.item()) if isinstance(value, Tensor) else float(value)
        for name, value in part_sums.items()
    }
    return StepResult(loss=loss_value, parts=parts_out, grad_norm=grad_norm)


# ------------------------------------------------------------------------------ preparing a run
@dataclass
class _Run:
    """Everything the loop of one :func:`fit` call works with."""

    cfg: ExperimentConfig
    dist: Processes
    device: torch.device
    amp_dtype: torch.dtype | None
    run_dir: Path
    model: nn.Module
    head: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    sampler: GlobalBatchSampler
    loader: Any
    num_classes: int
    steps_per_epoch: int
    total_steps: int
    stop_step: int
    start_step: int
    checkpoint: Path | None  # the checkpoint resumed from, then the last one written
    step: int = 0

    @property
    def main(self) -> bool:
        return self.dist.main


def _existing_checkpoint(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (``None`` for a fresh run); a wrong ``resume`` flag fails fast."""
    ckpt = find_checkpoint(run_dir) if run_dir.exists() else None
    if resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir} to resume from; run without --resume")
    if not resume and ckpt is not None:
        raise FileExistsError(
            f"{run_dir} already holds checkpoint {ckpt.name}; pass --resume (resume=True) to continue it, "
            "or choose another --out folder"
        )
    return ckpt


def _prepare(
    cfg: ExperimentConfig, run_dir: Path, max_steps, ckpt: Path | None, dist_info: Processes
) -> _Run:
    """Data, model, optimiser and loader of a run, restored from ``ckpt`` when resuming."""
    device = resolve_device(cfg.run.device)
    amp_dtype, use_scaler = resolve_amp(cfg.run.amp, device)
    dataset = build_train_dataset(cfg)
    optim_cfg = cfg.optim
    sampler = GlobalBatchSampler(
        len(dataset), optim_cfg.batch_size, cfg.run.seed, dist_info.rank, dist_info.world_size
    )
    if sampler.local_batch % optim_cfg.accum_steps:
        raise ConfigError(
            f"the per-process batch ({sampler.local_batch}) must be divisible by optim.accum_steps "
            f"({optim_cfg.accum_steps})"
        )
    total_steps = optim_cfg.max_steps or optim_cfg.epochs * sampler.batches_per_epoch
    # Same initial weights on every process (DDP would broadcast them anyway).
    seed_everything(cfg.run.seed)
    model, head = build_model(cfg, int(dataset.num_classes))
    memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    head.to(device)
    optimizer = build_optimizer((model, head), optim_cfg)
    run = _Run(
        cfg=cfg,
        dist=dist_info,
        device=device,
        amp_dtype=amp_dtype,
        run_dir=run_dir,
        model=model,
        head=head,
        module=TrainModule(model, head),
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type) if use_scaler else None,
        sampler=sampler,
        loader=_loader(dataset, sampler, cfg, device),
        num_classes=int(dataset.num_classes),
        steps_per_epoch=sampler.batches_per_epoch,
        total_steps=total_steps,
        stop_step=total_steps if max_steps is None else min(int(max_steps), total_steps),
        start_step=0,
        checkpoint=ckpt,
    )
    if ckpt is not None:
        _restore(run, ckpt)
    else:
        # Different dropout noise on every process, from the same seed.
        torch.manual_seed(cfg.run.seed * 1_000_003 + 1 + dist_info.rank)
        if run.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.jsonl").write_text("", encoding="utf-8")
    if run.main:
        save_config(cfg, run_dir / "config.yaml")
    if cfg.run.compile:
        run.module.model = torch.compile(model)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        run.module = DistributedDataParallel(
            run.module, device_ids=[device.index] if device.type == "cuda" else None
        )
    run.step = run.start_step
    return run


def _restore(run: _Run, ckpt: Path) -> None:
    """Weights, optimiser, scaler, RNG and metrics of a checkpoint, for a resumed run."""
    meta = read_meta(ckpt)
    check_same_experiment(read_config(ckpt, meta), run.cfg, ckpt)
    load_weights(ckpt, run.model, run.head, meta)
    state = load_training_state(ckpt, meta)
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.start_step = int(state["step"])
    rng_states = state["rng"]
    set_rng_state(rng_states[run.dist.rank] if run.dist.rank < len(rng_states) else rng_states[0])
    if run.main and (ckpt / "metrics.jsonl").is_file():
        # Drop lines logged after the checkpoint (they will be logged again).
        shutil.copyfile(ckpt / "metrics.jsonl", run.run_dir / "metrics.jsonl")


def _loader(dataset, sampler: GlobalBatchSampler, cfg: ExperimentConfig, device: torch.device):
    num_workers = cfg.data.num_workers
    if num_workers < 0:
        num_workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_images_labels,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        # A private generator: creating a loader iterator must not draw from the global RNG,
        # or resuming would shift the dropout noise.
        generator=torch.Generator().manual_seed(cfg.run.seed),
    )


# ------------------------------------------------------------------------------------- logging
def _dispatch(callbacks: Iterable, event: dict) -> None:
    hook = {"step": "on_step", "epoch": "on_epoch", "end": "on_end"}[event["event"]]
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(event)
        elif callable(callback):
            callback(event)


class _Log:
    """``metrics.jsonl``, the callbacks, the progress bar and the epoch means of one :func:`fit` call."""

    def __init__(self, run: _Run, callbacks: Sequence) -> None:
        self.run = run
        self.callbacks = callbacks if run.main else ()
        self.history: list[dict] = []
        self.path = run.run_dir / "metrics.jsonl"
        self.epoch_sums: dict[str, float] = {}
        self.epoch_count = 0
        self.interval_start = time.perf_counter()
        self.interval_images = 0
        self.progress = None
        if run.main and run.cfg.run.progress and run.stop_step > run.start_step:
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=run.stop_step,
                initial=run.start_step,
                desc=run.cfg.run.name or run.run_dir.name,
                unit="step",
                dynamic_ncols=True,
            )

    def write(self, record: dict) -> None:
        self.history.append(record)
        if self.run.main:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def step(self, epoch: int, lr: float, result: StepResult) -> None:
        run = self.run
        self.interval_images += run.cfg.optim.batch_size
        record = {
            "event": "step",
            "step": run.step,
            "epoch": epoch,
            "loss": result.loss,
            **result.parts,
            "lr": lr,
            "grad_norm": result.grad_norm,
            "total_steps": run.total_steps,
        }
        for name in ("loss", *result.parts):
            self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + record[name]
        self.epoch_count += 1
        if run.step % run.cfg.run.log_every == 0 or run.step == run.stop_step:
            elapsed = time.perf_counter() - self.interval_start
            record["images_per_s"] = self.interval_images / elapsed if elapsed > 0 else None
            self.interval_start, self.interval_images = time.perf_counter(), 0
            self.write(record)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.2g}", refresh=False)
        _dispatch(self.callbacks, record)
        if run.step % run.steps_per_epoch == 0:
            # Logged before a checkpoint at the same step, so the checkpoint's metrics hold it.
            means = {name: value / self.epoch_count for name, value in self.epoch_sums.items()}
            epoch_record = {"event": "epoch", "epoch": epoch, "step": run.step, **means}
            self.write(epoch_record)
            _dispatch(self.callbacks, epoch_record)
            self.epoch_sums, self.epoch_count = {}, 0

    def end(self, seconds: float) -> None:
        run = self.run
        record = {
            "event": "end",
            "step": run.step,
            "total_steps": run.total_steps,
            "complete": run.step >= run.total_steps,
            "seconds": seconds,
        }
        self.write(record)
        _dispatch(self.callbacks, record)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None


# ---------------------------------------------------------------------------------- the loop
def _save(run: _Run, rng: list[dict]) -> Path | None:
    if run.main:
        run.checkpoint = save_checkpoint(
            run.run_dir,
            model=run.model,
            head=run.head,
            optimizer=run.optimizer,
            scaler=run.scaler,
            config=run.cfg,
            step=run.step,
            total_steps=run.total_steps,
            num_classes=run.num_classes,
            rng=rng,
            keep=run.cfg.run.keep_checkpoints,
        )
    return run.checkpoint


def _gathered_rng(run: _Run) -> list[dict]:
    if not run.dist.enabled:
        return [rng_state()]
    import torch.distributed as dist

    states: list = [None] * run.dist.world_size
    dist.all_gather_object(states, rng_state())
    return states


def _train_loop(run: _Run, log: _Log, step_start: dict) -> None:
    """Steps from ``run.step`` to ``run.stop_step``; ``step_start`` holds the RNG state of the step
    under way."""
    cfg, optim_cfg = run.cfg, run.cfg.optim
    memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    epoch = run.step // run.steps_per_epoch
    while run.step < run.stop_step:
        run.sampler.set_epoch(epoch, start_batch=run.step - epoch * run.steps_per_epoch)
        for images, labels in run.loader:
            step_start["rng"] = rng_state()
            lr = learning_rate(run.step, optim_cfg, run.total_steps)
            if cfg.data.hflip:
                flips = flip_mask(
                    cfg.run.seed, run.step, optim_cfg.batch_size, run.dist.rank, run.sampler.local_batch
                )
                images = torch.where(flips[:, None, None, None], images.flip(-1), images)
            images = images.to(run.device, non_blocking=True).contiguous(memory_format=memory_format)
            labels = labels.to(run.device, non_blocking=True)
            try:
                result = train_step(
                    run.module,
                    run.optimizer,
                    images,
                    labels,
                    cfg.loss,
                    lr=lr,
                    accum_steps=optim_cfg.accum_steps,
                    clip_grad_norm=optim_cfg.clip_grad_norm,
                    scaler=run.scaler,
                    amp_dtype=run.amp_dtype,
                    world_size=run.dist.world_size,
                )
            except NonFiniteLossError as err:
                where = (
                    str(run.checkpoint)
                    if run.checkpoint is not None
                    else ("none (no checkpoint was written yet; set run.checkpoint_every)")
                )
                raise NonFiniteLossError(
                    f"{err} at step {run.step + 1} (epoch {epoch}); "
                    "the weights were not updated with it. "
                    f"Last good checkpoint: {where}. "
                    "Lower optim.lr, set optim.clip_grad_norm or run.amp=off, then continue with --resume"
                ) from None
            run.step += 1
            step_start["rng"] = None
            log.step(epoch, lr, result)
            every = cfg.run.checkpoint_every
            if every and run.step % every == 0 and run.step < run.stop_step:
                _save(run, _gathered_rng(run))
            if run.step >= run.stop_step:
                break
        epoch = run.step // run.steps_per_epoch


def _save_on_interrupt(run: _Run, step_start: dict) -> None:
    # Interrupted inside a step: its partial gradients are dropped and the RNG rewound to the
    # step's start, so the checkpoint is exactly "after `step` steps".
    rng = step_start["rng"] if step_start.get("rng") is not None else rng_state()
    run.optimizer.zero_grad(set_to_none=True)
    saved = _save(run, [rng]) if run.step > run.start_step or run.checkpoint is None else run.checkpoint
    if run.main:
        print(
            f"\ninterrupted after step {run.step}/{run.total_steps}; checkpoint: {saved}. Continue with: "
            f"python -m ecl train --config {run.run_dir / 'config.yaml'} --out {run.run_dir} --resume",
            file=sys.stderr,
        )


# ------------------------------------------------------------------------------------------ fit
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
        RunLockedError: another live process trains into ``out_dir`` (its pid is named).
        CheckpointError: the checkpoint to resume from is damaged (the file is named).
        NonFiniteLossError: the loss became NaN or infinite (names the step and last checkpoint).
        KeyboardInterrupt: re-raised after writing a resumable checkpoint.
    """
    t_start = time.perf_counter()
    run_dir = Path(out_dir if out_dir is not None else (config.run.out_dir or run_dir_for(config)))
    saved_rng = rng_state()
    dist_info = init_processes(config.run.device)
    try:
        with _locked(run_dir, dist_info.main):
            ckpt = _existing_checkpoint(run_dir, resume)
            with backend_settings(config.run.deterministic, resolve_device(config.run.device)):
                run = _prepare(config, run_dir, max_steps, ckpt, dist_info)
                return _fit(run, callbacks, t_start)
    finally:
        set_rng_state(saved_rng)
        if dist_info.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


@contextlib.contextmanager
def _locked(run_dir: Path, main: bool) -> Iterator[None]:
    """The run folder's lock for process 0; a folder made only to hold it is removed again on failure."""
    if not main:
        yield
        return
    created = not run_dir.exists()
    try:
        with RunLock(run_dir):
            yield
    except BaseException:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise


def _fit(run: _Run, callbacks: Sequence, t_start: float) -> TrainResult:
    log = _Log(run, callbacks)
    step_start: dict = {"rng": None}
    run.module.train()
    try:
        _train_loop(run, log, step_start)
    except KeyboardInterrupt:
        log.close()
        _save_on_interrupt(run, step_start)
        raise
    finally:
        log.close()
    saved = (
        _save(run, _gathered_rng(run))
        if run.step > run.start_step or run.checkpoint is None
        else run.checkpoint
    )
    seconds = time.perf_counter() - t_start
    log.end(seconds)
    run.model.eval()
    run.head.eval()
    return TrainResult(
        model=run.model,
        head=run.head,
        config=run.cfg,
        run_dir=run.run_dir,
        checkpoint=saved if run.main else None,
        step=run.step,
        total_steps=run.total_steps,
        history=log.history,
        seconds=seconds,
    )


def load_or_train(
    config: ExperimentConfig,
    root: str | Path = "runs",
    callbacks: Sequence[Callable[[dict], None] | Any] = (),
    map_location: str | torch.device | None = None,
) -> tuple[nn.Module, Path]:
    """The trained model of a config: loaded when a finished run of exactly this config exists.

    The run folder is ``<root>/<run.name>-<config_hash>`` (:func:`ecl.checkpoint.run_dir_for`), so
    changing any key that affects the weights trains a new run. A finished run of the same config under
    another run name (``<other name>-<config_hash>``) is loaded too. An unfinished run (interrupted, or
    stopped with ``max_steps``) is resumed.

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
    finished = _finished_checkpoint(run_dir)
    if finished is None:
        # The same experiment trained under another run name (names are result-neutral; the hash is not).
        twins = (_finished_checkpoint(d) for d in sorted(Path(root).glob(f"*-{config_hash(config)}")))
        finished = next((c for c in twins if c is not None), None)
    if finished is not None:
        model, _ = load_run(finished, map_location=device, config=config)
        return model, finished.parent.parent
    ckpt = find_checkpoint(run_dir) if run_dir.exists() else None
    result = fit(config, out_dir=run_dir, callbacks=callbacks, resume=ckpt is not None)
    return result.model.to(device).eval(), run_dir


def _finished_checkpoint(run_dir: Path) -> Path | None:
    ckpt = find_checkpoint(run_dir) if run_dir.is_dir() else None
    return ckpt if ckpt is not None and read_meta(ckpt).get("complete") else None

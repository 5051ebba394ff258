"""The process a training run executes in: mixed precision, distributed processes, backend flags.

:func:`backend_settings` sets the flags a run asks for (deterministic algorithms, cuDNN and TF32,
``CUBLAS_WORKSPACE_CONFIG``) and puts back what was there before when the run ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ecl.config import ConfigError
from ecl.utils import restored_environ

__all__ = ["Processes", "backend_settings", "init_processes", "resolve_amp"]


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
class Processes:
    """This process's place among the training processes (one process unless started with torchrun)."""

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


def init_processes(device_name: str) -> Processes:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes()
    import torch.distributed as dist

    initialised_here = False
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_name in ("auto",) or device_name.startswith("cuda")
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
        initialised_here = True
    return Processes(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), initialised_here
    )


@contextlib.contextmanager
def backend_settings(deterministic: bool, device: torch.device) -> Iterator[None]:
    """Set the backend flags a run asks for, and put back what was there before when the run ends."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
        cudnn.allow_tf32,
        matmul.allow_tf32,
    )
    with restored_environ("CUBLAS_WORKSPACE_CONFIG"):
        try:
            if deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True, warn_only=True)
                cudnn.benchmark = False
                cudnn.deterministic = True
            elif device.type == "cuda":
                cudnn.benchmark = True
                matmul.allow_tf32 = True
                cudnn.allow_tf32 = True
            yield
        finally:
            det, warn_only, cudnn.benchmark, cudnn.deterministic, tf32_cudnn, tf32_matmul = saved
            torch.use_deterministic_algorithms(det, warn_only=warn_only)
            if cudnn.allow_tf32 != tf32_cudnn:
                cudnn.allow_tf32 = tf32_cudnn
            if matmul.allow_tf32 != tf32_matmul:
                matmul.allow_tf32 = tf32_matmul

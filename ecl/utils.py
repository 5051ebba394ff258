"""Small helpers every other module may use: devices, eval mode, model outputs, atomic files, JSON, RNG.

This module imports nothing else from ``ecl``, so any module can import it without creating a cycle.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "atomic_write_json",
    "atomic_write_text",
    "autocast",
    "batch_images",
    "dataset_attr",
    "eval_mode",
    "json_default",
    "json_float",
    "model_device",
    "progress_bar",
    "resolve_device",
    "restored_environ",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "split_output",
    "torch_threads",
]


# ------------------------------------------------------------------------------------------ devices
def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """A device from a name: ``auto`` (or ``None``) picks CUDA, then MPS, then the CPU.

    Under torchrun, CUDA means ``cuda:LOCAL_RANK``.

    Raises:
        RuntimeError: CUDA or MPS is asked for but not available (the message says what to use).
    """
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} was asked for but CUDA is not available; use auto or cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} was asked for but MPS is not available; use auto or cpu")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Switch modules to eval mode for a block, then give each back the mode it had."""
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.train(mode)


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (float16 autocast) for inference; a no-op context elsewhere."""
    return torch.autocast(device_type="cuda", enabled=enabled and device.type == "cuda")


# ------------------------------------------------------------------------------ model inputs/outputs
def split_output(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(embeddings, activations)`` from a model output: a ``FaceOutput``, a tuple or a tensor."""
    if hasattr(output, "embeddings"):
        return output.embeddings, getattr(output, "activations", None)
    if isinstance(output, (tuple, list)):
        if len(output) != 2:
            raise ValueError(
                f"a face model must return (embeddings, activations); got a sequence of {len(output)}"
            )
        return output[0], output[1]
    if isinstance(output, torch.Tensor):
        return output, None
    raise TypeError(f"cannot read embeddings from a model output of type {type(output).__name__}")


def batch_images(batch: Any) -> torch.Tensor:
    """The image tensor of a collated batch: a dict with "image", a (images, ...) tuple or a tensor."""
    if isinstance(batch, dict):
        if "image" not in batch:
            raise KeyError(f"a batch dict needs an 'image' key; it has {sorted(batch)}")
        return batch["image"]
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, torch.Tensor):
        return batch
    raise TypeError(f"cannot read images from a batch of type {type(batch).__name__}")


def progress_bar(iterable: Iterable, enabled: bool, desc: str, total: int | None = None):
    """``iterable`` itself, or wrapped in a tqdm bar that disappears when done."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def dataset_attr(dataset: Any, name: str, default: Any = None) -> Any:
    """An attribute of a dataset or of the dataset it wraps (Subset, Jitter ...)."""
    while dataset is not None:
        if name in getattr(type(dataset), "__dict__", {}) or name in getattr(dataset, "__dict__", {}):
            return getattr(dataset, name)
        dataset = getattr(dataset, "dataset", None)
    return default


# ------------------------------------------------------------------------------------- files, JSON
def json_float(value: float) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    value = float(value)
    return value if math.isfinite(value) else None


def json_default(value: Any):
    """``json.dumps(default=...)`` for numpy scalars and arrays (and paths)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file so that a reader (or a crash) never sees half of it.

    The text goes to a temporary file beside ``path``, is flushed to disk, and is renamed over ``path``
    (a rename within one folder is atomic).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """:func:`atomic_write_text` of ``obj`` as JSON (numpy values converted), ending in a newline."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=json_default) + "\n")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with this many torch CPU threads (``None``: leave them), then give back the old count.

    Float sums are split over the threads, so the thread count changes the last bits of every
    convolution on a CPU, and a training run drifts with them: a result is exactly reproducible only
    at the thread count it was made with.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def restored_environ(*names: str) -> Iterator[None]:
    """Run a block that may set or remove the environment variables ``names``; put back their old values
    (or their absence) when it ends, however it ends."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --------------------------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global RNG states (Python, numpy, torch, CUDA) as plain tensors and containers.

    The result loads with ``torch.load(weights_only=True)``: numpy's key array is stored as a tensor.
    """
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
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


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
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

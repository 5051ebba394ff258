"""Run folders and checkpoints: where a run lives, how it is written, found, checked and loaded.

Measuring and drawing import this module, never :mod:`ecl.train`, so loading a model never pulls in
the training loop.

A run folder holds ``config.yaml``, ``metrics.jsonl`` (one JSON object per line: ``event`` is ``step``,
``epoch`` or ``end``) and ``checkpoints/step_NNNNNN/`` folders with

- ``model.safetensors``: backbone weights under ``model.``, identity head under ``head.``;
- ``state.pt``: optimiser, grad scaler and RNG states, plain tensors and containers, loaded with
  ``torch.load(weights_only=True)`` (never an unrestricted unpickle);
- ``config.yaml``, a copy of ``metrics.jsonl``, and ``meta.json`` (step, completeness, config hash and
  the SHA-256 of every other file).

``checkpoints/latest`` names the newest one. While a process trains, ``.lock`` in the run folder names
it (pid, host, start time), so a second process pointed at the same folder is refused.

Crash safety: a checkpoint is written into a temporary folder, each file flushed to disk, ``meta.json``
last, and the folder renamed into place; ``latest`` is replaced atomically. A process killed at any
moment leaves the previous checkpoint loadable, and ``--resume`` continues from it. A file truncated
or edited afterwards no longer matches the SHA-256 in ``meta.json`` and loading names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ecl.config import ExperimentConfig, config_diff, config_from_dict, config_hash, save_config
from ecl.utils import atomic_write_text

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "RunLock",
    "RunLockedError",
    "check_same_experiment",
    "find_checkpoint",
    "load_checkpoint",
    "load_run",
    "load_training_state",
    "load_weights",
    "read_config",
    "read_meta",
    "read_metrics",
    "run_dir_for",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1
LOCK_FILE = ".lock"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, edited, or from another experiment."""


class RunLockedError(RuntimeError):
    """Another live process is training into the same run folder."""


# ------------------------------------------------------------------------------------- locations
def run_dir_for(config: ExperimentConfig, root: str | Path = "runs") -> Path:
    """The run folder of a config: ``<root>/<run.name>-<config_hash>`` (or the hash alone)."""
    digest = config_hash(config)
    name = f"{config.run.name}-{digest}" if config.run.name else digest
    return Path(root) / name


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
        if (candidate / "meta.json").is_file():
            return candidate
    # `latest` missing or stale (a crash between the two renames): the highest complete step.
    steps = sorted(p for p in ckpt_root.glob("step_*") if (p / "meta.json").is_file())
    return steps[-1] if steps else None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The events of a run's ``metrics.jsonl``, in order (see :func:`ecl.train.fit` for their keys).

    A last line cut short (the process was killed while appending it) is left out; any other line
    that is not JSON is an error naming the file and the line.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"no metrics.jsonl in {run_dir}: is it a run folder written by ecl.train.fit?"
        )
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                break  # torn final append
            raise CheckpointError(f"{path}, line {number}, is not JSON ({err}); the file was edited") from err
    return events


# ----------------------------------------------------------------------------------------- write
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_orphans(ckpt_root: Path) -> None:
    """Temporary checkpoint folders of processes that died while writing them."""
    for tmp in ckpt_root.glob(".tmp-step_*-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid), None):
            shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(
    run_dir: Path,
    *,
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    config: ExperimentConfig,
    step: int,
    total_steps: int,
    num_classes: int,
    rng: list[dict],
    keep: int,
) -> Path:
    """Write ``checkpoints/step_<step>`` of a run, point ``latest`` at it and drop older ones.

    Args:
        keep: checkpoints kept, this one included.

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    _remove_orphans(ckpt_root)
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
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        for path in files:
            _fsync(path)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "total_steps": total_steps,
            "complete": step >= total_steps,
            "num_classes": num_classes,
            "config_hash": config_hash(config),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
            # config.yaml is checked by its config hash instead (a harmless edit, e.g. a comment, passes).
            "sha256": {p.name: _sha256(p) for p in files if p.name in ("model.safetensors", "state.pt")},
        }
        # meta.json last: a folder without it is incomplete and is never picked up.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        _fsync(tmp / "meta.json")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(ckpt_root)
    atomic_write_text(ckpt_root / "latest", name + "\n")
    old = sorted(p for p in ckpt_root.glob("step_*") if p.name != name)
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------ read
def read_meta(ckpt: Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json`` (an empty dict for a checkpoint folder that has none)."""
    path = ckpt / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"checkpoint file {path} is not valid JSON ({err}): it was truncated or edited"
        ) from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint file {path} does not hold a JSON object: it was edited")
    return meta


def _verify(ckpt: Path, meta: dict[str, Any], name: str) -> Path:
    """The path of one checkpoint file, after checking it exists and matches its SHA-256 in ``meta.json``."""
    path = ckpt / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; the checkpoint is incomplete")
    expected = meta.get("sha256", {}).get(name)
    if expected is not None and _sha256(path) != expected:
        raise CheckpointError(
            f"checkpoint file {path} is damaged: its SHA-256 differs from the one in meta.json (the file was "
            "truncated or edited after it was written). Use another checkpoint of the run, or retrain"
        )
    return path


def read_config(ckpt: Path, meta: dict[str, Any] | None = None) -> ExperimentConfig:
    """The config a checkpoint was trained with (its ``config.yaml``, checked against ``meta.json``)."""
    import yaml

    meta = read_meta(ckpt) if meta is None else meta
    path = ckpt / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; the checkpoint is incomplete")
    try:
        stored = config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"checkpoint file {path} is not valid YAML ({err}): it was truncated or edited"
        ) from err
    claimed_hash = meta.get("config_hash")
    if claimed_hash is not None and claimed_hash != config_hash(stored):
        raise CheckpointError(
            f"checkpoint {ckpt}: config.yaml does not match the config the weights were trained with "
            f"(hash {config_hash(stored)} vs {claimed_hash} in meta.json); it was edited after training. "
            "Restore it, or use the run folder's config.yaml"
        )
    return stored


def check_same_experiment(stored: ExperimentConfig, claimed: ExperimentConfig, where: Path) -> None:
    """Raise when two configs differ on a key that changes the weights (the keys are named)."""
    diff = config_diff(stored, claimed)
    if diff:
        lines = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"checkpoint {where} was trained with a different config ({lines}); "
            "use the checkpoint's own config.yaml, or train the new config in another run folder"
        )


def _load_tensors(ckpt: Path, meta: dict[str, Any]) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _verify(ckpt, meta, "model.safetensors")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint file {path} cannot be read ({err}): it was truncated or edited"
        ) from err


def load_weights(ckpt: Path, model: nn.Module, head: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Copy a checkpoint's weights into existing modules (they keep their device and memory format)."""
    tensors = _load_tensors(ckpt, read_meta(ckpt) if meta is None else meta)
    for prefix, module in (("model.", model), ("head.", head)):
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            missing, unexpected = module.load_state_dict(state, strict=False)
        except RuntimeError as err:  # a tensor of the wrong shape
            raise CheckpointError(
                f"checkpoint file {ckpt / 'model.safetensors'} does not fit its config: {err}"
            ) from err
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {ckpt} does not fit the {prefix[:-1]} its config builds: "
                f"missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}; was it written by another version of ecl?"
            )


def load_training_state(ckpt: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint's ``state.pt`` (optimiser, scaler, RNG), loaded with ``weights_only=True``."""
    import pickle

    path = _verify(ckpt, read_meta(ckpt) if meta is None else meta, "state.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"checkpoint file {path} cannot be read ({err}): it was truncated or edited"
        ) from err


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
        CheckpointError: a damaged file (named), or a checkpoint of another config (keys named).
    """
    from ecl.models import build_model

    ckpt = find_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(
            f"no checkpoint in {path} (expected model.safetensors, or checkpoints/latest in a run folder); "
            "train one with `python -m ecl train --config FILE --out DIR`"
        )
    meta = read_meta(ckpt)
    stored = read_config(ckpt, meta)
    if config is not None:
        check_same_experiment(stored, config, ckpt)
    num_classes = meta.get("num_classes")
    if num_classes is None:
        num_classes = _load_tensors(ckpt, meta)["head.weight"].shape[0]
    model, head = build_model(stored, int(num_classes))
    load_weights(ckpt, model, head, meta)
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


# ------------------------------------------------------------------------------------------ lock
def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux ``/proc``), which tells a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start is not None:
        current = _process_start(pid)
        if current is not None and current != start:
            return False  # the pid now belongs to another process
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


class RunLock:
    """A lock file that keeps two training processes out of one run folder.

    ``.lock`` holds the owner's pid, host and process start time. Taking the lock fails with
    :class:`RunLockedError` (naming the owner) while that process is alive; a lock left by a process
    that died (killed, crashed, the machine rebooted) is detected as stale and taken over. A lock from
    another host cannot be checked and is refused, with the path to delete if that run is over.

    Use as a context manager, or call :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or garbage: treated as stale unless fresh
        return owner if isinstance(owner, dict) else {}

    def _refuse(self, owner: dict[str, Any], reason: str) -> RunLockedError:
        return RunLockedError(
            f"{self.path.parent} is in use by another training process (pid {owner.get('pid')} on "
            f"{owner.get('host')}, since {owner.get('since')}){reason}. Wait for it to finish or stop it, or "
            f"train into another --out folder; if that process is gone, delete {self.path}"
        )

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        me = {
            "pid": pid,
            "host": socket.gethostname(),
            "start": _process_start(pid),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile: try again
                if owner.get("pid") == pid and owner.get("host") == me["host"]:
                    raise self._refuse(owner, " (this process already trains there)") from None
                if owner.get("host") not in (None, me["host"]):
                    raise self._refuse(owner, ", which this host cannot check") from None
                if owner and _alive(int(owner.get("pid", -1)), owner.get("start")):
                    raise self._refuse(owner, "") from None
                if not owner and time.time() - _mtime(self.path) < 10:
                    raise self._refuse(owner, " (its lock is being written)") from None
                # Stale: its owner is gone. Remove it only if it is still the lock judged stale (another
                # process may have taken it over meanwhile).
                if self._owner() == owner:
                    self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise self._refuse(self._owner() or {}, "")

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

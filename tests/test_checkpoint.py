"""Run folders survive crashes: a kill mid-write, damaged files, two processes, and a clean process
afterwards.

Every run is the tiny one of ``test_train`` (``test_resnet`` at 32 x 32), trained in a child process where
the test needs to kill or race it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import RESUME, tiny_config

from ecl.checkpoint import CheckpointError, RunLock, RunLockedError, find_checkpoint, load_run, read_metrics
from ecl.config import save_config
from ecl.train import fit


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(find_checkpoint(run_dir) / "model.safetensors"))


def _child(script: str, repo_root: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited early:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


@contextmanager
def one_thread():
    """Train here on one thread, as the children do: bit-identical weights need the same summation order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    with one_thread():
        fit(tiny_config(*RESUME), out_dir=run_dir)
    return run_dir


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one_and_resume_continues(
    uninterrupted, tmp_path, repo_root
):
    config = save_config(tiny_config(*RESUME), tmp_path / "tiny.yaml")
    run, marker = tmp_path / "run", tmp_path / "writing"
    # The child writes half of step 4's weights file, says so, and hangs: the kill lands mid-write.
    proc = _child(
        f"""
        import time
        from pathlib import Path
        import safetensors.torch
        from ecl.config import load_config
        from ecl.train import fit

        real = safetensors.torch.save_file

        def half_then_hang(tensors, filename, *args, **kwargs):
            if "step_000004" in str(filename):
                real(tensors, filename, *args, **kwargs)
                data = Path(filename).read_bytes()
                Path(filename).write_bytes(data[: len(data) // 2])
                Path({str(marker)!r}).touch()
                time.sleep(600)
            return real(tensors, filename, *args, **kwargs)

        safetensors.torch.save_file = half_then_hang
        fit(load_config({str(config)!r}), out_dir={str(run)!r})
        """,
        repo_root,
        tmp_path,
    )
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    assert find_checkpoint(run).name == "step_000002"
    model, _ = load_run(run)  # the previous checkpoint loads
    assert (run / ".lock").is_file()  # left behind by the killed process: stale
    assert [e["step"] for e in read_metrics(run) if e["event"] == "step"][-1] >= 2
    with one_thread():
        result = fit(tiny_config(*RESUME), out_dir=run, resume=True)
    assert result.complete and not (run / ".lock").exists()
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the killed writer's half folder is cleaned up
    reference = _weights(uninterrupted)
    resumed = _weights(run)
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def _copy_checkpoint(run_dir: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(find_checkpoint(run_dir), dest)
    return dest


def test_truncated_weights_are_named(uninterrupted, tmp_path):
    ckpt = _copy_checkpoint(uninterrupted, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=str(weights)):
        load_run(ckpt)


def test_edited_weights_are_named(uninterrupted, tmp_path):
    ckpt = _copy_checkpoint(uninterrupted, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one byte of a tensor: still a valid file, silently wrong weights without a check
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{weights}.*damaged"):
        load_run(ckpt)


def test_damaged_training_state_and_meta_are_named(uninterrupted, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    ckpt = find_checkpoint(run)
    state = ckpt / "state.pt"
    state.write_bytes(state.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=str(state)):
        fit(tiny_config(*RESUME), out_dir=run, resume=True)
    (ckpt / "meta.json").write_text('{"step": 6, "complete": tr')
    with pytest.raises(CheckpointError, match=str(ckpt / "meta.json")):
        load_run(ckpt)


def test_torn_last_metrics_line_is_skipped_and_an_edited_line_is_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = json.dumps({"event": "step", "step": 1})
    (run / "metrics.jsonl").write_text(good + "\n" + '{"event": "st')
    assert read_metrics(run) == [{"event": "step", "step": 1}]
    (run / "metrics.jsonl").write_text("not json\n" + good + "\n")
    with pytest.raises(CheckpointError, match="line 1"):
        read_metrics(run)


@pytest.mark.slow
def test_a_second_process_is_refused_and_a_stale_lock_is_taken_over(tmp_path, repo_root):
    config = save_config(tiny_config("optim.max_steps=100000"), tmp_path / "long.yaml")
    run = tmp_path / "run"
    proc = _child(
        f"""
        from ecl.config import load_config
        from ecl.train import fit

        fit(load_config({str(config)!r}), out_dir={str(run)!r})
        """,
        repo_root,
        tmp_path,
    )
    try:
        _wait_for(run / "metrics.jsonl", proc)
        with pytest.raises(RunLockedError, match=rf"pid {proc.pid}\b"):
            fit(tiny_config("optim.max_steps=100000"), out_dir=run, resume=True)
        with pytest.raises(RunLockedError, match=rf"pid {proc.pid}\b"):
            RunLock(run).acquire()
    finally:
        proc.kill()
        proc.wait(timeout=60)
    # Its owner is gone: the lock is stale and the next run takes it over.
    with RunLock(run) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (run / ".lock").exists()


def test_lock_is_released_and_one_process_cannot_take_it_twice(tmp_path):
    run = tmp_path / "run"
    fit(tiny_config("optim.max_steps=2"), out_dir=run)
    assert not (run / ".lock").exists()
    with RunLock(run):
        with pytest.raises(RunLockedError, match="already trains there"):
            fit(tiny_config("optim.max_steps=4"), out_dir=run, resume=True)


def test_fit_restores_every_process_wide_setting(tmp_path):
    cudnn = torch.backends.cudnn
    before = (
        torch.are_deterministic_algorithms_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    fit(
        tiny_config("optim.max_steps=2", "run.deterministic=true", "model.dropout=0.2"),
        out_dir=tmp_path / "r",
    )
    after = (
        torch.are_deterministic_algorithms_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    assert after == before
    # The global RNG continues where it was: the cells after a training run do not depend on it.
    assert torch.equal(torch.rand(3), expected)


def test_torch_threads_gives_back_the_thread_count():
    from ecl.utils import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before

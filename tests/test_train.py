"""Training: the loss goes down, resume is exact, failures stop with a usable message, the CLI works.

Every run here is tiny (timm's ``test_resnet`` at 32 x 32 on 64 FaceParts images), so a step takes
tens of milliseconds on a CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ecl.checkpoint import find_checkpoint, load_run, run_dir_for
from ecl.cli import main as ecl_main
from ecl.config import ConfigError, ExperimentConfig, apply_overrides, load_config, save_config
from ecl.data.sampler import GlobalBatchSampler
from ecl.train import NonFiniteLossError, fit, learning_rate, load_or_train


def main(argv):
    """``python -m ecl train ARGS``."""
    return ecl_main(["train", *argv])


TINY = [
    "data.image_size=32",
    "data.num_identities=8",
    "data.images_per_identity=8",
    "data.options={cache: memory}",
    "model.backbone=test_resnet",
    "model.embedding_dim=32",
    "loss.s=16",
    "loss.margin=0.2",
    "optim.batch_size=16",
    "optim.lr=0.05",
    "optim.warmup_steps=2",
    "run.progress=false",
    "run.log_every=1",
    "run.seed=3",
]


def tiny_config(*extra: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), [*TINY, *extra])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(find_checkpoint(run_dir) / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# Dropout and flips exercise the RNG state a resume must restore.
RESUME = ("optim.max_steps=6", "model.dropout=0.2", "data.hflip=true", "run.checkpoint_every=2")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    fit(tiny_config(*RESUME), out_dir=run_dir)
    return run_dir


def test_loss_decreases_on_faceparts(tmp_path):
    events = []
    result = fit(
        tiny_config("optim.max_steps=24", "loss.method=ecloss"),
        out_dir=tmp_path / "r",
        callbacks=[events.append],
    )
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    assert result.complete and result.step == 24
    assert {"id", "match", "lr"} <= set(events[0])
    assert events[-1]["event"] == "end"
    assert any(e["event"] == "epoch" for e in events)  # 64 images / 16 = 4 steps per epoch


def test_run_folder_layout(uninterrupted):
    ckpt = find_checkpoint(uninterrupted)
    assert ckpt.name == "step_000006"
    for name in ("model.safetensors", "state.pt", "config.yaml", "meta.json", "metrics.jsonl"):
        assert (ckpt / name).is_file(), name
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["complete"] and meta["step"] == 6 and meta["num_classes"] == 8
    # state.pt loads without unrestricted unpickling.
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 6 and "optimizer" in state
    lines = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["event"] == "end"
    # keep_checkpoints=2: older ones are pruned.
    assert sorted(p.name for p in (uninterrupted / "checkpoints").glob("step_*")) == [
        "step_000004",
        "step_000006",
    ]


def test_resume_equals_uninterrupted(uninterrupted, tmp_path):
    cfg = tiny_config(*RESUME)
    partial = fit(cfg, out_dir=tmp_path / "r", max_steps=3)
    assert not partial.complete and partial.step == 3
    resumed = fit(cfg, out_dir=tmp_path / "r", resume=True)
    assert resumed.complete
    assert_same_weights(weights(uninterrupted), weights(tmp_path / "r"))
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["event"] == "step"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_ctrl_c_leaves_a_resumable_checkpoint(uninterrupted, tmp_path, capsys):
    cfg = tiny_config(*RESUME)

    def interrupt(event):
        if event["event"] == "step" and event["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, out_dir=tmp_path / "r", callbacks=[interrupt])
    assert find_checkpoint(tmp_path / "r").name == "step_000003"
    assert "--resume" in capsys.readouterr().err
    fit(cfg, out_dir=tmp_path / "r", resume=True)
    assert_same_weights(weights(uninterrupted), weights(tmp_path / "r"))


def test_nan_loss_names_step_and_last_checkpoint(tmp_path, monkeypatch):
    import ecl.train

    real = ecl.train.training_objective
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 5 else loss), parts

    monkeypatch.setattr(ecl.train, "training_objective", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"nan at step 5 .*step_000004"):
        fit(tiny_config("optim.max_steps=8", "run.checkpoint_every=2"), out_dir=tmp_path / "r")


def test_nan_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    import ecl.train

    real = ecl.train.training_objective
    monkeypatch.setattr(
        ecl.train, "training_objective", lambda *a, **k: (real(*a, **k)[0] * float("inf"), {})
    )
    with pytest.raises(NonFiniteLossError, match=r"inf at step 1 .*no checkpoint"):
        fit(tiny_config("optim.max_steps=4"), out_dir=tmp_path / "r")


def test_existing_run_needs_resume_and_resume_needs_a_run(uninterrupted, tmp_path):
    with pytest.raises(FileExistsError, match="--resume"):
        fit(tiny_config(*RESUME), out_dir=uninterrupted)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(tiny_config(*RESUME), out_dir=tmp_path / "empty", resume=True)


def test_resume_with_another_config_names_the_keys(uninterrupted):
    with pytest.raises(ValueError, match=r"loss\.lambda"):
        fit(tiny_config(*RESUME, "loss.lambda=0.5"), out_dir=uninterrupted, resume=True)


def test_load_run_checks_the_claimed_config(uninterrupted):
    model, cfg = load_run(uninterrupted)
    assert cfg == tiny_config(*RESUME)
    assert not model.training
    out = model(torch.rand(2, 3, 32, 32))
    assert out.embeddings.shape == (2, 32)
    load_run(uninterrupted, config=tiny_config(*RESUME, "run.device=cpu", "run.log_every=7"))  # neutral keys
    with pytest.raises(ValueError, match=r"model\.embedding_dim"):
        load_run(uninterrupted, config=tiny_config(*RESUME, "model.embedding_dim=16"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_run(uninterrupted / "nothing-here")


def test_load_or_train_finds_the_same_experiment_under_another_run_name(tmp_path):
    cfg = tiny_config("optim.max_steps=2", "run.name=first")
    _, first = load_or_train(cfg, root=tmp_path)
    events = []
    renamed = apply_overrides(cfg, ["run.name=second"])
    _, again = load_or_train(renamed, root=tmp_path, callbacks=[events.append])
    assert again == first and not events  # loaded from "first-<hash>", not trained
    _, other = load_or_train(apply_overrides(cfg, ["optim.lr=0.01"]), root=tmp_path)
    assert other != first


def test_load_or_train_trains_once_per_config(tmp_path):
    cfg = tiny_config("optim.max_steps=2", "run.name=tiny")
    events = []
    model, run_dir = load_or_train(cfg, root=tmp_path, callbacks=[events.append])
    assert run_dir == run_dir_for(cfg, tmp_path) and run_dir.name.startswith("tiny-")
    assert events
    events.clear()
    again, same_dir = load_or_train(cfg, root=tmp_path, callbacks=[events.append])
    assert same_dir == run_dir and not events  # loaded, not trained
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    _, other = load_or_train(apply_overrides(cfg, ["loss.method=none"]), root=tmp_path)
    assert other != run_dir


def test_learning_rate_schedule():
    cfg = tiny_config("optim.lr=1.0", "optim.warmup_steps=10", "optim.warmup_start=0.0").optim
    assert learning_rate(0, cfg, 110) == 0.0
    assert learning_rate(5, cfg, 110) == pytest.approx(0.5)
    assert learning_rate(10, cfg, 110) == pytest.approx(1.0)
    assert learning_rate(60, cfg, 110) == pytest.approx(0.5)
    assert learning_rate(109, cfg, 110) < 0.01
    step = apply_overrides(
        tiny_config(), ["optim.schedule=step", "optim.warmup_steps=0", "optim.lr=1.0"]
    ).optim
    assert [learning_rate(s, step, 100) for s in (0, 49, 50, 74, 75)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_sampler_splits_global_batches_and_skips_on_resume():
    single = GlobalBatchSampler(50, 8, seed=1)
    single.set_epoch(2)
    batches = list(single)
    assert len(batches) == 6 and all(len(b) == 8 for b in batches)
    ranks = [GlobalBatchSampler(50, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    assert [a + b for a, b in zip(*map(list, ranks), strict=True)] == batches
    single.set_epoch(2, start_batch=4)
    assert list(single) == batches[4:]
    single.set_epoch(3)
    assert list(single) != batches  # a new order every epoch
    with pytest.raises(ConfigError, match="fewer than optim.batch_size"):
        GlobalBatchSampler(5, 8, seed=0)


def test_cli_trains_and_reports_errors(tmp_path, capsys):
    cfg_path = save_config(tiny_config("optim.max_steps=2"), tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    assert main(["--config", str(cfg_path), "--out", str(out), "--max-steps", "1"]) == 0
    assert find_checkpoint(out).name == "step_000001"
    assert main(["--config", str(cfg_path), "--out", str(out), "--resume", "--set", "run.log_every=2"]) == 0
    assert find_checkpoint(out).name == "step_000002"
    assert main(["--config", str(cfg_path), "--set", "optim.learning_rate=1"]) == 2
    assert "optim.learning_rate" in capsys.readouterr().err
    assert main(["--config", str(cfg_path), "--out", str(out)]) == 1
    assert "--resume" in capsys.readouterr().err


def test_cli_is_registered_with_python_m_ecl(capsys):
    from ecl.cli import main as ecl_main

    with pytest.raises(SystemExit) as exit_info:
        ecl_main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--set", "--out", "--max-steps", "--resume"):
        assert flag in text


def test_quick_preset_builds(repo_root):
    cfg = load_config(repo_root / "configs" / "faceparts-quick.yaml")
    assert cfg.run.name == "faceparts-quick" and cfg.data.name == "faceparts"


def test_edited_checkpoint_config_is_detected(uninterrupted, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(find_checkpoint(uninterrupted), copy)
    text = (copy / "config.yaml").read_text().replace("embedding_dim: 32", "embedding_dim: 16")
    (copy / "config.yaml").write_text(text)
    with pytest.raises(ValueError, match="edited after training"):
        load_run(copy)


def test_amp_choice_by_device():
    from ecl.runtime import resolve_amp

    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == (None, False)
    assert resolve_amp("off", cpu) == (None, False)
    assert resolve_amp("bf16", cpu) == (torch.bfloat16, False)
    with pytest.raises(ConfigError, match="fp16 is not supported on the CPU"):
        resolve_amp("fp16", cpu)


@pytest.mark.slow
def test_sigint_to_the_cli_leaves_a_resumable_checkpoint(tmp_path, repo_root):
    import os
    import signal
    import subprocess
    import sys
    import time

    # Far more steps than the test waits for, so the signal always lands mid-run.
    cfg_path = save_config(tiny_config("optim.max_steps=100000"), tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecl", "train", "--config", str(cfg_path), "--out", str(out)],
        cwd=repo_root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell that starts jobs in the background (nohup, &, some CI runners) hands them SIGINT
        # ignored, and Python keeps it ignored: give the child the default handling a terminal has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()  # leave no training process behind
        raise
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    ckpt = find_checkpoint(out)
    step = json.loads((ckpt / "meta.json").read_text())["step"]
    assert 2 <= step < 100000
    # ... and the run continues from there.
    assert main(["--config", str(cfg_path), "--out", str(out), "--resume", "--max-steps", str(step + 1)]) == 0
    assert find_checkpoint(out).name == f"step_{step + 1:06d}"

"""DDP: two CPU processes (gloo) under torchrun train the same weights as one process.

Each process sees its half of every global batch, and BatchNorm normalises per process, so the exact
single-process equivalent of 2 processes x (batch B / 2) is one process with batch B and
``optim.accum_steps=2`` (two micro-batches of B / 2 whose gradients are averaged). The two can
differ only by the order of floating-point sums (the all-reduce, and convolutions run with one thread
per process instead of two): the logged losses agree to about 1e-6 relative and the weights to about
1e-5 after four SGD steps, hence the tolerances below instead of exact equality. (One process with
one batch of B differs more: its BatchNorm statistics come from all B images.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train import tiny_config

from ecl.checkpoint import find_checkpoint
from ecl.config import save_config
from ecl.models import build_model
from ecl.train import fit

pytestmark = pytest.mark.slow

DDP = ("optim.max_steps=4", "run.checkpoint_every=0")


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, repo_root):
    cfg = tiny_config(*DDP, "data.hflip=true")
    cfg_path = save_config(cfg, tmp_path / "tiny.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ecl",
        "train",
        "--config",
        str(cfg_path),
        "--out",
        str(tmp_path / "ddp"),
    ]
    done = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    fit(tiny_config(*DDP, "data.hflip=true", "optim.accum_steps=2"), out_dir=tmp_path / "single")

    ddp = load_file(str(find_checkpoint(tmp_path / "ddp") / "model.safetensors"))
    single = load_file(str(find_checkpoint(tmp_path / "single") / "model.safetensors"))
    assert ddp.keys() == single.keys()
    params = [
        k for k in ddp if not any(s in k for s in ("running_mean", "running_var", "num_batches_tracked"))
    ]
    for key in params:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=5e-5, msg=key)
    curves = [
        [
            (r["loss"], r["id"], r["match"])
            for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
            if r["event"] == "step"
        ]
        for run in ("ddp", "single")
    ]
    assert len(curves[0]) == 4
    torch.testing.assert_close(torch.tensor(curves[0]), torch.tensor(curves[1]), rtol=1e-4, atol=1e-5)
    # ... and both actually trained: the weights left their (shared) initialisation.
    torch.manual_seed(cfg.run.seed)
    initial, _ = build_model(cfg, num_classes=8)
    start = initial.state_dict()
    assert sum(not torch.allclose(ddp[f"model.{k}"], start[k]) for k in start if f"model.{k}" in params) > 10

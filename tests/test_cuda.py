"""CPU and CUDA agree: ECLoss values and gradients, a training step, and exact resume on the GPU.

Every test here is marked ``cuda`` and skipped where ``torch.cuda.is_available()`` is False (CI, the
2-core development machines). ``benchmarks/gpu_check.sh`` runs them on a GPU machine with
``pytest -m cuda tests/test_cuda.py``. The helpers take the device as an argument, so the same checks
can be pointed at the CPU by hand (CPU against CPU) to check the test code itself.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from ecl.config import ExperimentConfig, apply_overrides
from ecl.losses import ecloss

# Deterministic cuBLAS needs this before the first cuBLAS handle is made (the resume test asks for
# run.deterministic=true; fit sets it too, but too late when an earlier test already used the GPU).
if torch.cuda.is_available():
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# The tiny run of tests/test_train.py: timm's test_resnet at 32 x 32 on 64 FaceParts images.
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
# Dropout and flips exercise the RNG state a resume must restore.
RESUME = ("optim.max_steps=6", "model.dropout=0.2", "data.hflip=true", "run.checkpoint_every=2")


def tiny_config(*extra: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), [*TINY, *extra])


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda")


@pytest.fixture
def no_tf32():
    """float32 convolutions and matmuls in full precision (cuDNN uses TF32 by default), restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def blob_activations(seed: int = 0, shape=(4, 24, 14, 14)) -> torch.Tensor:
    """Target-layer-like float32 maps: one bump at a random place per map, noise, three dead channels.

    Bumps keep every peak well defined (pure noise would put every centroid near the map's centre,
    where rounding to a cell could go either way by the last bit).
    """
    batch, channels, height, width = shape
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    r0 = torch.rand(batch, channels, 1, 1, generator=g) * (height - 1)
    c0 = torch.rand(batch, channels, 1, 1, generator=g) * (width - 1)
    spread = 1 + 2 * torch.rand(batch, channels, 1, 1, generator=g)
    amplitude = 0.5 + 2 * torch.rand(batch, channels, 1, 1, generator=g)
    bump = torch.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * spread**2))
    maps = amplitude * bump + 0.3 * torch.randn(shape, generator=g)
    maps[:, :3] = -maps[:, :3].abs()  # inactive maps (max <= 0) must stay out of the mean
    return maps


ECLOSS_CASES = [
    pytest.param(dict(peak=peak, gamma=gamma, consistency=consistency), id=f"{peak}-g{gamma}-c{consistency}")
    for peak in ("argmax", "centroid", "subcell")
    for gamma, consistency in ((0.0, 0.0), (0.1, 0.0), (0.1, 0.5))
]


def loss_and_grad(maps: torch.Tensor, device: torch.device, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    x = maps.detach().to(device).clone().requires_grad_()
    loss = ecloss(x, **kwargs)
    loss.backward()
    return loss.detach().cpu(), x.grad.cpu()


@pytest.mark.parametrize("kwargs", ECLOSS_CASES)
def test_ecloss_cuda_matches_cpu(kwargs, cuda):
    check_ecloss_matches(cuda, **kwargs)


def check_ecloss_matches(device: torch.device, **kwargs) -> None:
    maps = blob_activations()
    cpu_loss, cpu_grad = loss_and_grad(maps, torch.device("cpu"), **kwargs)
    dev_loss, dev_grad = loss_and_grad(maps, device, **kwargs)
    assert torch.isfinite(dev_loss) and 0 < cpu_loss.item() < 2
    # float32 rounding moves the loss by ~1e-7 and the gradients (up to ~1.5e-3) by ~1e-9.
    torch.testing.assert_close(dev_loss, cpu_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dev_grad, cpu_grad, rtol=1e-4, atol=1e-7)
    assert dev_grad[:, :3].abs().max() == 0  # dead maps get no gradient


@pytest.mark.parametrize("kwargs", ECLOSS_CASES)
def test_ecloss_under_bf16_autocast_stays_finite_and_close(kwargs, cuda):
    check_ecloss_bf16(cuda, **kwargs)


def check_ecloss_bf16(device: torch.device, **kwargs) -> None:
    maps = blob_activations()
    cpu_loss, _ = loss_and_grad(maps, torch.device("cpu"), **kwargs)
    x = maps.detach().to(device).bfloat16().requires_grad_()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = ecloss(x, **kwargs)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()
    # bf16 inputs moved the loss by at most ~1.3e-4 on the CPU (a peak can move to a tied cell).
    assert abs(loss.item() - cpu_loss.item()) < 5e-3


@pytest.mark.parametrize("method", ["ecloss", "none"])
def test_train_step_cuda_matches_cpu(method, cuda, no_tf32):
    check_train_steps_match(cuda, method)


def check_train_steps_match(device: torch.device, method: str = "ecloss", steps: int = 3) -> None:
    """The same model, optimiser and batches on the CPU and on ``device``: every step's loss agrees."""
    from ecl.data.factory import build_train_dataset
    from ecl.data.sampler import collate_images_labels
    from ecl.models import build_model
    from ecl.optim import build_optimizer
    from ecl.train import TrainModule, train_step

    cfg = tiny_config(f"loss.method={method}", "loss.gamma=0.1" if method == "ecloss" else "loss.gamma=0")
    dataset = build_train_dataset(cfg)
    batches = [collate_images_labels([dataset[i] for i in range(k * 16, (k + 1) * 16)]) for k in range(steps)]
    runs = []
    for where in (torch.device("cpu"), device):
        torch.manual_seed(cfg.run.seed)
        model, head = build_model(cfg, int(dataset.num_classes))  # built on the CPU: same weights
        model.to(where)
        head.to(where)
        module = TrainModule(model, head).train()
        optimizer = build_optimizer((model, head), cfg.optim)
        results = [
            train_step(
                module,
                optimizer,
                images.to(where),
                labels.to(where),
                cfg.loss,
                lr=cfg.optim.lr,
                clip_grad_norm=cfg.optim.clip_grad_norm,
            )
            for images, labels in batches
        ]
        runs.append((results, model.state_dict()))
    (cpu_results, cpu_state), (dev_results, dev_state) = runs
    for step, (a, b) in enumerate(zip(cpu_results, dev_results, strict=True), start=1):
        assert b.loss == pytest.approx(a.loss, rel=1e-4, abs=1e-5), f"step {step}"
        assert b.parts.keys() == a.parts.keys()
        for name in a.parts:
            assert b.parts[name] == pytest.approx(a.parts[name], rel=1e-3, abs=1e-4), f"step {step}: {name}"
    for key, value in cpu_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(dev_state[key].cpu(), value, rtol=1e-3, atol=1e-4, msg=key)


def test_resume_on_cuda_equals_uninterrupted(cuda, tmp_path, record_testsuite_property):
    max_difference = check_resume_exact(cuda, tmp_path)
    # In the JUnit XML gpu_check.sh keeps: 0.0 means the resumed weights are bitwise equal.
    record_testsuite_property("resume_max_abs_weight_difference", max_difference)


def check_resume_exact(device: torch.device, tmp_path) -> float:
    """A deterministic run stopped at step 3 and resumed reaches the uninterrupted run's weights.

    Returns the largest absolute weight difference (0.0: bitwise equal; it must at least be within a
    tight tolerance, in case an op without a deterministic CUDA kernel ran: fit only warns about those).
    """
    from safetensors.torch import load_file

    from ecl.checkpoint import find_checkpoint
    from ecl.train import fit

    cfg = tiny_config(*RESUME, f"run.device={device.type}", "run.deterministic=true")
    fit(cfg, out_dir=tmp_path / "full")
    partial = fit(cfg, out_dir=tmp_path / "r", max_steps=3)
    assert not partial.complete and partial.step == 3
    resumed = fit(cfg, out_dir=tmp_path / "r", resume=True)
    assert resumed.complete
    full = load_file(str(find_checkpoint(tmp_path / "full") / "model.safetensors"))
    again = load_file(str(find_checkpoint(tmp_path / "r") / "model.safetensors"))
    assert full.keys() == again.keys()
    for key in full:
        torch.testing.assert_close(again[key], full[key], rtol=1e-5, atol=1e-6, msg=key)
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "step"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]
    return max(
        (float((again[key].double() - full[key].double()).abs().max()) for key in full if full[key].numel()),
        default=0.0,
    )

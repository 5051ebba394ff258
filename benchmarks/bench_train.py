"""Training speed: images/second of the quick preset, and what ECLoss costs inside real training steps.

    python benchmarks/bench_train.py            # CPU numbers (and GPU numbers where CUDA is available)
    python benchmarks/bench_train.py --quick    # a smoke run, < 30 s
    python benchmarks/bench_train.py --json out.json

What is measured:

1. Quick preset on this machine: ``ecl.train.fit`` on ``configs/faceparts-quick.yaml`` for a few
   steps; a callback timestamps every step, so a step's time includes data loading, forward,
   backward and the optimiser step. Reported: median images/s over steps 2.. (the first step pays
   for lazy initialisation).
2. ECLoss overhead: ``ecl.train.train_step`` steps of the preset's model with ``loss.method=none``
   (baseline) and ``loss.method=ecloss`` alternate step by step on one model (so drifting machine load
   hits both alike); the median ratio of adjacent steps' times is ECLoss's cost relative to the baseline step
   (the ratios of median and of fastest step times are printed too; on a busy shared machine
   single steps vary several-fold, and only the paired ratio stays stable).
3. On a CUDA machine only: resnet50 at 112 x 112 (face stem, ArcFace + ECLoss on layer3), bf16
   autocast and channels_last, with and without ``torch.compile``: images/s of the training step
   alone (images already on the GPU, as with a fast loader), median over timed steps after warm-up.

Numbers are printed; nothing is asserted (speed is not tested).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from ecl.config import apply_overrides, load_config  # noqa: E402
from ecl.train import fit  # noqa: E402

QUICK_PRESET = REPO / "configs" / "faceparts-quick.yaml"


def step_times(config, steps: int) -> list[float]:
    """Seconds per training step (callback-to-callback) of a fresh ``fit`` run, first step excluded."""
    stamps: list[float] = []

    def stamp(event: dict) -> None:
        if event["event"] == "step":
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        fit(config, out_dir=Path(tmp) / "run", callbacks=[stamp], max_steps=steps + 1)
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def interleaved_step_times(cfg, pairs: int) -> dict[str, list[float]]:
    """Alternate baseline and ECLoss training steps on one model; seconds per step for each.

    Each step is ``ecl.train.train_step``, the one ``fit`` takes (forward, objective, backward,
    clipping, optimiser step), on batches of the training set (no checkpoints or logging).
    Alternating step by step (and swapping which goes first in every pair) makes a changing machine
    load hit both methods alike.
    """
    import dataclasses

    from ecl.data.factory import build_train_dataset
    from ecl.data.sampler import collate_images_labels
    from ecl.models import build_model
    from ecl.train import TrainModule, build_optimizer, train_step

    dataset = build_train_dataset(cfg)
    torch.manual_seed(cfg.run.seed)
    model, head = build_model(cfg, int(dataset.num_classes))
    module = TrainModule(model, head).train()
    optimizer = build_optimizer((model, head), cfg.optim)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_images_labels,
        generator=torch.Generator().manual_seed(0),
    )
    loss_cfgs = {m: dataclasses.replace(cfg.loss, method=m) for m in ("none", "ecloss")}
    times: dict[str, list[float]] = {"none": [], "ecloss": []}
    batches = iter(())
    for pair in range(pairs + 1):
        order = ("none", "ecloss") if pair % 2 else ("ecloss", "none")
        for method in order:
            try:
                images, labels = next(batches)
            except StopIteration:
                batches = iter(loader)
                images, labels = next(batches)
            start = time.perf_counter()
            train_step(
                module, optimizer, images, labels, loss_cfgs[method], clip_grad_norm=cfg.optim.clip_grad_norm
            )
            if pair:  # pair 0 warms up
                times[method].append(time.perf_counter() - start)
    return times


def bench_cpu(quick: bool) -> dict:
    cfg = load_config(QUICK_PRESET, ["run.progress=false", "run.device=cpu", "run.log_every=1000"])
    if quick:
        # A smoke run: smaller images, data and batches keep it under 30 s on a busy 2-core machine
        # (its numbers are not the preset's).
        cfg = apply_overrides(cfg, ["optim.batch_size=16", "data.image_size=64", "data.num_identities=8"])
    steps, pairs = (2, 3) if quick else (20, 40)
    batch = cfg.optim.batch_size
    fit_times = step_times(cfg, steps)
    times = interleaved_step_times(cfg, pairs)
    median = {m: statistics.median(t) for m, t in times.items()}
    result = {
        "preset": QUICK_PRESET.name,
        "backbone": cfg.model.backbone,
        "image_size": cfg.data.image_size,
        "batch_size": batch,
        "method": cfg.loss.method,
        "threads": torch.get_num_threads(),
        "fit_steps_timed": len(fit_times),
        "images_per_s_fit": batch / statistics.median(fit_times),
        "pairs_timed": len(times["ecloss"]),
        "images_per_s_ecloss": batch / median["ecloss"],
        "images_per_s_baseline": batch / median["none"],
        # Adjacent steps share the machine's load: the median of their ratios is the robust number.
        "ecloss_overhead_ratio": statistics.median(
            e / n for e, n in zip(times["ecloss"], times["none"], strict=True)
        ),
        "ecloss_overhead_ratio_of_medians": median["ecloss"] / median["none"],
        "ecloss_overhead_ratio_of_minima": min(times["ecloss"]) / min(times["none"]),
    }
    print(
        f"CPU ({result['threads']} threads), {result['preset']} "
        f"({cfg.model.backbone}, {cfg.data.image_size} px, batch {batch}):"
    )
    print(
        f"  fit() images/s ({cfg.loss.method}, data loading included), median of {len(fit_times)} steps: "
        f"{result['images_per_s_fit']:.1f}"
    )
    print(f"  interleaved training steps, median of {result['pairs_timed']} per method:")
    print(f"    images/s with ECLoss:   {result['images_per_s_ecloss']:8.1f}")
    print(f"    images/s baseline:      {result['images_per_s_baseline']:8.1f}")
    print(
        f"    ECLoss overhead ratio (step time with / without), median over adjacent pairs: "
        f"{result['ecloss_overhead_ratio']:.3f}"
    )
    print(
        f"      (ratio of median step times {result['ecloss_overhead_ratio_of_medians']:.3f}, "
        f"of fastest steps {result['ecloss_overhead_ratio_of_minima']:.3f})"
    )
    return result


def bench_gpu(quick: bool) -> dict:
    """resnet50 at 112 px, bf16 + channels_last, eager vs torch.compile (CUDA only)."""
    from ecl.config import ExperimentConfig
    from ecl.models import build_model
    from ecl.train import TrainModule, build_optimizer, train_step

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    batch = 64 if quick else 256
    warmup, timed = (3, 5) if quick else (10, 30)
    cfg = apply_overrides(
        ExperimentConfig(),
        [
            "model.backbone=resnet50",
            "model.target_layer=layer3",
            "data.image_size=112",
            f"optim.batch_size={batch}",
            "loss.method=ecloss",
        ],
    )
    results = {"device": torch.cuda.get_device_name(), "batch_size": batch, "dtype": str(dtype)}
    images = torch.rand(batch, 3, 112, 112, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10_000, (batch,), device=device)
    for compiled in (False, True):
        torch.manual_seed(0)
        model, head = build_model(cfg, num_classes=10_000)
        model.to(device=device, memory_format=torch.channels_last)
        head.to(device)
        module = TrainModule(model, head).train()
        if compiled:
            module.model = torch.compile(model)
        optimizer = build_optimizer((model, head), cfg.optim)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        durations = []
        t_compile = time.perf_counter()
        for i in range(warmup + timed):
            torch.cuda.synchronize()
            start = time.perf_counter()
            train_step(
                module,
                optimizer,
                images,
                labels,
                cfg.loss,
                scaler=scaler,
                amp_dtype=dtype,
                clip_grad_norm=cfg.optim.clip_grad_norm,
            )
            torch.cuda.synchronize()
            durations.append(time.perf_counter() - start)
            if i == warmup - 1:
                warm_seconds = time.perf_counter() - t_compile
        key = "compile" if compiled else "eager"
        results[f"images_per_s_{key}"] = batch / statistics.median(durations[warmup:])
        results[f"warmup_seconds_{key}"] = warm_seconds
        del model, head, module, optimizer
        torch.cuda.empty_cache()
    print(
        f"GPU {results['device']}: resnet50, 112 px, batch {batch}, {dtype}, channels_last, "
        "ArcFace + ECLoss (layer3):"
    )
    print(
        f"  eager:         {results['images_per_s_eager']:8.0f} images/s "
        f"(warm-up {results['warmup_seconds_eager']:.1f} s)"
    )
    print(
        f"  torch.compile: {results['images_per_s_compile']:8.0f} images/s "
        f"(warm-up {results['warmup_seconds_compile']:.1f} s)"
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 30 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA section")
    args = parser.parse_args(argv)
    results = {"cpu": bench_cpu(args.quick)}
    if torch.cuda.is_available() and not args.no_gpu:
        results["gpu"] = bench_gpu(args.quick)
    else:
        print("GPU: CUDA not available, resnet50 / bf16 / torch.compile section skipped")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

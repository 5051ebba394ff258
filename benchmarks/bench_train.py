"""Training speed: images/second of the quick preset, and what ECLoss costs inside real training steps.

    python benchmarks/bench_train.py            # CPU numbers (and GPU numbers where CUDA is available)
    python benchmarks/bench_train.py --quick    # a smoke run, < 30 s
    python benchmarks/bench_train.py --no-cpu --gpu-batch 128 --json out.json   # the GPU section alone

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
3. On a CUDA machine (``--gpu-device``, default ``cuda``): resnet50 at 112 x 112 (face stem, ArcFace
   head, ECLoss on layer3), batch 128, bf16 autocast and channels_last, eager and ``torch.compile``:
   ``ecl.train.train_step`` with plain ArcFace and with ArcFace + ECLoss alternated on one model
   (images already on the GPU, as with a fast loader): images/s of each, the ECLoss overhead ratio
   (aim: at most 1.03), the compile speed-up and the peak GPU memory
   (``torch.cuda.max_memory_allocated``); and timm's bare forward + backward of the same backbone and
   batch (no head, no optimiser; aim: training at least 0.8x of it), plus timm's stock model at the
   same size for reference. ``--gpu-device cpu`` with tiny ``--gpu-*`` sizes runs the same code as a
   plumbing check (``benchmarks/gpu_check.sh --dry-run``).

``--json FILE`` writes every number, with the device name and the torch, CUDA and timm versions.
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


def environment() -> dict:
    """Where the numbers were measured: device name, torch / CUDA / cuDNN / timm versions, threads."""
    import platform

    import timm

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "timm": timm.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            device_name=torch.cuda.get_device_name(0),
            device_memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
        )
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _batches(args, device: torch.device, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few random batches already on the device (as with a fast loader), channels_last."""
    generator = torch.Generator().manual_seed(0)
    size = args.gpu_image_size
    return [
        (
            torch.rand(args.gpu_batch, 3, size, size, generator=generator)
            .to(device)
            .contiguous(memory_format=torch.channels_last),
            torch.randint(0, args.gpu_classes, (args.gpu_batch,), generator=generator).to(device),
        )
        for _ in range(count)
    ]


def bench_bare(args, device: torch.device, amp_dtype, face_stem: bool) -> dict:
    """timm's backbone alone: forward and backward (loss = mean of the output), no head, no optimiser.

    ``face_stem=True`` is the network the training step runs (timm's model with the face stem, no
    classifier); ``False`` is timm's stock model (stem max-pool, 1000-way classifier) at the same size.
    """
    import timm

    from ecl.models import apply_face_stem

    torch.manual_seed(0)
    if face_stem:
        net = timm.create_model(args.gpu_backbone, num_classes=0, global_pool="")
        apply_face_stem(net)
    else:
        net = timm.create_model(args.gpu_backbone)
    net.to(device=device, memory_format=torch.channels_last).train()
    batches = _batches(args, device)

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = net(batches[i % len(batches)][0])
        out.float().mean().backward()
        net.zero_grad(set_to_none=True)

    _reset_peak(device)
    for i in range(args.gpu_warmup):
        step(i)
    durations = []
    for i in range(2 * args.gpu_pairs):
        _sync(device)
        start = time.perf_counter()
        step(i)
        _sync(device)
        durations.append(time.perf_counter() - start)
    variant = "with the face stem, no classifier" if face_stem else "stock"
    result = {
        "model": f"timm {args.gpu_backbone} {variant}",
        "steps_timed": len(durations),
        "ms_per_step_median": 1e3 * statistics.median(durations),
        "images_per_s": args.gpu_batch / statistics.median(durations),
        "peak_memory_bytes": _peak(device),
    }
    return result  # the model and batches go with this frame, before the next measurement


def bench_train_steps(args, device: torch.device, amp_dtype, compiled: bool) -> dict:
    """``ecl.train.train_step`` with loss.method=none (plain ArcFace) and ecloss, alternated, one model."""
    import dataclasses

    from ecl.config import ExperimentConfig
    from ecl.models import build_model
    from ecl.train import TrainModule, build_optimizer, train_step

    cfg = apply_overrides(
        ExperimentConfig(),
        [
            f"model.backbone={args.gpu_backbone}",
            "model.target_layer=layer3",
            f"data.image_size={args.gpu_image_size}",
            f"optim.batch_size={args.gpu_batch}",
            "optim.lr=0.01",  # a benchmark on random batches: keep the loss far from overflowing
            "loss.method=ecloss",
        ],
    )
    torch.manual_seed(0)
    model, head = build_model(cfg, num_classes=args.gpu_classes)
    model.to(device=device, memory_format=torch.channels_last)
    head.to(device)
    module = TrainModule(model, head).train()
    if compiled:
        module.model = torch.compile(model)
    optimizer = build_optimizer((model, head), cfg.optim)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda" else None
    loss_cfgs = {m: dataclasses.replace(cfg.loss, method=m) for m in ("none", "ecloss")}
    batches = _batches(args, device)
    count = {"n": 0}

    def step(method: str) -> None:
        images, labels = batches[count["n"] % len(batches)]
        count["n"] += 1
        train_step(
            module,
            optimizer,
            images,
            labels,
            loss_cfgs[method],
            scaler=scaler,
            amp_dtype=amp_dtype,
            clip_grad_norm=cfg.optim.clip_grad_norm,
        )

    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(args.gpu_warmup):
        step("none")
        step("ecloss")
    _sync(device)
    warm_seconds = time.perf_counter() - start
    times: dict[str, list[float]] = {"none": [], "ecloss": []}
    for pair in range(args.gpu_pairs):
        for method in ("none", "ecloss") if pair % 2 == 0 else ("ecloss", "none"):
            _sync(device)
            start = time.perf_counter()
            step(method)
            _sync(device)
            times[method].append(time.perf_counter() - start)
    median = {m: statistics.median(t) for m, t in times.items()}
    result = {
        "target_layer": model.target_layer,
        "target_shape": [model.num_channels, *model.target_size],
        "pairs_timed": args.gpu_pairs,
        "warmup_steps": 2 * args.gpu_warmup,
        "warmup_seconds": warm_seconds,
        "ms_per_step_baseline": 1e3 * median["none"],
        "ms_per_step_ecloss": 1e3 * median["ecloss"],
        "images_per_s_baseline": args.gpu_batch / median["none"],
        "images_per_s_ecloss": args.gpu_batch / median["ecloss"],
        "ecloss_overhead_ratio": statistics.median(
            e / n for e, n in zip(times["ecloss"], times["none"], strict=True)
        ),
        "ecloss_overhead_ratio_of_medians": median["ecloss"] / median["none"],
        "ecloss_overhead_ratio_of_minima": min(times["ecloss"]) / min(times["none"]),
        "peak_memory_bytes": _peak(device),
    }
    return result


def bench_gpu(args, save=lambda results: None) -> dict:
    """resnet50 at 112 px, batch 128, bf16 autocast, channels_last: training steps eager and compiled,
    the ECLoss overhead, peak memory, and timm's bare forward + backward of the same backbone.

    Runs on ``--gpu-device`` (CUDA; ``cpu`` with tiny sizes is the plumbing check of
    ``gpu_check.sh --dry-run``). A failing ``torch.compile`` is recorded, not raised, and so is Ctrl-C
    (or a time limit's SIGINT) during it; ``save`` is called with the results so far after every
    measurement, so a run stopped from outside still leaves them.
    """
    device = torch.device(args.gpu_device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.gpu_amp]
    results: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backbone": args.gpu_backbone,
        "image_size": args.gpu_image_size,
        "batch_size": args.gpu_batch,
        "num_classes": args.gpu_classes,
        "amp": args.gpu_amp,
        "channels_last": True,
        "head": "arcface",
    }
    print(
        f"{results['device_name']}: {args.gpu_backbone}, {args.gpu_image_size} px, batch {args.gpu_batch}, "
        f"amp {args.gpu_amp}, channels_last"
    )
    results["bare"] = bench_bare(args, device, amp_dtype, face_stem=True)
    results["bare_stock"] = bench_bare(args, device, amp_dtype, face_stem=False)
    save(results)
    print(
        f"  timm bare forward + backward (face stem): {results['bare']['images_per_s']:8.0f} images/s; "
        f"stock {args.gpu_backbone}: {results['bare_stock']['images_per_s']:8.0f} images/s"
    )
    modes = ("eager",) if args.no_compile else ("eager", "compile")
    for mode in modes:
        try:
            results[mode] = bench_train_steps(args, device, amp_dtype, compiled=mode == "compile")
        except Exception as err:  # a failed torch.compile is a result to record, not a crash
            results[mode] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            print(f"  {mode}: FAILED {results[mode]['error'][:300]}")
            continue
        except KeyboardInterrupt:
            results[mode] = {"error": "stopped from outside (Ctrl-C or a time limit) before it finished"}
            print(f"  {mode}: stopped from outside before it finished")
            break
        finally:
            save(results)
        r = results[mode]
        memory = f", peak {r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] else ""
        print(
            f"  {mode:<8s} ArcFace + ECLoss {r['images_per_s_ecloss']:8.0f} images/s, plain ArcFace "
            f"{r['images_per_s_baseline']:8.0f} images/s, ECLoss overhead {r['ecloss_overhead_ratio']:.3f} "
            f"(warm-up {r['warmup_seconds']:.1f} s{memory})"
        )
    if args.no_compile:
        results["compile"] = {"skipped": "--no-compile"}
    bare = results["bare"]["images_per_s"]
    aims = {}
    for mode in modes:
        r = results.get(mode, {})
        if "images_per_s_ecloss" not in r:
            continue
        aims[f"ecloss_overhead_{mode}"] = {
            "value": r["ecloss_overhead_ratio"],
            "aim": "<= 1.03",
            "met": r["ecloss_overhead_ratio"] <= 1.03,
        }
        aims[f"train_vs_bare_{mode}"] = {
            "value": r["images_per_s_ecloss"] / bare,
            "aim": ">= 0.8",
            "met": r["images_per_s_ecloss"] / bare >= 0.8,
            "note": f"ArcFace + ECLoss training step ({mode}) over timm's bare eager forward + backward",
        }
    if "images_per_s_ecloss" in results["eager"] and "images_per_s_ecloss" in results.get("compile", {}):
        results["compile_speedup"] = (
            results["compile"]["images_per_s_ecloss"] / results["eager"]["images_per_s_ecloss"]
        )
        print(f"  torch.compile speed-up: {results['compile_speedup']:.2f}x")
    results["aims"] = aims
    for name, aim in aims.items():
        print(f"  aim {name}: {aim['value']:.3f} ({aim['aim']}): {'met' if aim['met'] else 'NOT met'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 30 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU section")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU section (quick preset)")
    gpu = parser.add_argument_group("GPU section")
    gpu.add_argument(
        "--gpu-device",
        default="cuda",
        help="device of the GPU section (default cuda; cpu runs it as a plumbing check, with tiny sizes)",
    )
    gpu.add_argument("--gpu-backbone", default="resnet50")
    gpu.add_argument("--gpu-batch", type=int, default=128)
    gpu.add_argument("--gpu-image-size", type=int, default=112)
    gpu.add_argument("--gpu-amp", choices=("bf16", "fp16", "none"), default="bf16")
    gpu.add_argument("--gpu-classes", type=int, default=10_000, help="identities of the ArcFace head")
    gpu.add_argument("--gpu-warmup", type=int, default=None, help="warm-up pairs (default 10, --quick 3)")
    gpu.add_argument("--gpu-pairs", type=int, default=None, help="timed pairs (default 30, --quick 5)")
    gpu.add_argument("--no-compile", action="store_true", help="eager only (no torch.compile)")
    args = parser.parse_args(argv)
    args.gpu_warmup = args.gpu_warmup or (3 if args.quick else 10)
    args.gpu_pairs = args.gpu_pairs or (5 if args.quick else 30)
    results: dict = {"benchmark": "bench_train", "quick": args.quick, "env": environment()}
    start = time.perf_counter()

    def save(gpu: dict | None = None) -> None:
        if gpu is not None:
            results["gpu"] = gpu
        results["seconds"] = time.perf_counter() - start
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")

    if args.no_cpu:
        results["cpu"] = {"skipped": "--no-cpu"}
    else:
        results["cpu"] = bench_cpu(args.quick)
    wants_cuda = torch.device(args.gpu_device).type == "cuda"
    if args.no_gpu:
        results["gpu"] = {"skipped": "--no-gpu"}
    elif wants_cuda and not torch.cuda.is_available():
        results["gpu"] = {"skipped": "no CUDA"}
        print("GPU: CUDA not available, resnet50 / bf16 / torch.compile section skipped")
    else:
        results["gpu"] = bench_gpu(args, save)
    save()
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

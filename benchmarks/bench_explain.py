"""Cost of the explainability pass against the forward pass alone, and its memory, at two sizes.

    python benchmarks/bench_explain.py                 # 2,500 and 10,000 FaceParts test images
    python benchmarks/bench_explain.py --images 1000   # 250 and 1,000
    python benchmarks/bench_explain.py --quick         # a smoke run (< 30 s on 2 CPU cores)

For each size, in a fresh subprocess (so that peak-memory readings start clean):
1. render the FaceParts images into memory (not timed);
2. time the forward pass alone over them (``no_grad``, same loader);
3. time ``collect_activations`` (the one pass that gives peaks, maxima, quantile thresholds, the
   part-IoU tallies and the peak-in-part counts);
(2) and (3) alternate ``--repeat`` times and the fastest reading of each is kept (a shared machine
slows either at random). It prints the time ratio (3) / (2) and the growth of the process's peak
resident memory during (3) beyond what (2) needed. Memory that does not grow with the number of
images shows as the same extra peak at both sizes, apart from the O(N C) per-map maxima and peaks
(reported).

Peak memory is the process's high-water mark, which includes what glibc's heap keeps after frees:
its default mmap threshold rises after large frees, so later large temporaries come from a heap that
is not handed back and the mark can creep with the number of batches. ``--fixed-mmap-threshold`` runs
the measurements with ``MALLOC_MMAP_THRESHOLD_=131072`` (large blocks always mapped and returned),
which shows what the pass itself keeps.

``--exact`` also runs the exact second pass of part IoU and prints the largest difference
between its IoUs and the one-pass ones. Translation tracking runs on a fixed subset of images
(128 by default, 9 forward passes each), whatever the dataset size: it is timed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def measure(
    images: int,
    batch_size: int,
    device: str,
    exact: bool,
    tracking_images: int,
    backbone: str,
    image_size: int,
    repeat: int = 1,
) -> dict:
    import numpy as np
    import torch

    from ecl.activations import collect_activations
    from ecl.data import FaceParts
    from ecl.metrics import part_iou, part_iou_from_stats, translation_tracking
    from ecl.models import create_face_model

    torch.manual_seed(0)
    per_identity = min(20, images)
    dataset = FaceParts(
        split="test",
        num_identities=-(-images // per_identity),
        images_per_identity=per_identity,
        image_size=image_size,
        cache="memory",
    )
    model = create_face_model(backbone, embedding_dim=512, image_size=image_size).to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)

    def forward_only() -> None:
        with torch.no_grad(), torch.autocast(device_type="cuda", enabled=device.startswith("cuda")):
            for batch in loader:
                model(batch["image"].to(device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.no_grad():  # warm-up: allocator, kernels
        model(next(iter(loader))["image"].to(device))
    # The machine may be shared: alternate the two passes and keep the fastest reading of each.
    forward_s = explain_s = float("inf")
    rss_before = rss_after = 0.0
    for attempt in range(repeat):
        start = time.perf_counter()
        forward_only()
        forward_s = min(forward_s, time.perf_counter() - start)
        if attempt == 0:
            rss_before = peak_rss_mb()
        start = time.perf_counter()
        stats = collect_activations(
            model, loader, device=device, progress=False, part_names=dataset.part_names
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        explain_s = min(explain_s, time.perf_counter() - start)
        if attempt == 0:
            rss_after = peak_rss_mb()

    tracking_s, count = 0.0, min(tracking_images, len(dataset))
    if count:
        subset = torch.stack([dataset[i]["image"] for i in range(count)])
        start = time.perf_counter()
        translation_tracking(model, subset, device=device, batch_size=batch_size)
        tracking_s = time.perf_counter() - start

    out = {
        "images": len(dataset),
        "map": [stats.num_channels, *stats.map_size],
        "forward_s": round(forward_s, 2),
        "explain_pass_s": round(explain_s, 2),
        "ratio": round(explain_s / forward_s, 2),
        "tracking_s": round(tracking_s, 2),
        "tracking_images": count,
        "peak_rss_mb_after_forward": round(rss_before, 1),
        "extra_peak_rss_mb": round(rss_after - rss_before, 1),
        "stats_mb": round((stats.max_activation.nbytes + stats.peak_cells.nbytes) / 2**20, 2),
    }
    if exact:
        one_pass = part_iou_from_stats(stats)
        start = time.perf_counter()
        reference = part_iou(
            model, loader, stats.thresholds, dataset.part_names, device=device, progress=False
        )
        out["exact_iou_pass_s"] = round(time.perf_counter() - start, 2)
        out["iou_max_abs_diff"] = float(np.abs(one_pass.iou - reference.iou).max())
        out["detectors_one_pass_vs_exact"] = [one_pass.num_detectors, reference.num_detectors]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=int, default=10_000, help="the larger size; the smaller is a quarter of it"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--tracking-images", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument(
        "--repeat", type=int, default=2, help="alternate the passes this often, keep the fastest"
    )
    parser.add_argument("--exact", action="store_true", help="also time the exact two-pass part IoU")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--fixed-mmap-threshold",
        action="store_true",
        help="measure with MALLOC_MMAP_THRESHOLD_=131072 (glibc: large blocks always returned)",
    )
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.tracking_images, args.exact, args.image_size, args.repeat = 8, 0, True, 64, 1
    if args.child is not None:
        print(
            json.dumps(
                measure(
                    args.child,
                    args.batch_size,
                    args.device,
                    args.exact,
                    args.tracking_images,
                    args.backbone,
                    args.image_size,
                    args.repeat,
                )
            )
        )
        return
    sizes = [max(args.images // 4, 1), args.images] if not args.quick else [8, 16]
    print(
        f"explainability pass vs forward pass: {args.backbone} at {args.image_size} px, "
        f"device {args.device}, batch {args.batch_size}"
        + (", MALLOC_MMAP_THRESHOLD_=131072" if args.fixed_mmap_threshold else "")
    )
    results = []
    for size in sizes:
        if args.quick:  # in this process: a smoke run, its memory readings mean little
            results.append(
                measure(
                    size,
                    args.batch_size,
                    args.device,
                    args.exact,
                    args.tracking_images,
                    args.backbone,
                    args.image_size,
                )
            )
            print(json.dumps(results[-1]))
            continue
        command = [
            sys.executable,
            __file__,
            "--child",
            str(size),
            "--batch-size",
            str(args.batch_size),
            "--device",
            args.device,
            "--backbone",
            args.backbone,
            "--tracking-images",
            str(args.tracking_images),
            "--image-size",
            str(args.image_size),
            "--repeat",
            str(args.repeat),
        ]
        if args.exact:
            command.append("--exact")
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"} if args.fixed_mmap_threshold else None
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            sys.exit(f"measurement at {size} images failed:\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        print(json.dumps(result))
    small, large = results
    print(
        f"time ratio (explain pass / forward pass): {small['ratio']} at {small['images']} images, "
        f"{large['ratio']} at {large['images']} images"
    )
    print(
        f"extra peak memory of the explain pass: {small['extra_peak_rss_mb']} MB "
        f"at {small['images']} images, "
        f"{large['extra_peak_rss_mb']} MB at {large['images']} images "
        f"(of which O(N C) maxima and peaks: {small['stats_mb']} MB and {large['stats_mb']} MB)"
    )


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()

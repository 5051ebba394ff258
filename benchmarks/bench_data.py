"""FaceParts rendering speed: images per second per CPU core (single process, one thread).

Usage: python benchmarks/bench_data.py [--quick] [--image-size 112] [--n 2000]

Renders images (image + part label map + landmarks: what the on-disk cache stores) in chunks of 50
and prints the throughput from CPU time (``time.process_time``: the per-core number, not inflated by
waiting for the CPU) and from wall time: the median chunk and the best chunk. On a machine shared
with other processes the best chunk is the least disturbed estimate. Also prints the cost of
``__getitem__`` from the cache (uint8 -> float tensor + 8 bool masks) as a ratio to rendering.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ecl.data import FaceParts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (< 30 s)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument(
        "--n", type=int, default=None, help="images to render (default 2000, 400 with --quick)"
    )
    parser.add_argument("--difficulty", type=float, default=0.25)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = args.n or (400 if args.quick else 2000)
    ipi, chunk = 20, 50
    ds = FaceParts(
        "train",
        num_identities=max(1, n // ipi),
        images_per_identity=ipi,
        image_size=args.image_size,
        difficulty=args.difficulty,
        cache="none",
    )
    n = len(ds)
    ds.render(0)  # warm-up (noise bank, constant tables)
    cpu, wall = [], []
    for start in range(0, n - chunk + 1, chunk):
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(start, start + chunk):
            ds.render(i)
        wall.append((time.perf_counter() - w0) / chunk)
        cpu.append((time.process_time() - c0) / chunk)
    cpu_a, wall_a = np.array(cpu), np.array(wall)
    print(
        f"FaceParts render {args.image_size}x{args.image_size}, {len(cpu) * chunk} images "
        f"in chunks of {chunk}, "
        "1 process, 1 thread:"
    )
    print(
        f"  cpu  median {1 / np.median(cpu_a):7.0f} images/s per core "
        f"({1e3 * np.median(cpu_a):.3f} ms/image), "
        f"best chunk {1 / cpu_a.min():7.0f} images/s"
    )
    print(
        f"  wall median {1 / np.median(wall_a):7.0f} images/s          "
        f"({1e3 * np.median(wall_a):.3f} ms/image), "
        f"best chunk {1 / wall_a.min():7.0f} images/s"
    )

    m = min(n, 200)
    mem = FaceParts(
        "train",
        num_identities=max(1, m // ipi),
        images_per_identity=ipi,
        image_size=args.image_size,
        difficulty=args.difficulty,
        cache="memory",
    )
    c0 = time.process_time()
    for i in range(len(mem)):
        mem[i]
    cpu_get = (time.process_time() - c0) / len(mem)
    print(
        f"  __getitem__ from cache: {1 / cpu_get:8.0f} items/s per core "
        f"(float image + {len(mem.part_names)} masks); rendering costs {np.median(cpu_a) / cpu_get:.1f}x that"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

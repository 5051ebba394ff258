"""FaceParts rendering speed: images per second per CPU core (single process, one thread).

Usage: python benchmarks/bench_data.py [--quick] [--image-size 112] [--n 2000]

Prints wall-clock and CPU-time throughput of rendering (image + part masks + landmarks, i.e. what
the on-disk cache stores), the cost of ``__getitem__`` from the cache (uint8 -> float tensors and
masks), and the cost of the same item without a cache. CPU time (``time.process_time``) is the
per-core number: it is not inflated when other processes share the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ecl.data import FaceParts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (< 30 s)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--n", type=int, default=None, help="images to render (default 2000, 300 with --quick)")
    parser.add_argument("--difficulty", type=float, default=0.5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = args.n or (300 if args.quick else 2000)
    ipi = 20
    ds = FaceParts("train", num_identities=max(1, n // ipi), images_per_identity=ipi, image_size=args.image_size,
                   difficulty=args.difficulty, cache="none")
    n = len(ds)
    ds.render(0)  # warm-up (noise bank, caches)
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        ds.render(i)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    print(f"FaceParts render {args.image_size}x{args.image_size}, {n} images, 1 thread:")
    print(f"  wall  {n / wall:8.0f} images/s  ({1e3 * wall / n:.3f} ms/image)")
    print(f"  cpu   {n / cpu:8.0f} images/s per core  ({1e3 * cpu / n:.3f} ms/image)")

    m = min(n, 500)
    mem = FaceParts("train", num_identities=max(1, m // ipi), images_per_identity=ipi, image_size=args.image_size,
                    difficulty=args.difficulty, cache="memory")
    c0 = time.process_time()
    for i in range(len(mem)):
        mem[i]
    cpu_get = time.process_time() - c0
    print(f"  __getitem__ from cache: {len(mem) / cpu_get:8.0f} items/s per core "
          f"(float image + {len(mem.part_names)} masks)")
    print(f"  render / getitem cost ratio: {(cpu / n) / (cpu_get / len(mem)):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

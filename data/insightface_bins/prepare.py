"""Check InsightFace verification packs (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin).

    python data/insightface_bins/prepare.py --root ~/data/bins [--from /path/to/faces_webface_112x112]

The packs ship inside InsightFace's training-set archives (e.g. ``faces_webface_112x112.zip``; see
https://github.com/deepinsight/insightface/tree/master/recognition/_datasets_), hosted on cloud
drives that need a browser. Download such an archive by hand, extract it, and pass the folder with
``--from``: the script copies the .bin files to ROOT and opens each with the restricted loader
(``ecl.data.load_bin``: plain bytes/lists/booleans only, never code), printing pairs and sha256.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ecl.data.binpack import load_bin  # noqa: E402
from ecl.data.download import sha256sum  # noqa: E402

NAMES = ("lfw.bin", "cfp_fp.bin", "cfp_ff.bin", "agedb_30.bin", "calfw.bin", "cplfw.bin", "vgg2_fp.bin")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Copy and check InsightFace .bin verification packs.")
    parser.add_argument("--root", required=True)
    parser.add_argument("--from", dest="src", default=None, help="folder holding extracted .bin files")
    args = parser.parse_args(argv)
    root = Path(args.root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if args.src:
        for f in Path(args.src).expanduser().glob("*.bin"):
            shutil.copy2(f, root / f.name)
    found = sorted(root.glob("*.bin"))
    if not found:
        print(f"no .bin packs in {root}; pass --from <folder with {', '.join(NAMES[:3])}...>")
        return 1
    for f in found:
        ds, pairs = load_bin(f)
        print(
            f"{f.name}: {len(pairs)} pairs ({int(pairs.is_same.sum())} same), {len(ds)} images, "
            f"sha256 {sha256sum(f)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

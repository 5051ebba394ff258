"""Check (or unpack) an identity-folder dataset, ``ROOT/<identity>/*.jpg|png|pgm`` (CASIA-WebFace ...).

    python data/folder/prepare.py --root ~/data/casia [--archive casia.zip] [--url URL --sha256 HEX]

CASIA-WebFace and VGGFace2 have no public download any more (both were withdrawn by their
authors); users who hold a copy unpack it so each identity is one folder. This script optionally
downloads (resumable, sha256-checked) and extracts an archive, then opens every image and reports
identities, images and unreadable files (the loaders skip and count those).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ecl.data.download import download, extract  # noqa: E402
from ecl.data.real import ImageFolderFaces  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check an identity-folder face dataset.")
    parser.add_argument("--root", required=True)
    parser.add_argument("--archive", default=None, help="a local .zip/.tar(.gz) to extract into ROOT")
    parser.add_argument("--url", default=None, help="download the archive from here first")
    parser.add_argument("--sha256", default=None)
    args = parser.parse_args(argv)
    root = Path(args.root).expanduser()
    archive = Path(args.archive) if args.archive else None
    if args.url:
        archive = download(args.url, root.parent / (Path(args.url).name or "archive"), sha256=args.sha256)
    if archive is not None:
        extract(archive, root)
    ds = ImageFolderFaces(root, check="decode")
    print(f"{root}: {ds.num_classes} identities, {len(ds)} readable images, {ds.num_skipped} unreadable")
    for path, reason in ds.skipped[:10]:
        print(f"  skipped {path}: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Lay out and check CelebA (in-the-wild images) for ``ecl.data.CelebA``.

    python data/celeba/prepare.py --root ~/data/celeba [--download-annotations]

CelebA is distributed from Google Drive (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html), which
does not serve large files to scripts reliably. So: download ``img_celeba.7z`` (the in-the-wild
images, several parts) by hand from the official Drive folder and extract it into ``ROOT/images``
(``7z x img_celeba.7z.001``). The small annotation files can be fetched by this script
(``--download-annotations``; Drive ids and md5 as torchvision lists them). It then verifies every
annotation file present against its md5 and reports what is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ecl.data.download import ChecksumError, download, verify  # noqa: E402

# filename -> (Google Drive file id, md5), from torchvision/datasets/celeba.py
ANNOTATIONS = {
    "identity_CelebA.txt": ("1_ee_0u7vcNLOfNLegJRHmolfH5ICW-XS", "32bd1bd63d3c78cd57e08160ec5ed1e2"),
    "list_bbox_celeba.txt": ("0B7EVK8r0v71pbThiMVRxWXZ4dU0", "00566efa6fedff7a56946cd1c10f1c16"),
    "list_landmarks_celeba.txt": ("0B7EVK8r0v71pTzJIdlJWdHczRlU", "063ee6ddb681f96bc9ca28c6febb9d1a"),
    "list_eval_partition.txt": ("0B7EVK8r0v71pY0NSMzRuSXJEVkk", "d32c9cbf5e040fd4025c592c306e6668"),
}
DRIVE = "https://drive.google.com/uc?export=download&id={}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check (and fetch annotations of) CelebA in ROOT.")
    parser.add_argument("--root", required=True)
    parser.add_argument("--download-annotations", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    root = Path(args.root).expanduser()
    annot = root / "annotations"
    ok = True
    for name, (file_id, md5) in ANNOTATIONS.items():
        path = annot / name
        if not path.is_file() and args.download_annotations:
            download(DRIVE.format(file_id), path, quiet=args.quiet)
        if path.is_file():
            try:
                verify(path, None, md5=md5)
                print(f"ok       {path}")
            except ChecksumError as err:
                ok = False
                print(f"MISMATCH {err}")
        else:
            print(f"missing  {path}" + ("" if name != "identity_CelebA.txt" else "  (required)"))
            ok = ok and name != "identity_CelebA.txt"
    images = root / "images"
    count = sum(1 for _ in images.glob("*.jpg")) if images.is_dir() else 0
    print(f"{count} images in {images}" + ("" if count else " - extract img_celeba.7z there (see --help)"))
    if (
        not (annot / "list_landmarks_celeba.txt").is_file()
        and not (annot / "landmarks68_dlib_DERIVED.tsv").is_file()
    ):
        print("no landmark file: CelebA crops need list_landmarks_celeba.txt (or a 68-point TSV)")
        ok = False
    return 0 if ok and count else 1


if __name__ == "__main__":
    raise SystemExit(main())

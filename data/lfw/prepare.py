"""Download and lay out LFW (original, un-aligned 250x250 images) for ``ecl.data.LFW`` / ``lfw_pairs``.

    python data/lfw/prepare.py --root ~/data/lfw

Result: ``ROOT/lfw/<Name>/<Name>_NNNN.jpg`` (13,233 images) and ``ROOT/annotations/`` with the official
lists and the 5-point landmarks (``lfw_landmark_5pt_250px.txt``). Downloads resume (``.part`` files)
and are checked against the sha256 below; the archive is extracted only after its check passes.
Sources and licences: data/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ecl.data.download import download, extract  # noqa: E402

# name -> (url, sha256, where it goes under ROOT). sha256 of the figshare files: scikit-learn's
# sklearn/datasets/_lfw.py; of the others: computed from the verbatim copies at the commits named.
_SITE = "https://raw.githubusercontent.com/umass-vis-lfw/umass-vis-lfw.github.io/2a620cd8cceb10430f8c7012fe9fa5f0837759e9"
FILES: dict[str, tuple[str, str | None, str]] = {
    "lfw.tgz": (
        "https://ndownloader.figshare.com/files/5976018",
        "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0",
        "downloads/lfw.tgz",
    ),
    "pairs.txt": (
        "https://ndownloader.figshare.com/files/5976006",
        "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592",
        "annotations/pairs.txt",
    ),
    "pairsDevTrain.txt": (
        "https://ndownloader.figshare.com/files/5976012",
        "1d454dada7dfeca0e7eab6f65dc4e97a6312d44cf142207be28d688be92aabfa",
        "annotations/pairsDevTrain.txt",
    ),
    "pairsDevTest.txt": (
        "https://ndownloader.figshare.com/files/5976009",
        "7cb06600ea8b2814ac26e946201cdb304296262aad67d046a16a7ec85d0ff87c",
        "annotations/pairsDevTest.txt",
    ),
    "people.txt": (
        f"{_SITE}/people.txt",
        "bc8fa2b7f25c895cf7efb6de4f4fc27ca8b8d1cfa63350ad8b96eae2b198d365",
        "annotations/people.txt",
    ),
    "peopleDevTrain.txt": (
        f"{_SITE}/peopleDevTrain.txt",
        "2e58df13ba4cc143189336e001cc2c195f1dfa5b29a6475c02857be353c2a2fa",
        "annotations/peopleDevTrain.txt",
    ),
    "peopleDevTest.txt": (
        f"{_SITE}/peopleDevTest.txt",
        "c3ed1f90499473401542101a56c14c1d82396bb8218c67a356d7460601047555",
        "annotations/peopleDevTest.txt",
    ),
    "lfw_landmark.txt": (
        "https://raw.githubusercontent.com/clcarwin/sphereface_pytorch/"
        "e2f11f0b0f394cf75b9f65ce8d353e4390b0948c/data/lfw_landmark.txt",
        "e517ec9b03232baaf10c7d5f82f0df6f500bb6cca1ead1126642cd42ff3ad039",
        "annotations/lfw_landmark_5pt_250px.txt",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download LFW into ROOT (resumable, sha256-checked).")
    parser.add_argument("--root", required=True, help="destination folder")
    parser.add_argument("--keep-archive", action="store_true", help="keep downloads/lfw.tgz after extraction")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    root = Path(args.root).expanduser()
    for url, sha, rel in FILES.values():
        download(url, root / rel, sha256=sha, quiet=args.quiet)
    archive = root / FILES["lfw.tgz"][2]
    if not (root / "lfw").is_dir():
        extract(archive, root)  # lfw.tgz holds lfw/<Name>/<Name>_NNNN.jpg
    if not args.keep_archive:
        archive.unlink(missing_ok=True)
    count = sum(1 for _ in (root / "lfw").glob("*/*.jpg"))
    print(
        f"LFW ready at {root}: {count} images. Use ecl.data.LFW({str(root)!r}) or "
        f"ecl.data.lfw_pairs({str(root)!r}, view='test')."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

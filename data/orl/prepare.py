"""Download the AT&T / ORL Database of Faces (40 people x 10 grey 92x112 PGM images).

    python data/orl/prepare.py --root ~/data/orl

Result: ``ROOT/images/s1 .. s40/*.pgm``, loadable with ``ecl.data.ImageFolderFaces(ROOT)`` or
``build_dataset("orl", ROOT)``. The archive is the one the AT&T Laboratories Cambridge page linked
(hosted by the Cambridge Computer Laboratory). No checksum is published for it: the script prints the
sha256 it computed; pass ``--sha256`` to enforce a known value.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ecl.data.download import download, extract  # noqa: E402

URL = "https://www.cl.cam.ac.uk/research/dtg/attarchive/pub/data/att_faces.zip"
SHA256: str | None = None  # not published; see the module docstring


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download ORL / AT&T faces into ROOT/images.")
    parser.add_argument("--root", required=True)
    parser.add_argument("--url", default=URL, help="archive URL (a mirror, or file:// for a local copy)")
    parser.add_argument("--sha256", default=SHA256, help="expected sha256 of the archive")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    root = Path(args.root).expanduser()
    archive = download(args.url, root / "downloads" / "att_faces.zip", sha256=args.sha256, quiet=args.quiet)
    tmp = root / "downloads" / "extracted"
    extract(archive, tmp)
    subjects = sorted({p.parent for p in tmp.rglob("*.pgm")})
    if not subjects:
        raise SystemExit(f"no .pgm files in {archive}; is it the ORL archive?")
    (root / "images").mkdir(parents=True, exist_ok=True)
    for d in subjects:
        shutil.copytree(d, root / "images" / d.name, dirs_exist_ok=True)
    shutil.rmtree(tmp)
    print(f"ORL ready at {root / 'images'}: {len(subjects)} identities.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

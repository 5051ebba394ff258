"""Checksummed, resumable downloads and safe archive extraction, used by ``data/<name>/prepare.py``.

Nothing here runs at import time, and nothing in the library downloads on its own: only the prepare
scripts call these functions, when a user asks for a dataset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path


class ChecksumError(RuntimeError):
    """A downloaded or local file does not have the expected sha256."""


def sha256sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike, sha256: str | None, md5: str | None = None) -> str:
    """Check ``path`` against ``sha256`` and/or ``md5`` (where given) and return the computed sha256.

    Raises:
        ChecksumError: naming the file, the expected and the computed digest.
    """
    digest = sha256sum(path)
    if sha256 is not None and digest.lower() != sha256.lower():
        raise ChecksumError(
            f"{path}: sha256 {digest} does not match the expected {sha256}; delete it and retry"
        )
    if md5 is not None:
        h = hashlib.md5()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest().lower() != md5.lower():
            raise ChecksumError(f"{path}: md5 {h.hexdigest()} does not match the expected {md5}")
    return digest


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    resume: bool = True,
    chunk_size: int = 1 << 16,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` and checking the sha256.

    An existing ``dest`` with the right checksum is kept (no network). A partial download continues
    with an HTTP Range request; a server that ignores Range restarts it from zero. Without an
    expected checksum the computed one is printed, so it can be recorded.

    Args:
        url: http(s):// or file:// URL.
        dest: the final file.
        sha256: expected hex digest, or None.
        resume: continue a ``.part`` file if there is one.
        chunk_size: bytes per read.
        timeout: socket timeout in seconds.
        quiet: no progress output.

    Returns:
        ``dest``.

    Raises:
        ChecksumError: the finished file has another checksum (it is removed).
        urllib.error.URLError: the URL cannot be fetched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        try:
            digest = verify(dest, sha256)
            if not quiet:
                print(f"{dest}: present, sha256 {digest}")
            return dest
        except ChecksumError:
            dest.unlink()  # a wrong file is replaced
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if (resume and part.is_file()) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "ecl-data/1"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the .part is already complete
            response = None
        else:
            raise
    if response is not None:
        with response:
            status = getattr(response, "status", None) or response.getcode()
            append = bool(start) and status == 206
            total = response.headers.get("Content-Length")
            total_bytes = (int(total) + (start if append else 0)) if total else None
            done = start if append else 0
            with open(part, "ab" if append else "wb") as fh:
                while True:
                    block = response.read(chunk_size)
                    if not block:
                        break
                    fh.write(block)
                    done += len(block)
                    if not quiet and total_bytes:
                        sys.stdout.write(f"\r{dest.name}: {done / 1e6:.1f} / {total_bytes / 1e6:.1f} MB")
                        sys.stdout.flush()
            if not quiet and total_bytes:
                sys.stdout.write("\n")
    try:
        digest = verify(part, sha256)
    except ChecksumError:
        part.unlink()
        raise
    os.replace(part, dest)
    if not quiet:
        note = "verified" if sha256 else "computed (no expected value given; record it)"
        print(f"{dest}: sha256 {digest} {note}")
    return dest


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a .tar(.gz/.bz2/.xz) or .zip archive into ``dest``, refusing paths that leave ``dest``."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise ValueError(f"{archive}: member {name!r} would be written outside {dest}")
            zf.extractall(dest)
        return dest
    with tarfile.open(archive) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")  # rejects absolute paths, '..', links out, devices
        else:  # pragma: no cover - Python < 3.11.4
            for m in tf.getmembers():
                if not (root / m.name).resolve().is_relative_to(root) or m.issym() or m.islnk():
                    raise ValueError(f"{archive}: unsafe member {m.name!r}")
            tf.extractall(dest)
    return dest


def copy_tree(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a local dataset folder (e.g. an existing download) to ``dest`` (used by prepare scripts'
    --from)."""
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return Path(dest)

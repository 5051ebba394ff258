"""Headless chromium for tests: render a built page with the network cut off and return its DOM.

The same flags render a screenshot for a person to look at (see README, "Development").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Debian's chromium, run as root in CI: no sandbox, no GPU, no background traffic; the proxy points at a
# closed local port so any request to the network fails, while file:// pages load normally.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--virtual-time-budget=15000",
    "--window-size=1280,900",
)


def chromium() -> str:
    """The chromium binary; skip where absent, except in CI (which installs it), where that is a failure."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run must `apt-get install -y chromium`")
    pytest.skip("chromium is not installed (apt-get install chromium) - browser tests skipped")


def dump_dom(page: Path, timeout: float = 120) -> str:
    """The DOM of ``page`` after its scripts ran, rendered offline."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout

"""README.md agrees with the code: its library example runs, and every command it lists exists."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ecl.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_library_example_runs():
    section = README.split("## Using the library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {"images": torch.rand(2, 3, 112, 112)}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["out"].activations.shape[-2:] == (28, 28)
    assert 0.0 <= namespace["loss"].detach().item() <= 1.0


def test_every_listed_command_exists():
    listed = set(re.findall(r"`python -m ecl ([a-z][a-z-]*)", README))
    assert {"book", "train", "evaluate", "reproduce", "explain-pair"} <= listed
    available = set(build_parser()._subparsers._group_actions[0].choices)
    assert listed <= available, f"README lists commands the CLI lacks: {sorted(listed - available)}"

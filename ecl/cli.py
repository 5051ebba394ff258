"""``python -m ecl``: the command-line entry point.

Each command lives in the module that owns it, which registers its parser with ``add_subparser``;
modules are imported only when the CLI starts, so ``import ecl`` stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import ecl

# Modules that own a command, in the order the commands appear in --help.
_COMMAND_MODULES = ("ecl.book", "ecl.train", "ecl.evaluate", "ecl.reproduce", "ecl.explain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ecl",
        description="Explainable Channel Loss (ECLoss) for face recognition: train, evaluate, build the book.",
    )
    parser.add_argument("--version", action="version", version=f"ecl {ecl.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # that command is not part of this version
                continue
            raise
        register = getattr(module, "add_subparser", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m ecl``: every command of the command line, and the only module that parses arguments.

The library modules raise ordinary exceptions; each command here turns the ones a user can fix into one
``error: ...`` line on stderr and an exit status (2: the input is wrong, 1: the work failed, 130: Ctrl-C).
Command implementations are imported when their command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ecl

__all__ = ["build_parser", "main"]


def _error(err: BaseException, status: int) -> int:
    print(f"error: {err}", file=sys.stderr)
    return status


def _set_values(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    return name, yaml.safe_load(value)


# ------------------------------------------------------------------------------------------ book
def _add_book(subparsers) -> None:
    from ecl.book import PROFILES

    parser = subparsers.add_parser(
        "book",
        help="execute every chapter with papermill and build the HTML book",
        description=(
            "Execute every notebook listed in _toc.yml with papermill (profile parameters injected), "
            "then build the HTML book with Jupyter Book 1.x into _build/html. Stops at the first failing "
            "cell, naming the notebook and the cell."
        ),
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="quick",
        help="quick: 2-core CPU in minutes (CI); full: GPU, the book's full results",
    )
    parser.add_argument("--root", default=".", help="book root holding _config.yml and _toc.yml (default: .)")
    parser.add_argument("--out", default=None, help="output folder (default: ROOT/_build)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="execute only notebooks whose path contains TEXT (repeatable)",
    )
    parser.add_argument(
        "--param",
        action="append",
        type=_set_values,
        default=[],
        metavar="NAME=VALUE",
        help="extra notebook parameter, value parsed as YAML (repeatable)",
    )
    parser.add_argument("--no-build", action="store_true", help="execute only, do not build the HTML")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads of every chapter (default: 1, which trains the models of the committed "
        "results; CPU training depends on the thread count)",
    )
    parser.set_defaults(func=_run_book)


def _run_book(args: argparse.Namespace) -> int:
    from ecl.book import BookError, run_book

    try:
        run_book(
            root=args.root,
            profile=args.profile,
            out=args.out,
            only=args.only,
            parameters=dict(args.param),
            build=not args.no_build,
            threads=args.threads,
        )
    except BookError as err:
        return _error(err, 1)
    return 0


# ----------------------------------------------------------------------------------------- train
_TRAIN_DESCRIPTION = """Train a face model with an explainability regulariser (or the baseline).

Examples:
  python -m ecl train --config configs/faceparts-quick.yaml
  python -m ecl train --config configs/faceparts-quick.yaml --set loss.method=none --out runs/baseline
  python -m ecl train --config configs/faceparts-quick.yaml --out runs/x --max-steps 20
  python -m ecl train --config configs/faceparts-quick.yaml --out runs/x --resume
  torchrun --nproc_per_node=4 -m ecl train --config configs/casia-r50.yaml --set data.root=/data/casia

The run folder holds config.yaml, metrics.jsonl and checkpoints/ (see ecl.checkpoint)."""


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML config",
        description=_TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, metavar="FILE", help="experiment YAML, e.g. configs/faceparts-quick.yaml"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set loss.lambda=0.5 optim.lr=1e-3 "
        "(repeatable; values are parsed as YAML)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="run folder (default: run.out_dir, else runs/<name>-<config hash>)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop after N steps in total; the schedule still spans the whole run, so --resume continues it",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the run folder"
    )
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from ecl.checkpoint import CheckpointError, RunLockedError
    from ecl.config import ConfigError, load_config
    from ecl.train import NonFiniteLossError, fit

    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        return _error(err, 2)
    try:
        result = fit(cfg, out_dir=args.out, max_steps=args.max_steps, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    except (
        NonFiniteLossError,
        RunLockedError,
        CheckpointError,
        FileExistsError,
        FileNotFoundError,
        ConfigError,
        ValueError,
    ) as err:
        return _error(err, 1)
    if result.checkpoint is not None:
        status = (
            "complete"
            if result.complete
            else f"stopped at step {result.step}/{result.total_steps} (--resume continues)"
        )
        loss = result.final_loss
        loss_text = f", final loss {loss:.4f}" if loss is not None else ""
        print(f"{status}{loss_text}, {result.seconds:.1f} s; checkpoint: {result.checkpoint}")
    return 0


# -------------------------------------------------------------------------------------- evaluate
def _add_evaluate(subparsers) -> None:
    from ecl.evaluate import DATA_SPECS

    parser = subparsers.add_parser(
        "evaluate",
        help="verification and explainability numbers of a trained run",
        description=(
            "Evaluate a checkpoint: 10-fold verification (accuracy, AUC, EER, TAR@FAR) and the "
            "explainability metrics (location instability, part IoU, peak hit rate, translation "
            "tracking, part coverage) on original and jittered images. Prints one JSON object."
        ),
    )
    parser.add_argument(
        "--checkpoint", required=True, help="run directory or checkpoint written by `ecl train`"
    )
    parser.add_argument(
        "--data", default="faceparts", help=f"{DATA_SPECS} (bin: an insightface verification pack)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="a quick look: about N/2 pairs (fold-balanced) and N images",
    )
    parser.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    parser.add_argument("--no-explain", action="store_true", help="verification only")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ecl.checkpoint import CheckpointError, load_run
    from ecl.evaluate import evaluate_model
    from ecl.utils import json_default

    try:
        model, _config = load_run(args.checkpoint, map_location="cpu")
        output = {"checkpoint": str(args.checkpoint)}
        output.update(
            evaluate_model(
                model,
                args.data,
                batch_size=args.batch_size,
                flip=not args.no_flip,
                explain=not args.no_explain,
                max_images=args.max_images,
                device=args.device,
                progress=not args.quiet,
            )
        )
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        return _error(err, 2)
    text = json.dumps(output, default=json_default)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


# ------------------------------------------------------------------------------------- reproduce
def _add_reproduce(subparsers) -> None:
    from ecl.experiments import ABLATIONS, METHODS, PROFILES, SEARCH_POINTS

    parser = subparsers.add_parser(
        "reproduce",
        help="train and evaluate baseline, ECLoss (default and original settings), ICNN and SAD over seeds; "
        "write book/results/*.json",
        description=(
            "Run the comparison the book reports: for each study (FaceParts test identities; LFW when the "
            "data root holds lfw/, with a CelebA transfer), train baseline (ArcFace), ECLoss with its "
            "default "
            "setting (chosen on the FaceParts validation split), ICNN filter loss and SAD, and as records "
            "ECLoss with the original setting and with the setting an earlier test-split screening picked, "
            "for each seed with the same backbone and schedule, evaluate verification and explainability "
            "(original and jittered images), and write one JSON file per run with the config, split, seed, "
            "git commit and library versions. The validation search itself is --studies faceparts-val "
            "search. Finished runs and results are reused."
        ),
    )
    add = parser.add_argument
    add(
        "--profile", choices=sorted(PROFILES), default="quick", help="quick: the CPU grid; full: the GPU grid"
    )
    add(
        "--studies",
        nargs="+",
        default=None,
        help="subset of: faceparts faceparts-val lfw search ablations game explain (default: faceparts lfw, "
        "the confirmation; faceparts-val: the methods on the validation split; search: one seed per point "
        "of the validation search; ablations: the earlier test-split screening; game: the part-swap game "
        "and occlusion study on the faceparts models; explain: every way to explain a pair scored as the "
        "field scores it, top-1, nonmate rate and IoU on the part-swap game and deletion/insertion areas "
        "against random order, on the faceparts models of --methods (default: baseline ecloss) and, with "
        "--data-root holding lfw/, on the lfw ones; quick sizes: 100 trials, 24 mated pairs per data set, "
        "occlusion stride 14, about 3 min per model and data set on one thread; full: 1000 trials, 200 "
        "FaceParts and 500 LFW pairs, stride 7)",
    )
    add("--methods", nargs="+", default=None, choices=list(METHODS), help="default: all of them")
    add(
        "--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (ablations: 0, one seed per point)"
    )
    add("--data-root", default=None, help="folder holding lfw/ and celeba_subset/ (needed for the lfw study)")
    add("--runs", default="runs", help="run folders (default: runs)")
    add("--results", default="book/results", help="result files (default: book/results)")
    add(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides applied to every run (they change the run folders)",
    )
    add("--max-images", type=int, default=None, help="evaluate on fewer images (a quick look)")
    add("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    add(
        "--ablations",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"with --studies ablations: only these (of: {', '.join(repr(n) for n in ABLATIONS)})",
    )
    add(
        "--points",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"with --studies search: only these (of: {', '.join(repr(n) for n in SEARCH_POINTS)})",
    )
    add(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1, as the committed results were made: on a CPU the numbers "
        "depend on the thread count; 0 leaves torch's choice)",
    )
    add("--redo", action="store_true", help="recompute result files that exist")
    add(
        "--summary",
        action="store_true",
        help="train nothing: print the mean ± std table of the results in --results as markdown (with "
        "--studies explain: the explanation study's table and its aims)",
    )
    add(
        "--update-readme",
        metavar="README",
        default=None,
        help="with --summary: also rewrite the results block of this README",
    )
    parser.set_defaults(func=_run_reproduce)


def _explain_summary(results: str) -> int:
    from ecl.results import explain_aims, explain_table, load_explain_results, markdown_table

    records = load_explain_results(results)
    if not records:
        return _error(f"no explain results in {results}: run python -m ecl reproduce --studies explain", 1)
    print(markdown_table(explain_table(records)))
    print()
    print(markdown_table(explain_aims(records).round(3)))
    return 0


def _run_reproduce(args: argparse.Namespace) -> int:
    if args.summary and "explain" in (args.studies or ()):
        return _explain_summary(args.results)
    if args.summary:
        from ecl.results import load_results, markdown_table, results_frame, summary_table, update_readme

        records = load_results(args.results)
        if not records:
            return _error(f"no results in {args.results}: run python -m ecl reproduce first", 1)
        print(markdown_table(summary_table(results_frame(records))))
        if args.update_readme:
            changed = update_readme(args.update_readme, records, args.results)
            print(f"{args.update_readme}: {'updated' if changed else 'already up to date'}", file=sys.stderr)
        return 0
    from ecl.reproduce import run_grid

    try:
        run_grid(
            profile=args.profile,
            studies=args.studies,
            methods=args.methods,
            seeds=args.seeds,
            runs_root=args.runs,
            results_dir=args.results,
            data_root=args.data_root,
            overrides=args.set,
            max_images=args.max_images,
            device=args.device,
            skip_existing=not args.redo,
            ablations=args.ablations,
            points=args.points,
            threads=args.threads or None,
        )
    except (FileNotFoundError, ValueError) as err:
        return _error(err, 1)
    return 0


# ------------------------------------------------------------------------- explain-pair, assign-parts
def _add_explain_pair(subparsers) -> None:
    from ecl.attribution import ASSIGNMENT_FILE, DESCRIPTORS
    from ecl.pair_cam import CAM_METHODS
    from ecl.pair_explain import PAIR_METHODS

    parser = subparsers.add_parser(
        "explain-pair",
        help="which face parts made two faces similar (JSON breakdown)",
        description=(
            "Per-part similarity breakdown of two face images (eyes, brows, nose, mouth, hair, skin) from "
            "the target layer's part channels, with the embedding cosine beside it. Needs the run's "
            f"{ASSIGNMENT_FILE} (make it with `python -m ecl assign-parts --checkpoint RUN`). Images are "
            "read with PIL, converted to RGB and resized to the model's input size. Prints one JSON object. "
            "--method picks another explanation: shapley (part contributions that add up to the cosine), "
            "xcos (local-similarity grid), gradcam (similarity Grad-CAM), occlusion (sensitivity maps) or "
            "cam (a CAM of the optional pytorch-grad-cam library, chosen with --cam); --png draws it."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint written by `ecl train`")
    parser.add_argument("image_a", metavar="IMAGE_A", help="first face image (any format PIL reads)")
    parser.add_argument("image_b", metavar="IMAGE_B", help="second face image")
    parser.add_argument(
        "--assignment", default=None, help=f"part assignment JSON (default RUN/{ASSIGNMENT_FILE})"
    )
    parser.add_argument(
        "--method",
        choices=PAIR_METHODS,
        default="parts",
        help="parts: part similarities (default); shapley: part contributions that sum to the cosine "
        "(with a rest term); xcos, gradcam, occlusion, cam: maps (these need no assignment)",
    )
    parser.add_argument(
        "--cam",
        choices=sorted(CAM_METHODS),
        default="gradcam",
        help="with --method cam: which pytorch-grad-cam method (needs pip install 'ecl[cam]')",
    )
    parser.add_argument("--descriptor", choices=DESCRIPTORS, default="attention", help="part descriptor")
    parser.add_argument(
        "--patch", type=int, default=None, metavar="PX", help="occlusion patch size (default: image size / 8)"
    )
    parser.add_argument(
        "--png", default=None, metavar="PATH", help="also draw the pair with each part's (or map's) values"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    parser.set_defaults(func=_run_explain_pair)


def _run_explain_pair(args: argparse.Namespace) -> int:
    from ecl.attribution import PartAssignment, image_tensor, read_image
    from ecl.checkpoint import load_run
    from ecl.pair_explain import explain_pair_with

    method = getattr(args, "method", "parts")
    try:
        # Cheap checks first: unreadable images and a missing assignment fail before the model loads.
        pictures = read_image(args.image_a), read_image(args.image_b)
        needs_parts = method in ("parts", "shapley")
        assignment = PartAssignment.load(args.assignment or args.checkpoint) if needs_parts else None
        model, _ = load_run(args.checkpoint, map_location="cpu")
        size = int(getattr(model, "image_size", 112))
        image_a, image_b = (image_tensor(p, size) for p in pictures)
        result = explain_pair_with(
            method,
            model,
            image_a,
            image_b,
            assignment,
            descriptor=args.descriptor,
            device=args.device,
            patch=getattr(args, "patch", None),
            cam=getattr(args, "cam", "gradcam"),
        )
    except (FileNotFoundError, ValueError, ImportError) as err:
        return _error(err, 2)
    output = {"image_a": args.image_a, "image_b": args.image_b, **result.summary}
    if getattr(args, "png", None):
        from ecl.viz.images import to_png
        from ecl.viz.pairs import pair_method_picture

        picture = pair_method_picture(
            image_a,
            image_b,
            result.maps,
            title=f"{method}: {args.image_a} vs {args.image_b}",
            caption=result.caption,
        )
        try:
            path = Path(args.png)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(to_png(picture))
        except OSError as err:
            return _error(f"cannot write {args.png}: {err}", 1)
        output["png"] = str(path)
    print(json.dumps(output))
    return 0


def _add_assign_parts(subparsers) -> None:
    from ecl.attribution import ASSIGNMENT_FILE

    parser = subparsers.add_parser(
        "assign-parts",
        help="assign a run's target-layer channels to face parts (for explain-pair)",
        description=(
            "Part IoU of every target-layer channel on FaceParts test identities; writes "
            f"RUN/{ASSIGNMENT_FILE} (see ecl.attribution.assign_parts for the fallback rules)."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint written by `ecl train`")
    parser.add_argument("--identities", type=int, default=50, help="FaceParts test identities (default 50)")
    parser.add_argument("--images-per-identity", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=None, help=f"where to write (default RUN/{ASSIGNMENT_FILE})")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=_run_assign_parts)


def _run_assign_parts(args: argparse.Namespace) -> int:
    from ecl.attribution import assign_parts
    from ecl.checkpoint import load_run
    from ecl.data import build_dataset

    try:
        model, config = load_run(args.checkpoint, map_location="cpu")
    except (FileNotFoundError, ValueError) as err:
        return _error(err, 2)
    reference = build_dataset(
        "faceparts",
        split="test",
        image_size=int(getattr(model, "image_size", 112)),
        num_identities=args.identities,
        images_per_identity=args.images_per_identity,
        seed=config.data.seed,
    )
    assignment = assign_parts(model, reference, batch_size=args.batch_size, device=args.device)
    path = assignment.save(Path(args.out) if args.out else Path(args.checkpoint))
    summary = {
        "saved": str(path),
        "source": assignment.source,
        "channels_per_part": assignment.to_dict()["channels_per_part"],
    }
    print(json.dumps(summary))
    return 0


# ------------------------------------------------------------------------------------------ main
#: The commands, in the order ``--help`` lists them.
_COMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_book,
    _add_train,
    _add_evaluate,
    _add_reproduce,
    _add_explain_pair,
    _add_assign_parts,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m ecl`` parser with every command."""
    parser = argparse.ArgumentParser(
        prog="python -m ecl",
        description="Explainable Channel Loss (ECLoss) for face recognition: "
        "train, evaluate, build the book.",
    )
    parser.add_argument("--version", action="version", version=f"ecl {ecl.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m ecl ARGS``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

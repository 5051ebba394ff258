"""Running the comparison the book reports: train and evaluate every method, seed and study; write results.

:func:`run_grid` (``python -m ecl reproduce``) trains (or loads) and evaluates every method of
:data:`ecl.experiments.METHODS` over seeds for each study of a profile, and writes one JSON result per
run under ``book/results/``; :func:`run_game` plays the part-swap game and the occlusion study on the
FaceParts models, and :func:`run_explain` scores every way to explain a pair as the field scores it
(``explain-*.json``). :mod:`ecl.results` reads what they write.
"""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ecl.experiments import (
    ABLATIONS,
    DEFAULT_STUDIES,
    ECLOSS_ORIGINAL,
    EXPLAIN_MODELS,
    EXPLAIN_SCHEMA,
    EXPLAIN_SIZES,
    GAME_SIZES,
    MEASURE_LAYER,
    METHODS,
    PROFILES,
    REPO,
    SCHEMA,
    SEARCH_POINTS,
    SEARCH_PRESET,
    SEEDS,
    Study,
    ablation_slug,
    method_config,
    result_path,
)
from ecl.results import validate_result
from ecl.utils import atomic_write_json, torch_threads


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions() -> dict[str, Any]:
    import numpy
    import timm
    import torch

    import ecl

    return {
        "ecl": ecl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def study_config(
    study_name: str,
    study: Study,
    method: str,
    seed: int,
    data_root: str | Path | None = None,
    overrides: Sequence[str] = (),
):
    """The config of one (study, method, seed) run: the study's preset with ``overrides``, and the data
    root of a study that needs one (``--data-root``/``<study.needs>``), so every command that uses the
    run finds the same run folder."""
    from ecl.config import load_config

    root = Path(data_root) if data_root else None
    extra = list(overrides)
    if study.needs is not None:
        if root is None or not (root / study.needs).is_dir():
            raise FileNotFoundError(
                f"study {study_name!r} needs {study.needs}/ under --data-root (got {data_root}); "
                f"see data/README.md to get it"
            )
        extra.append(f"data.root={root / study.needs}")
    return method_config(load_config(REPO / study.preset, extra), method, seed)


def run_one(
    study_name: str,
    study: Study,
    method: str,
    seed: int,
    profile: str,
    runs_root: str | Path = "runs",
    data_root: str | Path | None = None,
    overrides: Sequence[str] = (),
    max_images: int | None = None,
    device: str | None = None,
    measure_layer: str | None = None,
) -> dict[str, Any]:
    """Train (or load) one method and seed of a study, evaluate it, and return the result record.

    The record names the split it was measured on (``split``, e.g. ``"FaceParts validation"``);
    ``measure_layer`` measures the explainability numbers at another target layer than the trained one.
    """
    from ecl.checkpoint import read_metrics
    from ecl.config import config_to_dict
    from ecl.evaluate import evaluate_model, evaluation_split
    from ecl.train import load_or_train

    root = Path(data_root) if data_root else None
    config = study_config(study_name, study, method, seed, data_root, overrides)
    start = time.perf_counter()
    model, run_dir = load_or_train(config, root=runs_root)
    train_seconds = time.perf_counter() - start
    steps = [m for m in read_metrics(run_dir) if m.get("event") == "step"]
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "study": study_name,
        "method": method,
        "seed": int(seed),
        "profile": profile,
        "preset": study.preset,
        "config": config_to_dict(config),
        "git_commit": _git_commit(),
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train": {
            "steps": steps[-1]["step"] if steps else None,
            "final_loss": steps[-1]["loss"] if steps else None,
            "final_id_loss": steps[-1].get("id") if steps else None,
            "seconds_this_call": round(train_seconds, 1),
        },
    }
    spec = study.evaluate.format(root=root)
    record["split"] = evaluation_split(spec)
    record["evaluation"] = evaluate_model(
        model, spec, max_images=max_images, device=device, curves=True, target_layer=measure_layer
    )
    _thin_roc(record["evaluation"]["verification"])
    record["transfer"] = {}
    for transfer in study.transfer:
        spec = transfer.format(root=root)
        record["transfer"][spec.split(":")[0]] = evaluate_model(
            model, spec, max_images=max_images, device=device
        )
    return record


def _thin_roc(verification: dict[str, Any], points: int = 200) -> None:
    """Keep at most ``points`` ROC points (evenly spaced in index) so result files stay small."""
    import numpy as np

    fpr, tpr = verification.get("fpr"), verification.get("tpr")
    if fpr is None or len(fpr) <= points:
        return
    keep = np.unique(np.linspace(0, len(fpr) - 1, points).round().astype(int))
    verification["fpr"] = [fpr[i] for i in keep]
    verification["tpr"] = [tpr[i] for i in keep]


def run_grid(
    profile: str = "quick",
    studies: Iterable[str] | None = None,
    methods: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    runs_root: str | Path = "runs",
    results_dir: str | Path = "book/results",
    data_root: str | Path | None = None,
    overrides: Sequence[str] = (),
    max_images: int | None = None,
    device: str | None = None,
    skip_existing: bool = True,
    echo: Callable[[str], None] = print,
    ablations: Iterable[str] | None = None,
    points: Iterable[str] | None = None,
    threads: int | None = 1,
) -> list[Path]:
    """Train and evaluate every (study, method, seed) of a profile; write one JSON result per run.

    ``studies`` defaults to :data:`~ecl.experiments.DEFAULT_STUDIES` (the confirmation: FaceParts test,
    LFW). Besides the studies of the profile, four pseudo-studies can be named: ``search`` (the points
    of :data:`~ecl.experiments.SEARCH_POINTS` on the FaceParts validation split, or those named in
    ``points``), ``ablations`` (the earlier test-split screening of :data:`~ecl.experiments.ABLATIONS`,
    or those named in ``ablations``), ``game`` (:func:`run_game`) and ``explain`` (:func:`run_explain`,
    on the models of ``methods``, default :data:`~ecl.experiments.EXPLAIN_MODELS`). ``seeds`` defaults
    to 0, 1 and 2, and to 0 alone for search points and ablations (one seed per point).

    Runs are trained through :func:`ecl.train.load_or_train`, so an interrupted grid resumes where it
    stopped; a result file that already exists is kept (``skip_existing``). Everything runs with
    ``threads`` torch CPU threads (``None``: torch's choice), recorded in each result: on a CPU the
    numbers are exactly reproducible at the thread count they were made with (the committed ones: 1).

    Returns:
        The result files written or kept.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {sorted(PROFILES)}")
    chosen = list(studies) if studies else list(DEFAULT_STUDIES)
    unknown = [s for s in chosen if s not in PROFILES[profile] and s not in PSEUDO_STUDIES]
    if unknown:
        raise ValueError(
            f"unknown studies {unknown}: choose from {sorted(PROFILES[profile])}, {', '.join(PSEUDO_STUDIES)}"
        )
    named = list(methods) if methods else None
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    common = dict(runs_root=runs_root, data_root=data_root, overrides=overrides, max_images=max_images,
                  device=device, skip_existing=skip_existing, echo=echo)  # fmt: skip
    with torch_threads(threads):
        return _run_studies(chosen, profile, named, seeds, results_dir, ablations, points, common)


#: The studies ``run_grid`` knows besides those of a profile.
PSEUDO_STUDIES = ("search", "ablations", "game", "explain")


def _run_studies(chosen, profile, named, seeds, results_dir, ablations, points, common) -> list[Path]:
    written = []
    methods = named or list(METHODS)
    runs_root, overrides, device, echo = (common[k] for k in ("runs_root", "overrides", "device", "echo"))
    for name in chosen:
        if name == "game":
            written += run_game(profile, seeds or SEEDS, runs_root=runs_root, results_dir=results_dir,
                                overrides=overrides, device=device, echo=echo)  # fmt: skip
        elif name == "explain":
            keep = ("runs_root", "data_root", "overrides", "device", "skip_existing", "echo")
            written += run_explain(profile, seeds or SEEDS, named or EXPLAIN_MODELS, results_dir=results_dir,
                                   **{k: common[k] for k in keep})  # fmt: skip
        elif name in ("search", "ablations"):
            written += _run_points(name, profile, results_dir, seeds or SEEDS[:1],
                                   points if name == "search" else ablations, **common)  # fmt: skip
        else:
            for seed in seeds or SEEDS:
                for method in methods:
                    path = result_path(results_dir, name, method, seed, profile)
                    run = (name, PROFILES[profile][name], method, seed, profile)
                    layer = MEASURE_LAYER.get(method)
                    written.append(_run_and_save(path, run, {}, **common, measure_layer=layer))
    return written


def _run_and_save(
    path: Path, run: tuple, extra: dict[str, Any], *, skip_existing: bool, echo, **kwargs
) -> Path:
    """``run_one(*run, **kwargs)`` written to ``path`` (with ``extra`` keys added), unless it exists."""
    if skip_existing and path.is_file():
        echo(f"   kept  {path}")
        return path
    start = time.perf_counter()
    record = run_one(*run, **kwargs)
    record.update(extra)
    _save_result(path, record)
    echo(f"{time.perf_counter() - start:7.1f} s  {path}")
    return path


def _run_points(
    kind: str, profile: str, results_dir: Path, seeds: Iterable[int], names, **common
) -> list[Path]:
    """The search points (validation) or the earlier ablations (test-split screening), one file per seed."""
    table = SEARCH_POINTS if kind == "search" else ABLATIONS
    names = list(names) if names else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown {kind} points {unknown}: choose from {list(table)}")
    # Both ran on the frozen search preset; the search on validation faces, the screening on test faces.
    study = PROFILES[profile]["faceparts-val"] if kind == "search" else Study(SEARCH_PRESET, "faceparts")
    prefix = "search" if kind == "search" else "ablation"
    written = []
    for seed, name in ((seed, name) for seed in seeds for name in names):
        if kind == "search":
            point = table[name]
            method, extra, layer = point.method, point.overrides, point.measure_layer
            info = {"search": {"name": name, "hypothesis": point.hypothesis, "overrides": list(extra),
                               "measure_layer": layer}}  # fmt: skip
        else:
            method, extra, layer = "ecloss", (*ECLOSS_ORIGINAL, *table[name]), None
            info = {"ablation": {"name": name, "overrides": list(table[name])}}
        path = result_path(results_dir, f"{prefix}_{ablation_slug(name)}", method, seed, profile)
        run = (f"{prefix}: {name}", study, method, seed, profile)
        kwargs = {**common, "overrides": [*common["overrides"], *extra], "measure_layer": layer}
        written.append(_run_and_save(path, run, info, **kwargs))
    return written


def run_game(
    profile: str = "quick",
    seeds: Iterable[int] = SEEDS,
    methods: Sequence[str] = ("baseline", "ecloss", "ecloss-original"),
    runs_root: str | Path = "runs",
    results_dir: str | Path = "book/results",
    overrides: Sequence[str] = (),
    device: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """The part-swap game and the occlusion study (chapter 09) on the FaceParts grid models, over seeds.

    For each seed and method: the grid's trained model (trained here if absent), its part assignment
    on FaceParts test identities (data seed + 0), the game on other test images (data seed + 1) and
    clean vs occluded verification (data seed + 2). Writes ``part_swap_game.json`` and ``occlusion.json``
    (``{"runs": [...], "summary": ...}``, see :func:`ecl.game_summary` and
    :func:`ecl.occlusion_summary`).
    """
    from ecl import data as ecl_data
    from ecl.attribution import assign_parts
    from ecl.config import load_config
    from ecl.studies import game_summary, occlusion_summary, occlusion_verification, part_swap_game
    from ecl.train import load_or_train

    sizes = GAME_SIZES[profile]
    base = load_config(REPO / PROFILES[profile]["faceparts"].preset, list(overrides))
    common = dict(
        split="test",
        image_size=base.data.image_size,
        num_identities=sizes["identities"],
        images_per_identity=sizes["images_per_identity"],
    )
    reference = ecl_data.build_dataset("faceparts", seed=base.data.seed, **common)
    game_set = ecl_data.build_dataset("faceparts", seed=base.data.seed + 1, **common)
    clean = ecl_data.build_dataset("faceparts", seed=base.data.seed + 2, occlusion_prob=0.0, **common)
    occluded = ecl_data.build_dataset("faceparts", seed=base.data.seed + 2, occlusion_prob=1.0, **common)
    games, occlusions = [], []
    for seed in seeds:
        for method in methods:
            start = time.perf_counter()
            model, run_dir = load_or_train(method_config(base, method, seed), root=runs_root)
            model.eval()
            assignment = assign_parts(model, reference, device=device)
            assignment.save(run_dir)
            game = part_swap_game(
                model, assignment, game_set, num_trials=sizes["trials"], seed=seed, device=device
            )
            games.append({**game, "method": method, "seed": int(seed)})
            occlusion = occlusion_verification(
                model, clean, occluded, assignment, num_pairs=sizes["pairs"], device=device
            )
            occlusions.append({**occlusion, "method": method, "seed": int(seed)})
            echo(f"{time.perf_counter() - start:7.1f} s  game and occlusion: {method} seed {seed}")
    meta = {
        "schema": SCHEMA,
        "profile": profile,
        "preset": PROFILES[profile]["faceparts"].preset,
        "git_commit": _git_commit(),
        "versions": _versions(),
        "sizes": sizes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    written = []
    for name, runs, summarise in (
        ("part_swap_game.json", games, game_summary),
        ("occlusion.json", occlusions, occlusion_summary),
    ):
        path = Path(results_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**meta, "runs": runs, "summary": summarise(runs)})
        written.append(path)
        echo(f"wrote {path}")
    return written


def run_explain(
    profile: str = "quick",
    seeds: Iterable[int] = SEEDS,
    methods: Sequence[str] = EXPLAIN_MODELS,
    runs_root: str | Path = "runs",
    results_dir: str | Path = "book/results",
    data_root: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    skip_existing: bool = True,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """Explaining a match, scored as the field scores it (chapter 09), for each seed and model.

    The models are the runs of the ``faceparts`` study (and of ``lfw``) of ``methods``, trained here if
    absent exactly as those studies train them. For each seed and model:

    - ``explain-faceparts-<method>-seed<k>.json``: the model's channels assigned to parts on FaceParts
      test identities (data seed + 0, as the game); on other test images (data seed + 1) the part-swap
      game (:func:`ecl.studies.part_swap_game`: the breakdown's and the saliency map's top-1, with the
      game's seed, so the game's trials) and the same trials scored as the inpainting game
      (:func:`ecl.pair_scores.part_swap_scores`: nonmate rate, IoU and top-1 of every method of
      ``GAME_METHODS``, oracle and random included); and the deletion and insertion areas of every map
      of ``MAP_METHODS`` against random orders (:func:`ecl.pair_scores.pair_method_curves`) over fixed
      mated pairs: images 0 and 1 of the first identities of clean test images (data seed + 2, the
      occlusion study's).
    - ``explain-lfw-<method>-seed<k>.json``, when ``data_root`` holds ``lfw/``: the lfw study's model,
      its channels assigned to parts on LFW View-1 train images (68 landmarks drawn into part masks),
      and the deletion and insertion areas over the first mated pairs of LFW View-1 test
      (``pairsDevTest.txt``).

    Sizes (:data:`~ecl.experiments.EXPLAIN_SIZES`): quick, 100 part-swap trials with 3 gallery images,
    occlusion windows of 14 px at stride 14, 24 mated pairs per data set with 20 steps and 3 random
    orders (about three minutes per model for FaceParts and a minute and a half for LFW, on one CPU
    thread); full, 1,000 trials with 4 gallery images, stride 7, 200 FaceParts pairs and the 500 mated
    LFW pairs. A result file that exists is kept unless ``skip_existing`` is false.

    Returns:
        The result files written or kept.
    """
    from ecl.config import config_to_dict
    from ecl.evaluate import evaluation_split
    from ecl.train import load_or_train

    wrong = [m for m in methods if m not in METHODS or m in MEASURE_LAYER]
    if wrong:
        raise ValueError(f"the explain study scores trained models at their own layer; not {wrong}")
    sizes = EXPLAIN_SIZES[profile]
    kinds = ["faceparts"]
    if data_root is not None and (Path(data_root) / "lfw").is_dir():
        kinds.append("lfw")
    else:
        echo(f"explain: no lfw/ under --data-root ({data_root}): the LFW curves are skipped")
    data: dict[str, dict[str, Any]] = {}
    written = []
    for seed, method, kind in ((s, m, k) for s in seeds for m in methods for k in kinds):
        path = result_path(results_dir, f"explain-{kind}", method, seed, profile)
        written.append(path)
        if skip_existing and path.is_file():
            echo(f"   kept  {path}")
            continue
        start = time.perf_counter()
        study = PROFILES[profile][kind]
        config = study_config(kind, study, method, seed, data_root, overrides)
        model, run_dir = load_or_train(config, root=runs_root)
        model.eval()
        if kind not in data:
            data[kind] = _explain_data(kind, config, sizes)
        scores = _explain_scores(model, data[kind], sizes, int(seed), device)
        record = {
            "schema": EXPLAIN_SCHEMA,
            "study": f"explain-{kind}",
            "data": kind,
            "method": method,
            "seed": int(seed),
            "profile": profile,
            "preset": study.preset,
            "config": config_to_dict(config),
            "split": evaluation_split(kind),
            "run": run_dir.name,
            "git_commit": _git_commit(),
            "versions": _versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sizes": sizes,
            "pairs": data[kind]["pairs_note"],
            **scores,
            "seconds": round(time.perf_counter() - start, 1),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
        echo(f"{record['seconds']:7.1f} s  {path}")
    return written


def _explain_data(kind: str, config, sizes: dict[str, Any]) -> dict[str, Any]:
    """The explain study's data for ``kind`` (the same for every model): the part-assignment reference,
    the game's images (FaceParts) and the mated pairs of the curves, ``(images_a, images_b)``."""
    import numpy as np
    import torch

    from ecl import data as ecl_data

    size = config.data.image_size
    if kind == "lfw":
        dataset, pairs = ecl_data.build_pairs(
            "lfw", config.data.root, view="test", image_size=size, on_missing="drop"
        )
        same = np.flatnonzero(pairs.is_same)[: sizes["lfw_pairs"]]
        first = [int(i) for i in pairs.index_a[same]]
        second = [int(i) for i in pairs.index_b[same]]
        reference = ecl_data.build_dataset("lfw", config.data.root, split="train", image_size=size,
                                           landmarks="68pt")  # fmt: skip
        note = f"the first {len(same)} mated pairs of LFW View-1 test (pairsDevTest.txt)"
        out: dict[str, Any] = {"reference": reference, "max_reference": sizes["lfw_reference_images"]}
    else:
        common = dict(split="test", image_size=size, num_identities=sizes["identities"],
                      images_per_identity=sizes["images_per_identity"])  # fmt: skip
        seed = config.data.seed
        dataset = ecl_data.build_dataset("faceparts", seed=seed + 2, occlusion_prob=0.0, **common)
        count, per = min(sizes["faceparts_pairs"], dataset.num_identities), dataset.images_per_identity
        first, second = [k * per for k in range(count)], [k * per + 1 for k in range(count)]
        note = (
            f"images 0 and 1 of the first {count} identities of clean FaceParts test images "
            f"(data seed {seed + 2}, {sizes['identities']} identities)"
        )
        out = {
            "reference": ecl_data.build_dataset("faceparts", seed=seed, **common),
            "max_reference": None,
            "game": ecl_data.build_dataset("faceparts", seed=seed + 1, **common),
        }
    out["pairs"] = tuple(torch.stack([dataset[i]["image"] for i in index]) for index in (first, second))
    out["pairs_note"] = note
    return out


def _explain_scores(model, data: dict[str, Any], sizes: dict[str, Any], seed: int, device) -> dict[str, Any]:
    """One model's scores on one data set of the explain study (see :func:`run_explain`)."""
    from ecl.attribution import assign_parts
    from ecl.pair_explain import MAP_METHODS
    from ecl.pair_scores import GAME_METHODS, pair_method_curves, part_swap_scores
    from ecl.studies import part_swap_game

    assignment = assign_parts(model, data["reference"], max_images=data["max_reference"], device=device)
    out: dict[str, Any] = {
        "channels_per_part": {g: int(len(assignment.channels(g))) for g in assignment.group_names},
    }
    if "game" in data:
        out["game"] = part_swap_game(
            model, assignment, data["game"], num_trials=sizes["trials"], seed=seed, device=device
        )
        out["part_swap"] = part_swap_scores(
            model, assignment, data["game"], num_trials=sizes["trials"], seed=seed, methods=GAME_METHODS,
            num_references=sizes["references"], stride=sizes["stride"], device=device,
        )  # fmt: skip
    images_a, images_b = data["pairs"]
    out["curves"] = pair_method_curves(
        model, images_a, images_b, methods=MAP_METHODS, assignment=assignment, steps=sizes["steps"],
        num_random=sizes["random"], seed=seed, device=device,
        map_options={"occlusion": {"stride": sizes["stride"]}},
    )  # fmt: skip
    return out


def _save_result(path: Path, record: dict[str, Any]) -> None:
    """Validate a run's result record, then write it."""
    problems = validate_result(record)
    if problems:
        raise ValueError(f"result for {path.name} is malformed: {problems}")
    atomic_write_json(path, record)

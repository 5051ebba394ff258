"""Reading the committed results: loading and checking them, the tables, the comparisons and the claims.

:func:`load_results` reads the JSON files :mod:`ecl.reproduce` writes (one per run),
:func:`results_frame` turns them into one row per run, :func:`summary_table` into mean ± std per study
and method, :func:`compare_methods` and :func:`claim_sentence` test the paper's claims against the
baseline, and :func:`readme_block` writes the README's results block. The explanation study's files
(``explain-*.json``) have readers of their own: :func:`load_explain_results`, :func:`explain_summary`,
:func:`explain_table` and :func:`explain_aims`. Nothing here trains or evaluates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ecl.experiments import DEFAULT_STUDIES, EXPLAIN_SCHEMA, METHODS, REFERENCE, REPO, SCHEMA, method_label

#: Top-level keys every result file has, and the type each must have.
_REQUIRED = {
    "schema": str,
    "study": str,
    "method": str,
    "seed": int,
    "profile": str,
    "preset": str,
    "config": dict,
    "versions": dict,
    "created": str,
    "train": dict,
    "evaluation": dict,
    "transfer": dict,
    "split": str,
}

#: The face parts whose detectors the paper's claim is about (hair and skin are not among them).
FACE_PARTS = ("left_eye", "right_eye", "left_brow", "right_brow", "nose", "mouth")


def validate_result(record: Any) -> list[str]:
    """Problems with a result record (empty when it matches the schema CI checks).

    Checks the top-level keys and types, the schema version, the method name, and that the evaluation
    holds verification numbers in range and an explainability report on original and jittered images.
    """
    problems: list[str] = []
    if not isinstance(record, dict):
        return ["a result must be a JSON object"]
    for key, kind in _REQUIRED.items():
        if key not in record:
            problems.append(f"missing key {key!r}")
        elif not isinstance(record[key], kind):
            problems.append(f"{key!r} must be {kind.__name__}, got {type(record[key]).__name__}")
    if problems:
        return problems
    if record["schema"] != SCHEMA:
        problems.append(f"schema {record['schema']!r} is not {SCHEMA!r}")
    if record["method"] not in METHODS:
        problems.append(f"unknown method {record['method']!r}")
    verification = record["evaluation"].get("verification", {})
    for key in ("accuracy", "auc", "eer"):
        value = verification.get(key)
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            problems.append(f"evaluation.verification.{key} must be a number in [0, 1], got {value!r}")
    explainability = record["evaluation"].get("explainability", {})
    for variant in ("original", "jittered"):
        report = explainability.get(variant)
        if not isinstance(report, dict):
            problems.append(f"evaluation.explainability.{variant} is missing")
            continue
        for key in ("location_instability", "part_iou", "translation_tracking", "part_coverage"):
            if not isinstance(report.get(key), dict):
                problems.append(f"evaluation.explainability.{variant}.{key} is missing")
    return problems


def load_results(results_dir: str | Path = "book/results", validate: bool = True) -> list[dict[str, Any]]:
    """Every run result under ``results_dir`` (files named ``<study>-<method>-seed<k>.json``; the
    explanation study's ``explain-*`` files are :func:`load_explain_results`'s)."""
    records = []
    for path in sorted(Path(results_dir).glob("*-seed*.json")):
        if path.name.startswith(EXPLAIN_PREFIX):
            continue
        record = json.loads(path.read_text())
        if validate:
            problems = validate_result(record)
            if problems:
                raise ValueError(f"{path}: {problems}")
        record["_path"] = str(path)
        records.append(record)
    return records


#: The headline numbers: (column name, path into a result's evaluation, whether lower is better).
HEADLINE = (
    ("verification accuracy", ("verification", "accuracy"), False),
    ("AUC", ("verification", "auc"), False),
    ("instability (jittered)", ("explainability", "jittered", "location_instability", "overall"), True),
    ("instability (original)", ("explainability", "original", "location_instability", "overall"), True),
    ("tracking (jittered)", ("explainability", "jittered", "translation_tracking", "mean"), False),
    (
        "channels tracking >= 0.5",
        ("explainability", "jittered", "translation_tracking", "fraction_tracking"),
        False,
    ),
    ("part detectors (jittered)", ("explainability", "jittered", "part_iou", "num_detectors"), False),
    ("parts covered (jittered)", ("explainability", "jittered", "part_iou", "num_parts_covered"), False),
    ("mean best IoU (jittered)", ("explainability", "jittered", "part_iou", "mean_best_iou"), False),
    ("detector spread (bits)", ("explainability", "jittered", "part_coverage", "entropy_bits"), False),
    ("face parts covered (jittered)", lambda e: _face_parts(e, "covered"), False),
    ("eye detectors (jittered)", lambda e: _face_parts(e, "eyes"), False),
    ("bimodal maps (jittered)", ("explainability", "jittered", "bimodality", "bimodal"), True),
)

#: The columns of the README's table (the book shows all of :data:`HEADLINE`).
README_COLUMNS = (
    "verification accuracy",
    "instability (jittered)",
    "tracking (jittered)",
    "part detectors (jittered)",
    "face parts covered (jittered)",
    "eye detectors (jittered)",
    "detector spread (bits)",
)


def _face_parts(evaluation: dict[str, Any], what: str) -> float | None:
    """How many of :data:`FACE_PARTS` hold a detector (``covered``), or how many eye detectors (``eyes``)."""
    counts = _dig(evaluation, ("explainability", "jittered", "part_coverage", "channels_per_part"))
    covered = _dig(evaluation, ("explainability", "jittered", "part_iou", "parts_covered"))
    if what == "covered":
        return None if covered is None else float(sum(part in FACE_PARTS for part in covered))
    return None if counts is None else float(counts.get("left_eye", 0) + counts.get("right_eye", 0))


def _dig(obj: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def results_frame(records: Sequence[dict[str, Any]], source: str = "evaluation"):
    """One row per run with the :data:`HEADLINE` numbers (``source``: ``"evaluation"`` or
    ``"transfer.<name>"``).

    The columns are ``study``, ``method``, ``split`` (where it was measured), ``map size`` (of the layer
    measured, e.g. ``"14x14"``), ``seed`` (int) and one float column per headline number, typed even
    when there are no runs, so that filtering and grouping an empty frame works.
    """
    import pandas as pd

    rows = []
    for record in records:
        evaluation = record["evaluation"] if source == "evaluation" else _dig(record, source.split("."))
        if evaluation is None:
            continue
        map_size = _dig(evaluation, ("explainability", "jittered", "map_size"))
        profile = record.get("profile", "quick")
        row = {
            # Another profile's runs (the GPU grid) are a study of their own, never averaged with the CPU's.
            "study": record["study"] if profile == "quick" else f"{record['study']} ({profile})",
            "method": record["method"],
            "seed": record["seed"],
            "split": evaluation.get("split") or record.get("split") or "",
            "map size": "x".join(str(n) for n in map_size) if map_size else "",
        }
        for column, path, _ in HEADLINE:
            value = path(evaluation) if callable(path) else _dig(evaluation, path)
            row[column] = float(value) + 0.0 if isinstance(value, (int, float)) else float("nan")  # no -0.0
        rows.append(row)
    dtypes = {
        "study": "object",
        "method": "object",
        "seed": "int64",
        "split": "object",
        "map size": "object",
        **{c: "float64" for c, _, _ in HEADLINE},
    }
    return pd.DataFrame(rows, columns=list(dtypes)).astype(dtypes)


def summary_table(frame, study: str | None = None):
    """Mean and std over seeds, per study and method, as ``"mean ± std"`` strings (and the seed count)."""
    import pandas as pd

    if study is not None:
        frame = frame[frame["study"] == study]
    order = [m for m in METHODS if m in set(frame["method"])]
    columns = [c for c, _, _ in HEADLINE if c in frame.columns]
    grouped = frame.groupby(["study", "method"])
    mean, std, count = grouped[columns].mean(), grouped[columns].std(ddof=1), grouped["seed"].count()
    table = pd.DataFrame(index=mean.index)
    for column in columns:
        table[column] = [
            f"{m:.3f} ± {s:.3f}" if pd.notna(s) else (f"{m:.3f}" if pd.notna(m) else "n/a")
            for m, s in zip(mean[column], std[column], strict=True)
        ]
    table["seeds"] = count
    table = table.reset_index()
    table["method"] = pd.Categorical(table["method"], categories=order, ordered=True)
    return table.sort_values(["study", "method"]).set_index(["study", "method"])


def compare_methods(frame, study: str, method: str = "ecloss", against: str = "baseline"):
    """How ``method`` differs from ``against`` on every headline number of one study, over seeds.

    "beyond noise" is a plain rule, stated so it can be checked: the difference of the means exceeds
    twice its standard error, ``2 * sqrt(s_a^2 / n_a + s_b^2 / n_b)`` (sample standard deviations over
    seeds). With three seeds this is a rough screen, not a significance test.

    Returns:
        A DataFrame indexed by metric: both means, the relative change, whether the change is in the
        better direction, and whether it is beyond that noise level.
    """
    import numpy as np
    import pandas as pd

    rows = {}
    sub = frame[frame["study"] == study]
    a, b = sub[sub["method"] == method], sub[sub["method"] == against]
    if a.empty or b.empty:
        return pd.DataFrame()
    for column, _, lower_is_better in HEADLINE:
        mean_a, mean_b = a[column].mean(), b[column].mean()
        se = (
            np.sqrt(a[column].var(ddof=1) / len(a) + b[column].var(ddof=1) / len(b))
            if min(len(a), len(b)) > 1
            else np.nan
        )
        diff = mean_a - mean_b
        rows[column] = {
            against: mean_b,
            method: mean_a,
            "relative change": diff / abs(mean_b) if mean_b else np.nan,
            "better": bool(diff < 0) if lower_is_better else bool(diff > 0),
            "beyond noise": bool(abs(diff) > 2 * se)
            if np.isfinite(se) and se > 0
            else bool(diff != 0 and se == 0),
        }
    return pd.DataFrame(rows).T


def claim_sentence(table, study: str, method: str = "ecloss", against: str = "baseline") -> str:
    """The paper's claims for one study, in words, from a :func:`compare_methods` table.

    Instability on jittered images (the aim: 25% lower or better), translation tracking, part
    detectors, the parts they cover, and verification accuracy, each with its direction and whether it
    is beyond seed noise.
    """

    def direction(row, better_word: str, worse_word: str) -> str:
        if row["beyond noise"]:
            return f"{better_word if row['better'] else worse_word}, beyond seed noise."
        return "no difference beyond seed noise."

    inst, track, det, parts, acc = (
        table.loc[k]
        for k in (
            "instability (jittered)",
            "tracking (jittered)",
            "part detectors (jittered)",
            "parts covered (jittered)",
            "verification accuracy",
        )
    )
    met = inst["better"] and inst["beyond noise"] and inst["relative change"] <= -0.25
    return " ".join(
        [
            f"**{study}, {method_label(method)}**: location instability on jittered images "
            f"{inst[against]:.4f} ({against}) -> {inst[method]:.4f}, {inst['relative change']:+.1%} "
            "(the aim was -25% or better): "
            + (
                "lower beyond seed noise, aim met."
                if met
                else "lower beyond seed noise, short of the aim."
                if inst["better"] and inst["beyond noise"]
                else "not a reduction beyond seed noise."
            ),
            f"Translation tracking {track[against]:.3f} -> {track[method]:.3f}: "
            + direction(track, "higher", "lower"),
            f"Part detectors {det[against]:.1f} -> {det[method]:.1f} per model: "
            + direction(det, "more", "fewer"),
            f"Parts their detectors cover: {parts[against]:.1f} -> {parts[method]:.1f} per model "
            "(the aim was at least eyes, nose and mouth, each with channels of its own).",
            f"Verification accuracy {acc[against]:.3f} -> {acc[method]:.3f}: "
            + (
                "at least the baseline's within the error bars."
                if acc["better"] or not acc["beyond noise"]
                else "lower than the baseline, beyond noise."
            ),
        ]
    )


def claim_sentences(
    frame, studies: Iterable[str] | None = None, methods: Iterable[str] | None = None
) -> list[str]:
    """:func:`claim_sentence` for every study (default: all in ``frame``) and ECLoss variant of
    :data:`METHODS` (default: all of them) that has runs of its own and of its baseline (the one trained
    and measured alike, :data:`ecl.experiments.REFERENCE`)."""
    studies = sorted(set(frame["study"])) if studies is None else list(studies)
    methods = [m for m in METHODS if m.startswith("ecloss")] if methods is None else list(methods)
    sentences = []
    for study in studies:
        for method in methods:
            against = REFERENCE.get(method, "baseline")
            table = compare_methods(frame, study, method=method, against=against)
            if not table.empty:
                sentences.append(claim_sentence(table, study, method=method, against=against))
    return sentences


def markdown_table(table) -> str:
    """A DataFrame (with a possibly multi-level index) as a GitHub markdown table."""
    frame = table.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


README_START = "<!-- results-table: generated by `python -m ecl reproduce --summary`; do not edit by hand -->"


README_END = "<!-- /results-table -->"


def readme_block(
    records: Sequence[dict[str, Any]], results_dir: str | Path = REPO / "book" / "results"
) -> str:
    """The README's results block: the headline table of FaceParts and LFW (other studies: the book),
    and the part-swap game's accuracy when ``results_dir`` holds it."""
    import pandas as pd

    # The confirmation only: the validation studies and the screening have their chapter.
    records = [r for r in records if r["study"] in DEFAULT_STUDIES]
    frame = results_frame(records)
    if frame.empty:
        return "_No grid results are committed yet: `python -m ecl reproduce --profile quick` writes them._"
    seeds = sorted({int(s) for s in frame["seed"]})
    presets = ", ".join(f"`{p}`" for p in sorted({r["preset"] for r in records}))
    note = (
        f"Mean ± std over seeds {seeds} of the grid ({presets}), regenerated by "
        "`python -m ecl reproduce --summary --update-readme README.md`; "
        "instability, tracking and detectors on jittered evaluation images; "
        "face parts covered: of left/right eye, left/right brow, nose and mouth, how many have a detector; "
        "detector spread: the entropy in bits of the parts the detectors sit on (0: all on one part). "
        "The book's metrics, verification and search chapters show every number and discuss them."
    )
    block = note + "\n\n" + markdown_table(summary_table(frame)[[*README_COLUMNS, "seeds"]])
    block += (
        "\n\n"
        + "; ".join(f"`{m}`: {method_label(m)}" for m in METHODS if m in set(frame["method"]))
        + ". Every setting is measured here on the test data (FaceParts test, LFW View-1 test pairs, "
        "CelebA) and chosen elsewhere: on the FaceParts validation split (chapter 08), except "
        "`ecloss-tuned`, which an earlier screening picked on the FaceParts test split and is kept as a "
        "record of it."
    )
    transfer = results_frame(records, source="transfer.celeba")
    if not transfer.empty:
        frame = pd.concat([frame, transfer.assign(study="lfw models on celeba")])
    sentences = claim_sentences(frame)
    if sentences:
        block += (
            "\n\nThe claims, tested "
            "(beyond seed noise: a difference of the means over twice its standard error):\n\n"
        )
        block += "\n".join(f"- {s}" for s in sentences)
    game_file = Path(results_dir) / "part_swap_game.json"
    if game_file.is_file():
        summary = json.loads(game_file.read_text())["summary"]
        lines = ["| method | breakdown top-1 | saliency top-1 | seeds |", "|---|---|---|---|"]
        for method, row in summary.items():
            lines.append(
                f"| {method} | {row['breakdown_top1_mean']:.3f} ± {row['breakdown_top1_std']:.3f} | "
                f"{row['saliency_top1_mean']:.3f} ± {row['saliency_top1_std']:.3f} | {len(row['seeds'])} |"
            )
        chance = next(iter(summary.values()))["chance"]
        block += (
            "\n\nThe part-swap game (chapter 09): which part of a FaceParts chimera differs, "
            f"top-1 accuracy over seeds (chance {chance:.2f}; std with ddof 0):\n\n" + "\n".join(lines)
        )
    return block


def update_readme(
    path: str | Path, records: Sequence[dict[str, Any]], results_dir: str | Path = REPO / "book" / "results"
) -> bool:
    """Rewrite the results block of a README between its markers; return whether it changed."""
    path = Path(path)
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} has no results block (the markers {README_START!r} ... {README_END!r})")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{readme_block(records, results_dir)}\n{README_END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


#: The selection rule's columns, in the order they rank the points (see :func:`select_setting`).
RULE_COLUMNS = ("qualifies", "aims met", "face parts covered (jittered)", "detector spread (bits)")


def search_table(frame, reference_study: str = "faceparts-val"):
    """One row per search point that has results: its hypothesis, seeds, mean numbers and its reference.

    The reference of a point is the baseline of ``reference_study``, or the search point it names as
    its ``reference`` (the baseline trained and measured alike); ``reference instability`` and
    ``reference tracking`` are left empty when the reference was measured on another map size.
    """
    import pandas as pd

    from ecl.experiments import SEARCH_POINTS

    reference = frame[(frame["study"] == reference_study) & (frame["method"] == "baseline")]
    numbers = [c for c, _, _ in HEADLINE]
    rows = []
    for name, point in SEARCH_POINTS.items():
        runs = frame[frame["study"] == f"search: {name}"]
        if runs.empty:
            continue
        ref = reference if point.reference is None else frame[frame["study"] == f"search: {point.reference}"]
        size = runs["map size"].iloc[0]
        row = {"search point": name, "hypothesis": point.hypothesis, "method": point.method,
               "seeds": len(runs), "map size": size, **runs[numbers].mean().to_dict()}  # fmt: skip
        # A reference measured on another map than the point's is no reference (a wrong layer).
        if len(ref) and set(ref["map size"]) == {size}:
            row["reference instability"] = ref["instability (jittered)"].mean()
            row["reference tracking"] = ref["tracking (jittered)"].mean()
        rows.append(row)
    columns = ["search point", "hypothesis", "method", "seeds", "map size", *numbers, "reference instability",
               "reference tracking"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def select_setting(
    frame,
    points: Sequence[str] | None = None,
    reference_study: str = "faceparts-val",
    seeds_to_choose: int = 3,
):
    """The validation search's selection rule (METHOD section 9), applied to a :func:`results_frame`.

    Written down before the runs it judges. Every number is measured on the FaceParts *validation*
    split, on jittered images; a point's numbers are its means over the seeds it has.

    1. The reference is the baseline on the validation split (``reference_study``, three seeds), or,
       for a point trained or measured otherwise (another target layer, more steps), the baseline
       trained and measured alike (the point's ``reference``, e.g. ``baseline at layer2``).
    2. A point *qualifies* when its verification accuracy is at least the reference's mean minus twice
       its standard deviation over seeds.
    3. Each of the three aims it meets counts one: location instability at most 0.75 x the
       reference's; translation tracking above the reference's; detectors on at least three of the
       face parts (:data:`FACE_PARTS`) including an eye.
    4. Qualifying points are ranked by the number of aims met, then the number of face parts with a
       detector, then the spread of the detectors over parts (entropy, bits), then the lower
       instability.
    5. The choice is the best-ranked point with at least ``seeds_to_choose`` seeds. Ranked on one seed,
       the two best points that lack seeds are named to get more (``to_confirm``); the choice is made
       once they have them. The original setting is a point like the others: if it ranks first, the
       default does not change.

    Returns:
        ``(chosen, to_confirm, table)``: the chosen point's name (``None`` until one with enough seeds
        ranks first), the points that need more seeds, and a DataFrame of every point (best first) with
        its means, its reference, the aims and the rule's columns.
    """
    import pandas as pd

    from ecl.experiments import SEARCH_POINTS

    names = (
        list(points) if points is not None else [n for n, p in SEARCH_POINTS.items() if p.method == "ecloss"]
    )
    reference = frame[(frame["study"] == reference_study) & (frame["method"] == "baseline")]
    accuracy = reference["verification accuracy"]
    floor = accuracy.mean() - 2 * accuracy.std(ddof=1) if len(accuracy) > 1 else float("nan")
    table = search_table(frame, reference_study)
    table = table[table["search point"].isin(names)].reset_index(drop=True)
    if table.empty:
        return None, [], table.assign(**{c: pd.Series(dtype=object) for c in (*RULE_COLUMNS, "chosen")})
    aims = pd.DataFrame({
        "instability aim": table["instability (jittered)"] <= 0.75 * table["reference instability"],
        "tracking aim": table["tracking (jittered)"] > table["reference tracking"],
        "parts aim": (table["face parts covered (jittered)"] >= 3) & (table["eye detectors (jittered)"] > 0),
    })  # fmt: skip
    table = pd.concat([table, aims], axis=1)
    table["qualifies"] = (table["verification accuracy"] >= floor) & table["reference instability"].notna()
    table["aims met"] = aims.sum(axis=1).where(table["qualifies"], 0)
    table = table.sort_values(
        [*RULE_COLUMNS, "instability (jittered)"], ascending=[False, False, False, False, True]
    ).reset_index(drop=True)
    qualified = table[table["qualifies"]]
    chosen = None
    if len(qualified) and qualified.iloc[0]["seeds"] >= seeds_to_choose:
        chosen = qualified.iloc[0]["search point"]
    to_confirm = [] if chosen else list(qualified[qualified["seeds"] < seeds_to_choose]["search point"][:2])
    table["chosen"] = table["search point"] == chosen
    return chosen, to_confirm, table


# ------------------------------------------------------------------------------ the explanation study
#: File names of the explanation study's results (:func:`ecl.reproduce.run_explain`).
EXPLAIN_PREFIX = "explain-"

#: The explanation methods in the order the tables list them: the part breakdown (naming a part, and as
#: a map: its Shapley contributions), the baselines, then the references.
EXPLAIN_METHODS = ("breakdown", "shapley", "regions", "xcos_parts", "gradcam", "xcos", "occlusion", "oracle",
                   "random")  # fmt: skip

#: The scores of the tables, in order (``beats random``: the share of pairs whose curve beats the random
#: orders'; ``valid trials``: the trials that count for the nonmate rate).
EXPLAIN_SCORES = ("top-1", "nonmate rate", "IoU", "deletion AUC", "insertion AUC", "deletion beats random",
                  "insertion beats random", "valid trials")  # fmt: skip


def validate_explain_result(record: Any) -> list[str]:
    """Problems with an explanation-study record (empty when it has what :func:`explain_summary` reads)."""
    if not isinstance(record, dict):
        return ["a result must be a JSON object"]
    required = ("schema", "data", "method", "seed", "profile", "split", "config", "versions", "curves")
    problems = [f"missing key {k!r}" for k in required if k not in record]
    if problems:
        return problems
    if record["schema"] != EXPLAIN_SCHEMA:
        problems.append(f"schema {record['schema']!r} is not {EXPLAIN_SCHEMA!r}")
    if not isinstance(record["seed"], int):
        problems.append("'seed' must be int")
    if not isinstance(_dig(record, ("curves", "methods")), dict) or "random" not in record["curves"]:
        problems.append("curves.methods and curves.random are missing")
    if record["data"] == "faceparts":
        if not isinstance(_dig(record, ("part_swap", "methods")), dict):
            problems.append("part_swap.methods is missing")
        if not isinstance(_dig(record, ("game", "saliency", "top1")), (int, float)):
            problems.append("game.saliency.top1 is missing")
    return problems


def load_explain_results(results_dir: str | Path = "book/results") -> list[dict[str, Any]]:
    """Every explanation-study result under ``results_dir`` (``explain-<data>-<method>-seed<k>.json``)."""
    records = []
    for path in sorted(Path(results_dir).glob(f"{EXPLAIN_PREFIX}*-seed*.json")):
        record = json.loads(path.read_text())
        problems = validate_explain_result(record)
        if problems:
            raise ValueError(f"{path}: {problems}")
        records.append({**record, "_path": str(path)})
    return records


def _explain_rows(record: dict[str, Any]) -> list[tuple[str, str, float]]:
    """``(method, score, value)`` of one record: the part-swap game's and the curves' numbers."""
    rows = []
    swap = record.get("part_swap")
    if swap:
        for method, row in swap["methods"].items():
            for score, key in (("top-1", "top1"), ("nonmate rate", "nonmate_rate"), ("IoU", "iou")):
                if row.get(key) is not None:
                    rows.append((method, score, row[key]))
            rows.append((method, "valid trials", swap["valid_trials"]))
        # The saliency map names the part whose mask it finds least similar (the game's rule).
        rows.append(("gradcam", "top-1", record["game"]["saliency"]["top1"]))
    curves = record["curves"]
    for method, row in curves["methods"].items():
        for mode in ("deletion", "insertion"):
            rows.append((method, f"{mode} AUC", row[f"{mode}_auc"]))
            rows.append((method, f"{mode} beats random", row[f"{mode}_beats_random"]))
    for mode in ("deletion", "insertion"):
        if curves["random"].get(f"{mode}_auc") is not None:
            rows.append(("random", f"{mode} AUC", curves["random"][f"{mode}_auc"]))
    return rows


def explain_frame(records: Sequence[dict[str, Any]]):
    """One row per (record, explanation method, score): columns ``data`` (``faceparts``, ``lfw``; another
    profile's runs carry its name, e.g. ``faceparts (full)``), ``model``, ``seed``, ``method``, ``score``
    and ``value`` (float; None values dropped)."""
    import pandas as pd

    rows = []
    for record in records:
        profile = record.get("profile", "quick")
        data = record["data"] if profile == "quick" else f"{record['data']} ({profile})"
        for method, score, value in _explain_rows(record):
            if value is not None:
                rows.append((data, record["method"], int(record["seed"]), method, score, float(value)))
    columns = ["data", "model", "seed", "method", "score", "value"]
    return pd.DataFrame(rows, columns=columns).astype({"seed": "int64", "value": "float64"})


def explain_summary(records: Sequence[dict[str, Any]]):
    """The explanation study over seeds, tidy: one row per (data, model, method, score) with ``mean``,
    ``std`` (sample std over seeds, ddof 1; NaN with one seed) and ``seeds`` (how many).

    Methods (``EXPLAIN_METHODS``): ``breakdown``, ``regions``, ``xcos_parts`` name the swapped part
    (top-1, nonmate rate, IoU of the named part's mask); ``gradcam``, ``xcos``, ``occlusion`` are maps
    (nonmate rate and IoU of their top pixels; ``gradcam``'s top-1 is the part-swap game's saliency
    rule); ``shapley`` is the part breakdown drawn as a map. Every map has deletion and insertion AUCs
    (lower deletion, higher insertion is better) and the share of pairs that beat the random orders;
    ``oracle`` and ``random`` are the references (``random``'s AUCs are the random orders').
    """
    import pandas as pd

    frame = explain_frame(records)
    grouped = frame.groupby(["data", "model", "method", "score"], sort=False)["value"]
    out = pd.DataFrame(
        {"mean": grouped.mean(), "std": grouped.std(ddof=1), "seeds": grouped.count()}
    ).reset_index()
    rank = {m: k for k, m in enumerate(EXPLAIN_METHODS)}
    out["_m"] = out["method"].map(lambda m: rank.get(m, len(rank)))
    out["_s"] = out["score"].map(
        lambda s: EXPLAIN_SCORES.index(s) if s in EXPLAIN_SCORES else len(EXPLAIN_SCORES)
    )
    out = out.sort_values(["data", "model", "_m", "_s"], kind="stable").drop(columns=["_m", "_s"])
    return out.reset_index(drop=True)


def explain_table(records: Sequence[dict[str, Any]], digits: int = 3):
    """:func:`explain_summary` as a table to read: one row per (data, model, method), one column per
    score (``EXPLAIN_SCORES`` present), ``"mean ± std"`` strings (``"n/a"`` where a method has no such
    score), and the seed count."""
    import pandas as pd

    summary = explain_summary(records)
    places = [1 if score == "valid trials" else digits for score in summary["score"]]
    text = [
        "n/a" if pd.isna(m) else f"{m:.{k}f}" if pd.isna(s) else f"{m:.{k}f} ± {s:.{k}f}"
        for m, s, k in zip(summary["mean"], summary["std"], places, strict=True)
    ]
    wide = summary.assign(text=text).pivot_table(
        index=["data", "model", "method"], columns="score", values="text", aggfunc="first", sort=False
    )
    wide = wide[[s for s in EXPLAIN_SCORES if s in wide.columns]].fillna("n/a")
    wide.columns.name = None
    wide["seeds"] = summary.groupby(["data", "model", "method"], sort=False)["seeds"].max()
    return wide


def explain_aims(
    records: Sequence[dict[str, Any]],
    model: str = "ecloss",
    threshold: float = 0.5,
    breakdown_map: str = "shapley",
    profile: str = "quick",
):
    """The explanation study's aims (issue 16), on the means over seeds of ``model``, the recommended
    ECLoss model (the library's default setting):

    1. on the FaceParts part-swap game, the part breakdown's top-1 is at least ``threshold``;
    2. and at least the saliency map's (similarity Grad-CAM, the game's saliency rule);
    3. on deletion and on insertion the part breakdown (drawn as a map: ``breakdown_map``) beats random
       order (a lower deletion area, a higher insertion area than the random orders'), on FaceParts and
       on LFW.

    ``profile`` chooses whose runs are judged (``"full"``: the GPU runs).

    Returns:
        A DataFrame indexed by the aim: ``data``, ``value`` (the model's mean), ``reference`` (the
        threshold or what the value is compared with), ``met`` (bool; None when the results are
        missing) and ``seeds``.
    """
    import pandas as pd

    summary = explain_summary(records)
    mine = summary[summary["model"] == model]

    def label(data: str) -> str:
        return data if profile == "quick" else f"{data} ({profile})"

    def mean(data: str, method: str, score: str) -> tuple[float | None, int]:
        row = mine[(mine["data"] == label(data)) & (mine["method"] == method) & (mine["score"] == score)]
        return (float(row["mean"].iloc[0]), int(row["seeds"].iloc[0])) if len(row) else (None, 0)

    top1, seeds = mean("faceparts", "breakdown", "top-1")
    saliency, _ = mean("faceparts", "gradcam", "top-1")
    rows = [
        (f"part breakdown top-1 >= {threshold:g}", label("faceparts"), top1, threshold, seeds,
         None if top1 is None else top1 >= threshold),
        ("part breakdown top-1 >= saliency map top-1", label("faceparts"), top1, saliency, seeds,
         None if top1 is None or saliency is None else top1 >= saliency),
    ]  # fmt: skip
    for data in ("faceparts", "lfw"):
        for mode in ("deletion", "insertion"):
            value, seeds = mean(data, breakdown_map, f"{mode} AUC")
            random, _ = mean(data, "random", f"{mode} AUC")
            if value is None or random is None:
                met = None
            else:
                met = value < random if mode == "deletion" else value > random
            rows.append((f"{mode}: part breakdown beats random order ({data})", label(data), value, random,
                         seeds, met))  # fmt: skip
    frame = pd.DataFrame(rows, columns=["aim", "data", "value", "reference", "seeds", "met"])
    return frame.astype({"met": "object"}).set_index("aim")

"""The comparison grid's plumbing: method configs, result records, the committed results and their tables."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ecl.config import load_config
from ecl.experiments import METHODS, SCHEMA, method_config, result_path
from ecl.results import load_results, results_frame, summary_table, validate_result

REPO = Path(__file__).resolve().parents[1]


def _record(method: str = "ecloss", seed: int = 0, accuracy: float = 0.9, instability: float = 0.05) -> dict:
    report = {
        "location_instability": {"overall": instability},
        "part_iou": {"num_detectors": 3, "num_parts_covered": 2, "mean_best_iou": 0.05},
        "translation_tracking": {"mean": 0.6, "fraction_tracking": 0.5},
        "part_coverage": {"channels_per_part": {}},
    }
    return {
        "schema": SCHEMA,
        "study": "faceparts",
        "method": method,
        "seed": seed,
        "profile": "quick",
        "preset": "configs/faceparts-quick.yaml",
        "config": {},
        "versions": {},
        "created": "2026-01-01T00:00:00+00:00",
        "train": {},
        "transfer": {},
        "evaluation": {
            "verification": {"accuracy": accuracy, "auc": 0.95, "eer": 0.1},
            "explainability": {"original": report, "jittered": copy.deepcopy(report)},
        },
    }


def test_method_configs_differ_only_in_the_regulariser_and_seed():
    base = load_config(REPO / "configs" / "faceparts-quick.yaml")
    configs = {m: method_config(base, m, seed=1) for m in METHODS}
    assert {c.loss.method for c in configs.values()} == {"none", "ecloss", "icnn", "sad"}
    for config in configs.values():
        assert config.model == base.model and config.optim == base.optim and config.data == base.data
        assert config.run.seed == 1
    assert len({c.run.name for c in configs.values()}) == len(METHODS)
    assert configs["sad"].loss.gamma > 0, "SAD without a diversity weight would be the baseline"
    tuned, default = configs["ecloss-tuned"].loss, configs["ecloss"].loss
    assert (tuned.lambda_, tuned.peak, tuned.gamma) == (10.0, "centroid", 0.05)
    assert (default.lambda_, default.peak, default.gamma) == (1.0, "argmax", 0.0)
    with pytest.raises(ValueError, match="unknown method"):
        method_config(base, "arcface")


def test_validate_result_accepts_a_good_record_and_names_problems():
    assert validate_result(_record()) == []
    bad = _record()
    del bad["evaluation"]["explainability"]["jittered"]
    bad["evaluation"]["verification"]["accuracy"] = 1.5
    problems = validate_result(bad)
    assert any("jittered" in p for p in problems) and any("accuracy" in p for p in problems)
    assert validate_result({"schema": SCHEMA}) and validate_result([]) == ["a result must be a JSON object"]


def test_summary_table_gives_mean_and_std_over_seeds(tmp_path):
    for seed, acc in enumerate([0.8, 0.9, 1.0]):
        result_path(tmp_path, "faceparts", "ecloss", seed).write_text(
            json.dumps(_record("ecloss", seed, acc))
        )
        result_path(tmp_path, "faceparts", "baseline", seed).write_text(
            json.dumps(_record("baseline", seed, 0.5))
        )
    table = summary_table(results_frame(load_results(tmp_path)))
    assert table.loc[("faceparts", "ecloss"), "verification accuracy"] == "0.900 ± 0.100"
    assert table.loc[("faceparts", "baseline"), "seeds"] == 3
    assert list(table.index.get_level_values("method")) == ["baseline", "ecloss"]


def test_load_results_rejects_a_malformed_file(tmp_path):
    result_path(tmp_path, "faceparts", "ecloss", 0).write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="faceparts-ecloss-seed0.json"):
        load_results(tmp_path)


def test_committed_results_match_the_schema():
    records = load_results(REPO / "book" / "results")
    for record in records:
        assert record["method"] in METHODS
        assert Path(REPO / record["preset"]).is_file(), (
            f"{record['_path']}: preset {record['preset']} is gone"
        )


def test_compare_methods_flags_a_clear_improvement_and_ignores_noise(tmp_path):
    from ecl.results import claim_sentence, compare_methods

    for seed in range(3):
        # ECLoss: instability clearly lower (0.05 vs 0.10, tiny spread); accuracy within noise.
        result_path(tmp_path, "faceparts", "ecloss", seed).write_text(
            json.dumps(_record("ecloss", seed, accuracy=0.80 + 0.05 * seed, instability=0.050 + 0.001 * seed))
        )
        result_path(tmp_path, "faceparts", "baseline", seed).write_text(
            json.dumps(
                _record("baseline", seed, accuracy=0.82 + 0.05 * seed, instability=0.100 + 0.001 * seed)
            )
        )
    table = compare_methods(results_frame(load_results(tmp_path)), "faceparts")
    row = table.loc["instability (jittered)"]
    assert row["better"] and row["beyond noise"] and row["relative change"] == pytest.approx(-0.5, abs=0.01)
    acc = table.loc["verification accuracy"]
    assert not acc["better"] and not acc["beyond noise"]
    sentence = claim_sentence(table, "faceparts")
    assert "(the aim was -25% or better): lower beyond seed noise, aim met." in sentence
    assert "Verification accuracy 0.870 -> 0.850: at least the baseline's within the error bars." in sentence


def test_pick_setting_prefers_spread_detectors_among_points_that_meet_the_aim_and_keep_accuracy():
    import pandas as pd

    from ecl.results import pick_setting

    def run(study, method, accuracy, instability, spread=0.0, seed=0):
        record = _record(method, seed, accuracy=accuracy, instability=instability)
        record["evaluation"]["explainability"]["jittered"]["part_coverage"]["entropy_bits"] = spread
        return {**record, "study": study}

    records = [run("faceparts", "baseline", 0.90 + 0.01 * (seed - 1), 0.10, seed=seed) for seed in range(3)]
    points = {  # (accuracy, instability, spread of the detectors in bits); the aim is instability <= 0.075
        "lambda=30": (0.80, 0.03, 1.5),  # best numbers, but accuracy below 0.90 - 2 * 0.01
        "lambda=10 centroid": (0.90, 0.03, -0.0),  # meets the aim with every detector on one part
        "lambda=10 beta=8": (0.89, 0.06, 0.9),  # meets the aim, detectors over two parts: the pick
        "lambda=10": (0.90, 0.08, 1.5),  # misses the aim: its spread does not count
        "target 7x7 (layer4)": (0.90, 0.03, 1.5),  # measured on another layer than the baseline
    }
    for name, (accuracy, instability, spread) in points.items():
        records.append(run(f"ablation: {name}", "ecloss", accuracy, instability, spread))
    chosen, table = pick_setting(results_frame(records), candidates=[*points, "never run"])
    assert chosen == "lambda=10 beta=8"
    assert list(table["search point"])[:3] == ["lambda=10 beta=8", "lambda=10 centroid", "lambda=10"]
    assert set(table["search point"][3:]) == {"lambda=30", "target 7x7 (layer4)"}
    assert list(table["meets aim"]) == [True, True, False, False, False] and table["chosen"].sum() == 1
    # No point meets the aim: the lowest instability among those that keep accuracy.
    fallback = [
        r for r in records if r["study"] in ("faceparts", "ablation: lambda=10", "ablation: lambda=30")
    ]
    assert pick_setting(results_frame(fallback), candidates=list(points))[0] == "lambda=10"
    assert pick_setting(pd.DataFrame(columns=["study", "method", "seed"]))[0] is None


def test_summary_cli_prints_a_markdown_table(tmp_path, capsys):
    from ecl.cli import main

    for seed in range(2):
        result_path(tmp_path, "faceparts", "ecloss", seed).write_text(json.dumps(_record("ecloss", seed)))
    assert main(["reproduce", "--summary", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| study | method | verification accuracy")
    assert out[2].startswith("| faceparts | ecloss | 0.900 ± 0.000")
    assert main(["reproduce", "--summary", "--results", str(tmp_path / "none")]) == 1


def test_readme_results_block_matches_the_committed_results():
    from ecl.results import README_END, README_START, readme_block

    text = (REPO / "README.md").read_text()
    block = text.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert block == readme_block(load_results(REPO / "book" / "results")).strip(), (
        "README's results table is stale: python -m ecl reproduce --summary --update-readme README.md"
    )


def test_update_readme_rewrites_only_the_block(tmp_path):
    from ecl.results import README_END, README_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\nold\n{README_END}\n\nrest\n")
    assert update_readme(readme, [_record("ecloss", 0)], tmp_path)
    text = readme.read_text()
    assert text.startswith("# x\n\n") and text.endswith("\n\nrest\n") and "| faceparts | ecloss |" in text
    assert not update_readme(readme, [_record("ecloss", 0)], tmp_path)


def test_grid_seeds_default_to_three_and_ablations_to_one(tmp_path, monkeypatch):
    import ecl.reproduce as reproduce

    calls = []
    monkeypatch.setattr(
        reproduce,
        "run_one",
        lambda name, study, method, seed, *rest: calls.append((name, method, seed)) or {},
    )
    monkeypatch.setattr(reproduce, "_save_result", lambda path, record: None)
    reproduce.run_grid(studies=["faceparts"], methods=["baseline"], results_dir=tmp_path, echo=lambda _: None)
    reproduce.run_grid(
        studies=["ablations"], ablations=["lambda=10"], results_dir=tmp_path, echo=lambda _: None
    )
    assert calls == [
        ("faceparts", "baseline", 0),
        ("faceparts", "baseline", 1),
        ("faceparts", "baseline", 2),
        ("ablation: lambda=10", "ecloss", 0),
    ]

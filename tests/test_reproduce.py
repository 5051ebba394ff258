"""The comparison grid's plumbing: method configs, result records, the committed results and their tables."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

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
        "split": "FaceParts test",
        "evaluation": {
            "verification": {"accuracy": accuracy, "auc": 0.95, "eer": 0.1},
            "explainability": {"original": report, "jittered": copy.deepcopy(report)},
        },
    }


def test_method_configs_differ_only_in_the_regulariser_seed_and_stated_layer():
    base = load_config(REPO / "configs" / "faceparts-grid.yaml")
    configs = {m: method_config(base, m, seed=1) for m in METHODS}
    assert {c.loss.method for c in configs.values()} == {"none", "ecloss", "icnn", "sad"}
    for method, config in configs.items():
        assert config.optim == base.optim and config.data == base.data and config.run.seed == 1
        layer = "layer3" if method in ("ecloss-original", "ecloss-tuned") else base.model.target_layer
        assert config.model.target_layer == layer and config.model.backbone == base.model.backbone
    assert len({c.run.name for c in configs.values()}) == len(METHODS)
    assert configs["sad"].loss.gamma > 0, "SAD without a diversity weight would be the baseline"
    tuned, default, original = (configs[m].loss for m in ("ecloss-tuned", "ecloss", "ecloss-original"))
    assert (tuned.lambda_, tuned.peak, tuned.gamma) == (10.0, "centroid", 0.05)
    assert (default.lambda_, default.peak, default.beta) == (
        base.loss.lambda_,
        base.loss.peak,
        base.loss.beta,
    )
    assert (original.lambda_, original.peak, original.beta, original.gamma) == (1.0, "argmax", 4.0, 0.0)
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


def _point(study, method, accuracy, instability, tracking=0.6, parts=(), spread=0.0, seed=0, size=(14, 14)):
    record = _record(method, seed, accuracy=accuracy, instability=instability)
    jittered = record["evaluation"]["explainability"]["jittered"]
    jittered["translation_tracking"]["mean"] = tracking
    jittered["part_iou"]["parts_covered"] = list(parts)
    jittered["part_coverage"] = {"entropy_bits": spread, "channels_per_part": {p: 5 for p in parts}}
    jittered["map_size"] = list(size)
    return {**record, "study": study, "split": "FaceParts validation"}


def test_select_setting_ranks_by_aims_then_face_parts_and_asks_for_seeds_before_choosing():
    from ecl.results import select_setting

    records = [_point("faceparts-val", "baseline", 0.90 + 0.01 * (s - 1), 0.10, seed=s) for s in range(3)]
    records.append(_point("search: baseline at layer2", "baseline", 0.90, 0.20, size=(28, 28)))
    eyes = ("left_eye", "nose", "mouth")
    points = {  # aims: instability <= 0.075 (0.15 at layer2), tracking > 0.6, 3 face parts with an eye
        "lambda=10 argmax": (0.80, 0.03, 0.9, eyes, 1.5, (14, 14)),  # everything, but accuracy too low
        "lambda=10 centroid": (0.90, 0.03, 0.9, ("nose", "hair"), 0.0, (14, 14)),  # 2 aims, 1 face part
        "lambda=10 subcell": (0.89, 0.07, 0.9, eyes, 0.9, (14, 14)),  # all 3 aims
        "lambda=10 centroid beta=8": (0.90, 0.06, 0.7, ("nose", "mouth"), 1.0, (14, 14)),  # 2 aims, 2 parts
        "layer2 lambda=10 subcell beta=8": (
            0.90,
            0.14,
            0.9,
            eyes,
            1.2,
            (28, 28),
        ),  # 3 aims vs layer2 baseline
    }
    for name, (accuracy, instability, tracking, parts, spread, size) in points.items():
        records.append(
            _point(f"search: {name}", "ecloss", accuracy, instability, tracking, parts, spread, size=size)
        )
    chosen, to_confirm, table = select_setting(results_frame(records), points=[*points, "never run"])
    assert chosen is None and to_confirm == ["layer2 lambda=10 subcell beta=8", "lambda=10 subcell"]
    assert list(table["search point"]) == [
        "layer2 lambda=10 subcell beta=8",  # 3 aims, 3 face parts, the larger spread
        "lambda=10 subcell",
        "lambda=10 centroid beta=8",
        "lambda=10 centroid",
        "lambda=10 argmax",  # does not qualify
    ]
    assert table.loc[0, "reference instability"] == 0.20 and not table.loc[4, "qualifies"]
    # With two more seeds the best point is chosen.
    for seed in (1, 2):
        records.append(_point("search: layer2 lambda=10 subcell beta=8", "ecloss", 0.9, 0.14, 0.9, eyes, 1.2,
                              seed=seed, size=(28, 28)))  # fmt: skip
    chosen, to_confirm, table = select_setting(results_frame(records), points=list(points))
    assert chosen == "layer2 lambda=10 subcell beta=8" and to_confirm == [] and table["chosen"].sum() == 1
    assert select_setting(results_frame([]), points=list(points))[:2] == (None, [])


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
        lambda name, study, method, seed, *rest, **kwargs: calls.append((name, method, seed)) or {},
    )
    monkeypatch.setattr(reproduce, "_save_result", lambda path, record: None)
    reproduce.run_grid(studies=["faceparts"], methods=["baseline"], results_dir=tmp_path, echo=lambda _: None)
    reproduce.run_grid(
        studies=["ablations"], ablations=["lambda=10"], results_dir=tmp_path, echo=lambda _: None
    )
    reproduce.run_grid(
        studies=["search"], points=["baseline at layer2"], results_dir=tmp_path, echo=lambda _: None
    )
    assert calls == [
        ("faceparts", "baseline", 0),
        ("faceparts", "baseline", 1),
        ("faceparts", "baseline", 2),
        ("ablation: lambda=10", "ecloss", 0),
        ("search: baseline at layer2", "baseline", 0),
    ]


def test_another_profile_gets_its_own_files_and_rows(tmp_path):
    assert result_path(tmp_path, "faceparts", "ecloss", 0, "full").name == "faceparts-ecloss-seed0-full.json"
    result_path(tmp_path, "faceparts", "ecloss", 0).write_text(json.dumps(_record("ecloss", 0)))
    result_path(tmp_path, "faceparts", "ecloss", 0, "full").write_text(
        json.dumps({**_record("ecloss", 0, accuracy=0.99), "profile": "full"})
    )
    frame = results_frame(load_results(tmp_path))
    assert sorted(frame["study"]) == ["faceparts", "faceparts (full)"]


@pytest.mark.slow
def test_reproduce_gives_the_committed_numbers_from_scratch(tmp_path):
    """One committed run, trained and measured again from nothing: the numbers must be the same to the bit."""
    from ecl.reproduce import run_grid

    committed = json.loads((REPO / "book" / "results" / "faceparts-ecloss-seed0.json").read_text())
    run_grid(studies=["faceparts"], methods=["ecloss"], seeds=[0], runs_root=tmp_path / "runs",
             results_dir=tmp_path / "results", echo=lambda _: None)  # fmt: skip
    again = json.loads((tmp_path / "results" / "faceparts-ecloss-seed0.json").read_text())
    assert again["config"] == committed["config"]
    assert again["train"]["final_loss"] == committed["train"]["final_loss"]
    assert again["evaluation"] == committed["evaluation"]


# ------------------------------------------------------------------------------ the explanation study
#: The FaceParts grid preset shrunk to a two-step run on 32 px faces.
EXPLAIN_TINY = ["data.image_size=32", "data.num_identities=8", "data.images_per_identity=4", "optim.epochs=1",
                "optim.batch_size=16", "optim.warmup_steps=1", "model.embedding_dim=32", "run.progress=false",
                "run.device=cpu"]  # fmt: skip

#: Sizes small enough for a test: 5 part-swap trials and 2 mated pairs on 4 identities.
EXPLAIN_TINY_SIZES = dict(identities=4, images_per_identity=3, trials=5, references=1, stride=4,
                          faceparts_pairs=2, lfw_pairs=2, steps=4, random=1,
                          lfw_reference_images=8)  # fmt: skip


def test_explain_study_writes_one_file_per_model_and_seed_and_reuses_them(tmp_path, monkeypatch):
    import ecl.train
    from ecl.experiments import EXPLAIN_SCHEMA, EXPLAIN_SIZES
    from ecl.pair_explain import MAP_METHODS
    from ecl.pair_scores import GAME_METHODS
    from ecl.reproduce import run_grid
    from ecl.results import load_explain_results

    monkeypatch.setenv("ECL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(EXPLAIN_SIZES, "quick", EXPLAIN_TINY_SIZES)
    said = []
    options = dict(studies=["explain"], methods=["ecloss"], seeds=[0], runs_root=tmp_path / "runs",
                   results_dir=tmp_path / "results", overrides=EXPLAIN_TINY, echo=said.append)  # fmt: skip
    written = run_grid(**options)
    assert [p.name for p in written] == ["explain-faceparts-ecloss-seed0.json"]
    assert "no lfw/" in said[0]
    record = json.loads(written[0].read_text())
    assert record["schema"] == EXPLAIN_SCHEMA and record["study"] == "explain-faceparts"
    assert (record["method"], record["seed"], record["split"]) == ("ecloss", 0, "FaceParts test")
    assert record["config"]["data"]["image_size"] == 32 and record["sizes"] == EXPLAIN_TINY_SIZES
    assert {"git_commit", "versions", "created", "run", "pairs", "channels_per_part"} <= set(record)
    assert set(record["part_swap"]["methods"]) == set(GAME_METHODS) and record["part_swap"]["num_trials"] == 5
    assert record["game"]["num_trials"] == 5 and "top1" in record["game"]["saliency"]
    # the game and the inpainting game play the same trials: the breakdown names the same parts
    assert record["part_swap"]["methods"]["breakdown"]["top1"] == record["game"]["breakdown"]["top1"]
    curves = record["curves"]
    assert set(curves["methods"]) == set(MAP_METHODS) and curves["num_pairs"] == 2 and curves["steps"] == 4
    assert set(curves["random"]) == {"deletion_auc", "insertion_auc"}
    assert [r["method"] for r in load_explain_results(tmp_path / "results")] == ["ecloss"]
    # Kept without --redo: nothing is trained or scored again.
    monkeypatch.setattr(ecl.train, "load_or_train", lambda *a, **k: pytest.fail("trained again"))
    before = written[0].stat().st_mtime_ns
    assert run_grid(**options) == written and written[0].stat().st_mtime_ns == before
    assert any(line.strip().startswith("kept") for line in said)


def test_explain_study_is_dispatched_with_its_models_and_three_seeds(tmp_path, monkeypatch):
    import ecl.reproduce as reproduce

    calls, run_explain = [], reproduce.run_explain
    monkeypatch.setattr(reproduce, "run_explain", lambda *args, **kwargs: calls.append(args) or [])
    reproduce.run_grid(studies=["explain"], results_dir=tmp_path, echo=lambda _: None)
    reproduce.run_grid(studies=["explain"], methods=["ecloss"], seeds=[1], results_dir=tmp_path,
                       echo=lambda _: None)  # fmt: skip
    assert calls == [("quick", (0, 1, 2), ("baseline", "ecloss")), ("quick", [1], ["ecloss"])]
    with pytest.raises(ValueError, match="own layer"):
        run_explain(methods=["baseline-layer3"], results_dir=tmp_path, echo=lambda _: None)


def test_explain_lfw_scores_the_curves_on_view1_test_pairs(shared_data, monkeypatch):
    """The LFW half of the study on the real View-1 lists, with an untrained tiny model."""
    from ecl.experiments import EXPLAIN_SIZES, PROFILES
    from ecl.models import build_model
    from ecl.reproduce import _explain_data, _explain_scores, study_config

    config = study_config("lfw", PROFILES["quick"]["lfw"], "ecloss", 0, shared_data, ["data.image_size=32"])
    assert config.data.root == str(shared_data / "lfw")
    data = _explain_data("lfw", config, EXPLAIN_TINY_SIZES)
    assert data["pairs"][0].shape == (2, 3, 32, 32) and "pairsDevTest" in data["pairs_note"]
    torch.manual_seed(0)
    model = build_model(config, num_classes=10)[0].eval()
    out = _explain_scores(model, data, EXPLAIN_TINY_SIZES, 0, "cpu")
    assert "part_swap" not in out and out["curves"]["num_pairs"] == 2
    assert EXPLAIN_SIZES["quick"]["lfw_pairs"] > 2  # the test's sizes did not leak into the profile


def _explain(data, model, seed, top1=0.5, saliency=0.6, deletion=0.2, insertion=0.6, random=(0.3, 0.4)):
    """A constructed explanation-study record with the numbers the summary reads."""
    from ecl.experiments import EXPLAIN_SCHEMA

    maps = {m: {"deletion_auc": deletion, "insertion_auc": insertion, "deletion_beats_random": 1.0,
                "insertion_beats_random": 0.5} for m in ("gradcam", "shapley")}  # fmt: skip
    curves = {"methods": maps, "random": {"deletion_auc": random[0], "insertion_auc": random[1]}}
    record = {"schema": EXPLAIN_SCHEMA, "study": f"explain-{data}", "data": data, "method": model,
              "seed": seed, "profile": "quick", "split": "FaceParts test", "config": {}, "versions": {},
              "curves": curves}  # fmt: skip
    if data == "faceparts":
        record["game"] = {"saliency": {"top1": saliency}, "breakdown": {"top1": top1}}
        record["part_swap"] = {"valid_trials": 10, "methods": {
            "breakdown": {"top1": top1, "nonmate_rate": 0.5, "iou": 0.4},
            "gradcam": {"nonmate_rate": 0.25, "iou": 0.1},
            "random": {"nonmate_rate": 0.0, "iou": 0.02}}}  # fmt: skip
    return record


def test_explain_summary_gives_means_over_seeds_and_the_aims_verdicts(tmp_path):
    from ecl.results import explain_aims, explain_summary, explain_table, load_explain_results

    records = [
        _explain("faceparts", "ecloss", 0, top1=0.5, saliency=0.4, deletion=0.2),
        _explain("faceparts", "ecloss", 1, top1=0.7, saliency=0.5, deletion=0.4),
        _explain("faceparts", "baseline", 0, top1=0.2),
        _explain("lfw", "ecloss", 0, deletion=0.5, insertion=0.5),
        _explain("lfw", "ecloss", 1, deletion=0.3, insertion=0.3),
    ]
    summary = explain_summary(records).set_index(["data", "model", "method", "score"])
    row = summary.loc[("faceparts", "ecloss", "breakdown", "top-1")]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(0.1414214) and row["seeds"] == 2
    assert summary.loc[("faceparts", "ecloss", "gradcam", "top-1"), "mean"] == pytest.approx(0.45)
    assert summary.loc[("faceparts", "ecloss", "random", "deletion AUC"), "mean"] == pytest.approx(0.3)
    assert np.isnan(summary.loc[("faceparts", "baseline", "breakdown", "top-1"), "std"])
    table = explain_table(records)
    assert table.loc[("faceparts", "ecloss", "breakdown"), "top-1"] == "0.600 ± 0.141"
    assert table.loc[("faceparts", "ecloss", "shapley"), "top-1"] == "n/a"
    assert table.loc[("faceparts", "baseline", "breakdown"), "seeds"] == 1
    assert list(table.loc[("faceparts", "ecloss")].index[:2]) == ["breakdown", "shapley"]
    aims = explain_aims(records)
    assert aims["met"].tolist() == [True, True, False, True, False, False]
    first = aims.loc["part breakdown top-1 >= 0.5"]
    assert (first["value"], first["reference"], first["seeds"]) == (pytest.approx(0.6), 0.5, 2)
    assert aims.loc["deletion: part breakdown beats random order (faceparts)", "value"] == pytest.approx(0.3)
    # without LFW results the LFW aims are undecided, not failed
    assert explain_aims(records[:3])["met"].tolist()[-2:] == [None, None]
    # written to files: read back by their own reader, never by the grid's
    for record in records:
        name = f"{record['study']}-{record['method']}-seed{record['seed']}.json"
        (tmp_path / name).write_text(json.dumps(record))
    result_path(tmp_path, "faceparts", "ecloss", 0).write_text(json.dumps(_record("ecloss", 0)))
    assert len(load_explain_results(tmp_path)) == 5
    assert [r["study"] for r in load_results(tmp_path)] == ["faceparts"]


def test_summary_cli_prints_the_explain_table_and_aims(tmp_path, capsys):
    from ecl.cli import main

    for seed in range(2):
        (tmp_path / f"explain-faceparts-ecloss-seed{seed}.json").write_text(
            json.dumps(_explain("faceparts", "ecloss", seed))
        )
    assert main(["reproduce", "--summary", "--studies", "explain", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| faceparts | ecloss | breakdown | 0.500 ± 0.000 |" in out
    assert "| part breakdown top-1 >= 0.5 | faceparts | 0.5 | 0.5 | 2 | True |" in out
    assert main(["reproduce", "--summary", "--studies", "explain", "--results", str(tmp_path / "x")]) == 1

"""What the book compares: the methods, the studies of each profile, the ablations and the seeds.

:func:`method_config` turns one preset into the compared methods with everything else (backbone, target
layer, schedule, data) held fixed, so that differences come from the regulariser alone. Running them is
:mod:`ecl.reproduce`; reading their results is :mod:`ecl.results`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ecl.config import ExperimentConfig, apply_overrides

#: The reconstruction's original ECLoss setting (METHOD section 4 as first written), spelled out so that it
#: stays this setting whatever the presets' defaults become. It ran on the 14 x 14 map (``layer3`` of the
#: presets' backbones at 112 px).
ECLOSS_ORIGINAL: tuple[str, ...] = (
    "loss.method=ecloss",
    "loss.lambda=1",
    "loss.beta=4",
    "loss.peak=argmax",
    "loss.gamma=0",
    "loss.consistency=0",
)

#: The preset of the validation search and of the earlier test screening, frozen as they ran: the grid
#: preset with the original setting on the 14 x 14 map.
SEARCH_PRESET = "configs/faceparts-search.yaml"


#: The methods compared, as overrides of a preset. ``ecloss`` keeps the preset's ECLoss setting, which is
#: the library's default (chosen on the FaceParts validation split). ``ecloss-original`` is the setting
#: METHOD section 4 first wrote down (lambda = 1, beta = 4, argmax peaks, on the 14 x 14 map: ``layer3`` of
#: the presets' backbones), and ``ecloss-tuned`` the setting an earlier search picked by screening the
#: FaceParts *test* split (kept as a record, not as a valid choice, METHOD section 9), on that map too; both
#: are compared with the baseline measured at that layer (``baseline-layer3``: the baseline's own runs,
#: measured at ``layer3``). SAD's gamma is a choice (the specification gives 0.01-0.1 as the range to try).
METHODS: dict[str, tuple[str, ...]] = {
    "baseline": ("loss.method=none",),
    "ecloss": ("loss.method=ecloss",),
    "icnn": ("loss.method=icnn",),
    "sad": ("loss.method=sad", "loss.gamma=0.1"),
    "ecloss-original": (*ECLOSS_ORIGINAL, "model.target_layer=layer3"),
    "ecloss-tuned": (
        "loss.method=ecloss",
        "loss.lambda=10",
        "loss.beta=4",
        "loss.peak=centroid",
        "loss.gamma=0.05",
        "loss.consistency=0",
        "model.target_layer=layer3",
    ),
    "baseline-layer3": ("loss.method=none",),
}

#: Methods measured at another target layer than the one they train with (the run is the same).
MEASURE_LAYER: dict[str, str] = {"baseline-layer3": "layer3"}

#: The baseline each method is compared with (the baseline trained and measured alike).
REFERENCE: dict[str, str] = {"ecloss-original": "baseline-layer3", "ecloss-tuned": "baseline-layer3"}


_LABELS = {
    "baseline": "baseline (ArcFace)",
    "ecloss": "ECLoss (default: lambda=10, beta=8, anchored peaks, 28 x 28 map)",
    "icnn": "ICNN filter loss",
    "sad": "SAD (gamma=0.1)",
    "ecloss-original": "ECLoss (original setting: lambda=1, beta=4, argmax, 14 x 14 map)",
    "ecloss-tuned": "ECLoss (lambda=10, centroid, gamma=0.05, 14 x 14 map: screened on the test split)",
    "baseline-layer3": "baseline measured at the 14 x 14 map",
}


def method_label(method: str) -> str:
    """How the book and the README name a method of :data:`METHODS`."""
    return _LABELS.get(method, method)


def method_config(base: ExperimentConfig, method: str, seed: int | None = None) -> ExperimentConfig:
    """The preset ``base`` trained with ``method``, optionally with another seed.

    Args:
        base: A preset, e.g. ``ecl.config.load_config("configs/faceparts-quick.yaml")``.
        method: One of :data:`METHODS` (``baseline``, ``ecloss``, ``icnn``, ``sad``).
        seed: Run seed (weights, data order); the data set itself keeps the preset's seed.

    Returns:
        A new config whose ``run.name`` is ``<preset name>-<method>[-seed<k>]``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {sorted(METHODS)}")
    overrides = list(METHODS[method])
    name = f"{base.run.name}-{method}"
    if seed is not None:
        overrides.append(f"run.seed={int(seed)}")
        name += f"-seed{int(seed)}"
    overrides.append(f"run.name={name}")
    return apply_overrides(base, overrides)


#: The named hypotheses the validation search tests, each with the question it asks (the book's "anatomy
#: of the collapse" answers them one by one).
HYPOTHESES: dict[str, str] = {
    "reference": "Where do the baseline and the original ECLoss stand on the validation split?",
    "weight": (
        "At lambda = 1 the matching term is barely optimised (it stays near 0.49 while the ArcFace loss "
        "falls to 0.01): does lambda = 10 alone make part detectors?"
    ),
    "peak rule": (
        "Rounding the centroid pulls a blob at the map's border one cell inward, so blobs drift to the "
        "centre of the map (the nose). Does an unbiased sub-cell peak keep the detectors and spread them?"
    ),
    "template size": (
        "With beta = 4 the positive template reaches 112 / 4 = 28 px from its peak, larger than any part "
        "(an eye is about 8 x 4 px, nose and mouth about 13 px). Does a part-sized template (beta 8 or 12: "
        "14 or 9 px) put blobs on parts?"
    ),
    "target resolution": (
        "A 14 x 14 map has 8 px cells, one per eye. Does a 28 x 28 map (layer2, 4 px cells), compared "
        "with the baseline measured at the same layer, give parts channels of their own?"
    ),
    "own place": (
        "The centroid rule makes detectors by pulling every channel to one shared place (the centre of "
        "mass, on the nose), argmax and sub-cell peaks make none and pull nowhere. Does a peak at each "
        "channel's own usual place on the face (the anchored rule) keep the consistency and spread it over "
        "the parts, alone, with a part-sized template, with the diversity term (which pushes the channels "
        "of one image apart), or on the 28 x 28 map?"
    ),
    "consistency": (
        "L_match lets a channel put its blob on a different part in every image. Does a term that asks a "
        "channel to fire where the layer sees what it usually sees at its peak (L_cons) keep it on one part?"
    ),
    "capacity": (
        "test_resnet has 0.4 M parameters. Does a larger backbone (timm's resnet10t, 4.9 M), trained for the "
        "same wall-clock time (96 steps, as long as the grid's 384 steps of test_resnet on this CPU), "
        "behave otherwise?"
    ),
    "training length": (
        "Every model so far trained for 384 steps. Do 4 and 16 times as many steps change the verdict, "
        "for the baseline, the original setting and the chosen one alike?"
    ),
}


@dataclass(frozen=True)
class SearchPoint:
    """One setting of the validation search.

    Attributes:
        hypothesis: the name in :data:`HYPOTHESES` this point tests.
        overrides: config overrides applied to the preset; ECLoss points spell out every ECLoss
            parameter, so that a point means the same setting whatever the preset's defaults are.
        method: the :data:`METHODS` entry trained (``ecloss``, or ``baseline`` to measure the baseline
            at another layer).
        measure_layer: measure the explainability numbers at this target layer instead of the trained
            one (the baseline at the layer a point moved to).
        reference: the search point that is this point's baseline (trained and measured alike: the same
            layer, the same length); ``None`` for the baseline of the ``faceparts-val`` study.
    """

    hypothesis: str
    overrides: tuple[str, ...]
    method: str = "ecloss"
    measure_layer: str | None = None
    reference: str | None = None


def _ecloss(lam: float = 10, beta: float = 4, peak: str = "argmax", gamma: float = 0, *extra: str):
    return ("loss.method=ecloss", f"loss.lambda={lam:g}", f"loss.beta={beta:g}", f"loss.peak={peak}",
            f"loss.gamma={gamma:g}", "loss.consistency=0", *extra)  # fmt: skip


#: The points of the validation search, each one seed first (the selection rule, :func:`ecl.results.
#: select_setting`, says which get more). All are the FaceParts grid preset with these overrides,
#: measured on the FaceParts validation split.
SEARCH_POINTS: dict[str, SearchPoint] = {
    "original (lambda=1 beta=4 argmax)": SearchPoint("reference", ECLOSS_ORIGINAL),
    "lambda=10 argmax": SearchPoint("weight", _ecloss(10, 4, "argmax")),
    "lambda=10 centroid": SearchPoint("peak rule", _ecloss(10, 4, "centroid")),
    "lambda=10 subcell": SearchPoint("peak rule", _ecloss(10, 4, "subcell")),
    "lambda=10 centroid beta=8": SearchPoint("template size", _ecloss(10, 8, "centroid")),
    "lambda=10 subcell beta=8": SearchPoint("template size", _ecloss(10, 8, "subcell")),
    "lambda=10 centroid beta=12": SearchPoint("template size", _ecloss(10, 12, "centroid")),
    "lambda=10 subcell beta=12": SearchPoint("template size", _ecloss(10, 12, "subcell")),
    "baseline at layer2": SearchPoint("target resolution", (), method="baseline", measure_layer="layer2"),
    "layer2 lambda=10 centroid beta=4": SearchPoint(
        "target resolution",
        _ecloss(10, 4, "centroid", 0, "model.target_layer=layer2"),
        reference="baseline at layer2",
    ),
    "layer2 lambda=10 centroid beta=8": SearchPoint(
        "target resolution",
        _ecloss(10, 8, "centroid", 0, "model.target_layer=layer2"),
        reference="baseline at layer2",
    ),
    "layer2 lambda=10 subcell beta=8": SearchPoint(
        "target resolution",
        _ecloss(10, 8, "subcell", 0, "model.target_layer=layer2"),
        reference="baseline at layer2",
    ),
    "layer2 lambda=10 subcell beta=12": SearchPoint(
        "target resolution",
        _ecloss(10, 12, "subcell", 0, "model.target_layer=layer2"),
        reference="baseline at layer2",
    ),
    "lambda=10 anchored": SearchPoint("own place", _ecloss(10, 4, "anchored")),
    "lambda=10 anchored beta=8": SearchPoint("own place", _ecloss(10, 8, "anchored")),
    "lambda=10 anchored beta=12": SearchPoint("own place", _ecloss(10, 12, "anchored")),
    "lambda=10 anchored gamma=0.1": SearchPoint("own place", _ecloss(10, 4, "anchored", 0.1)),
    "lambda=10 anchored beta=8 gamma=0.1": SearchPoint("own place", _ecloss(10, 8, "anchored", 0.1)),
    "layer2 lambda=10 anchored beta=8": SearchPoint(
        "own place",
        _ecloss(10, 8, "anchored", 0, "model.target_layer=layer2"),
        reference="baseline at layer2",
    ),
    "lambda=10 argmax consistency=1": SearchPoint(
        "consistency", _ecloss(10, 4, "argmax", 0, "loss.consistency=1")
    ),
    "lambda=10 subcell beta=8 consistency=1": SearchPoint(
        "consistency", _ecloss(10, 8, "subcell", 0, "loss.consistency=1")
    ),
    "resnet10t baseline (same time)": SearchPoint(
        "capacity", ("model.backbone=resnet10t", "optim.epochs=3"), method="baseline"
    ),
    "resnet10t original (same time)": SearchPoint(
        "capacity",
        (*ECLOSS_ORIGINAL, "model.backbone=resnet10t", "optim.epochs=3"),
        reference="resnet10t baseline (same time)",
    ),
    "resnet10t lambda=10 centroid (same time)": SearchPoint(
        "capacity",
        (*_ecloss(10, 4, "centroid"), "model.backbone=resnet10t", "optim.epochs=3"),
        reference="resnet10t baseline (same time)",
    ),
    "baseline 4x": SearchPoint("training length", ("optim.epochs=48",), method="baseline"),
    "original 4x": SearchPoint(
        "training length", (*ECLOSS_ORIGINAL, "optim.epochs=48"), reference="baseline 4x"
    ),
    # The baseline's weights do not depend on the target layer; this one names the layer as the run of
    # "baseline 4x" was first trained (null), so that run is measured here rather than trained again.
    "baseline 4x at layer2": SearchPoint(
        "training length",
        ("optim.epochs=48", "model.target_layer=null"),
        method="baseline",
        measure_layer="layer2",
    ),
    "chosen 4x": SearchPoint(
        "training length",
        _ecloss(10, 8, "anchored", 0, "model.target_layer=layer2", "optim.epochs=48"),
        reference="baseline 4x at layer2",
    ),
    "baseline 16x": SearchPoint("training length", ("optim.epochs=192",), method="baseline"),
    "baseline 16x at layer2": SearchPoint(
        "training length", ("optim.epochs=192",), method="baseline", measure_layer="layer2"
    ),
    "chosen 16x": SearchPoint(
        "training length",
        _ecloss(10, 8, "anchored", 0, "model.target_layer=layer2", "optim.epochs=192"),
        reference="baseline 16x at layer2",
    ),
    "original 16x": SearchPoint(
        "training length", (*ECLOSS_ORIGINAL, "optim.epochs=192"), reference="baseline 16x"
    ),
}


#: Version of the result files' layout; :func:`validate_result` checks it.
SCHEMA = "ecl-result/1"


REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Study:
    """One row of the grid: a preset, the data it is evaluated on, and where transfer is measured.

    Attributes:
        preset: Config file, relative to the repository root.
        evaluate: ``--data`` spec of the evaluation (``{root}`` is replaced by the data root).
        transfer: Further ``--data`` specs evaluated with the same models (explainability on data no
            model saw), e.g. CelebA crops for the LFW models.
        needs: Dataset folder that must exist under the data root (``None`` for built-in data).
    """

    preset: str
    evaluate: str
    transfer: tuple[str, ...] = ()
    needs: str | None = None


#: The earlier ablations and search, a *screening on the FaceParts test split* (kept as a record; no choice
#: is made on them, METHOD section 9): ECLoss on the FaceParts grid preset with the original setting
#: (:data:`ECLOSS_ORIGINAL`) and these overrides, one seed. Run with ``python -m ecl reproduce --studies
#: ablations``. The search that chooses is :data:`SEARCH_POINTS`, on the validation split.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "lambda=0.3": ("loss.lambda=0.3",),
    "lambda=10": ("loss.lambda=10",),
    "beta=2": ("loss.beta=2",),
    "beta=8": ("loss.beta=8",),
    "gamma=0.05": ("loss.gamma=0.05",),
    "peak=centroid": ("loss.peak=centroid",),
    "forward mask": ("model.forward_mask=true",),
    "target 7x7 (layer4)": ("model.target_layer=layer4",),
    "lambda=30": ("loss.lambda=30",),
    "lambda=10 beta=8": ("loss.lambda=10", "loss.beta=8"),
    "lambda=10 gamma=0.05": ("loss.lambda=10", "loss.gamma=0.05"),
    "lambda=10 centroid": ("loss.lambda=10", "loss.peak=centroid"),
    "lambda=10 beta=14": ("loss.lambda=10", "loss.beta=14"),
    "lambda=30 beta=8": ("loss.lambda=30", "loss.beta=8"),
    "lambda=10 centroid gamma=0.05": ("loss.lambda=10", "loss.peak=centroid", "loss.gamma=0.05"),
    "lambda=10 centroid gamma=0.5": ("loss.lambda=10", "loss.peak=centroid", "loss.gamma=0.5"),
    "lambda=10 centroid forward mask": ("loss.lambda=10", "loss.peak=centroid", "model.forward_mask=true"),
    "lambda=10 centroid 28x28 (layer2)": (
        "loss.lambda=10",
        "loss.peak=centroid",
        "model.target_layer=layer2",
    ),
    "lambda=10 centroid gamma=0.1": ("loss.lambda=10", "loss.peak=centroid", "loss.gamma=0.1"),
    "lambda=10 centroid gamma=0.2": ("loss.lambda=10", "loss.peak=centroid", "loss.gamma=0.2"),
}


#: The seeds of the grid and the game (the ablations' search points use the first alone).
SEEDS: tuple[int, ...] = (0, 1, 2)


#: The studies of each profile. ``quick`` is the CPU grid (minutes per run); ``full`` the GPU one.
PROFILES: dict[str, dict[str, Study]] = {
    "quick": {
        "faceparts": Study("configs/faceparts-grid.yaml", "faceparts"),
        "faceparts-val": Study(SEARCH_PRESET, "faceparts-val"),
        "lfw": Study(
            "configs/lfw-quick.yaml", "lfw:{root}/lfw", ("celeba:{root}/celeba_subset",), needs="lfw"
        ),
    },
    "full": {
        "faceparts": Study("configs/faceparts-full.yaml", "faceparts"),
        "faceparts-val": Study("configs/faceparts-full.yaml", "faceparts-val"),
        "lfw": Study(
            "configs/lfw-full.yaml", "lfw:{root}/lfw", ("celeba:{root}/celeba_subset",), needs="lfw"
        ),
    },
}


#: The preset of the book's chapters per profile: the CPU grid's (the chapters' models are the grid's seed-0
#: runs; the quick preset's 96 steps are too few for part detectors to form) and the GPU grid's.
BOOK_PRESETS: dict[str, str] = {"quick": "configs/faceparts-grid.yaml", "full": "configs/faceparts-full.yaml"}


#: What ``python -m ecl reproduce`` runs when no study is named: the confirmation on FaceParts test and LFW.
#: The validation studies (``faceparts-val``, ``search``) are named explicitly.
DEFAULT_STUDIES: tuple[str, ...] = ("faceparts", "lfw")


#: Sizes of the part-swap game and occlusion study per profile (as chapter 09 uses them).
GAME_SIZES = {
    "quick": dict(identities=50, images_per_identity=4, trials=100, pairs=400),
    "full": dict(identities=200, images_per_identity=5, trials=1000, pairs=2000),
}


#: The models the explanation study scores by default (``python -m ecl reproduce --studies explain``).
EXPLAIN_MODELS: tuple[str, ...] = ("baseline", "ecloss")

#: Version of the explanation study's result files (``explain-<data>-<method>-seed<k>.json``).
EXPLAIN_SCHEMA = "ecl-explain/1"

#: Sizes of the explanation study per profile, for one model (see :func:`ecl.reproduce.run_explain`):
#: ``identities`` x ``images_per_identity`` FaceParts test images per data set (as the game's,
#: :data:`GAME_SIZES`, so the part assignment and the ``trials`` part-swap trials are the game's);
#: ``references`` images per nonmate-rate gallery; ``stride`` of the 14 px occlusion windows (pixels);
#: ``faceparts_pairs`` and ``lfw_pairs`` mated pairs for the deletion and insertion curves (``steps``
#: steps, ``random`` random orders per pair); ``lfw_reference_images`` LFW View-1 train images (68
#: landmarks) on which the LFW models' channels are assigned to parts. The quick sizes take about three
#: minutes per model on one CPU thread for FaceParts and a minute and a half for LFW.
EXPLAIN_SIZES = {
    "quick": dict(identities=50, images_per_identity=4, trials=100, references=3, stride=14,
                  faceparts_pairs=24, lfw_pairs=24, steps=20, random=3, lfw_reference_images=256),
    "full": dict(identities=200, images_per_identity=5, trials=1000, references=4, stride=7,
                 faceparts_pairs=200, lfw_pairs=500, steps=20, random=3, lfw_reference_images=1000),
}  # fmt: skip


def result_path(results_dir: str | Path, study: str, method: str, seed: int, profile: str = "quick") -> Path:
    """Where the result of one run lives: ``<results_dir>/<study>-<method>-seed<k>.json``.

    Results of another profile than ``quick`` carry its name (``...-seed<k>-full.json``), so the GPU grid
    never overwrites the CPU one.
    """
    suffix = "" if profile == "quick" else f"-{profile}"
    return Path(results_dir) / f"{study}-{method}-seed{seed}{suffix}.json"


def ablation_slug(name: str) -> str:
    """File-name form of an ablation name: ``"target 7x7 (layer4)"`` -> ``"target-7x7-layer4"``."""
    return "-".join("".join(ch if ch.isalnum() or ch in ".=" else " " for ch in name).split())

"""Explaining a match as the field measures it: every method and score on constructed cases with a known
answer.

The reference model sees only fixed boxes of a 32 x 32 image, one per face part, laid on its 8 x 8
target grid: channel 3k + c is colour c inside part k's box, pooled to the grid, so a pixel outside
every box changes nothing and a chimera whose nose alone differs changes the nose channels only. The
reference faces paint each identity's colours into those boxes over shared per-image noise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ecl.attribution import PART_GROUPS, PartAssignment
from ecl.data.faceparts import PART_NAMES, image_to_tensor
from ecl.data.landmark_masks import LANDMARK_PART_NAMES
from ecl.pair_explain import MAP_METHODS, PAIR_METHODS, explain_pair_with, pair_map
from ecl.pair_methods import (
    FIVE_POINT_PART_NAMES,
    baseline_image,
    channel_shapley,
    join_part_masks,
    landmark_region_masks,
    occlusion_map,
    region_breakdown,
    region_similarity,
    xcos_grid,
    xcos_part_breakdown,
)
from ecl.pair_scores import (
    GAME_METHODS,
    deletion_insertion,
    pair_method_curves,
    part_swap_scores,
    perturbation_curve,
    region_iou,
    top_region,
)

SIZE, CELL = 32, 4
BOXES = {  # fine part -> (y0, y1, x0, x1), on the 4-px grid so that every target cell is pure
    "left_eye": (8, 12, 4, 12),
    "right_eye": (8, 12, 20, 28),
    "nose": (12, 20, 12, 20),
    "mouth": (20, 24, 8, 24),
    "hair": (0, 4, 0, 32),
}
GAME_PARTS = ("eyes", "nose", "mouth", "hair")


def box_masks() -> torch.Tensor:
    """bool (P, S, S) in ``PART_NAMES`` order (brows and skin empty)."""
    masks = torch.zeros(len(PART_NAMES), SIZE, SIZE, dtype=torch.bool)
    for name, (y0, y1, x0, x1) in BOXES.items():
        masks[PART_NAMES.index(name), y0:y1, x0:x1] = True
    return masks


class BoxChannels(nn.Module):
    """The target layer: channel 3k + c = colour c inside part k's box, average-pooled to 8 x 8."""

    def __init__(self):
        super().__init__()
        self.register_buffer("masks", box_masks().float())
        self.gain = nn.Parameter(torch.ones(()))  # makes the activations carry gradients

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        parts = (self.masks[None, :, None] * images[:, None]).reshape(b, -1, SIZE, SIZE)
        return F.avg_pool2d(parts, CELL) * self.gain


class BoxPartModel(nn.Module):
    """A ``FaceModel``-like model (``.backbone``, ``.target_layer``): embedding = the box colours, centred."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(BoxChannels())
        self.target_layer = "0"
        self.image_size = SIZE
        inside = F.avg_pool2d(
            box_masks().float()[:, None].repeat(1, 3, 1, 1).reshape(1, -1, SIZE, SIZE), CELL
        )
        self.register_buffer("inside", inside)

    def forward(self, images: torch.Tensor):
        activations = self.backbone(images)
        return (activations - 0.5 * self.inside).flatten(1), activations


class BoxFaces:
    """FaceParts' game interface (``raw``, ``render_chimera``) over box faces: identity colours in the
    boxes, per-image noise shared by an image and its chimeras, so that a chimera differs from its
    original in the swapped part's boxes only."""

    part_names = PART_NAMES

    def __init__(self, num_identities: int = 6, images_per_identity: int = 3):
        self.num_identities, self.images_per_identity = num_identities, images_per_identity
        rng = np.random.default_rng(3)
        self.colours = rng.uniform(0.05, 0.95, size=(num_identities, len(PART_NAMES), 3))

    def _draw(self, colours: np.ndarray, identity: int, image: int):
        noise = np.random.default_rng([identity, image]).normal(0, 0.03, size=(SIZE, SIZE, 3))
        picture = np.full((SIZE, SIZE, 3), 0.5) + noise
        labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
        for name, (y0, y1, x0, x1) in BOXES.items():
            k = PART_NAMES.index(name)
            picture[y0:y1, x0:x1] = colours[k] + noise[y0:y1, x0:x1]
            labels[y0:y1, x0:x1] = k + 1
        landmarks = np.array([[8, 10], [24, 10], [16, 16], [10, 22], [22, 22]], dtype=np.float32)
        return (np.clip(picture, 0, 1) * 255).round().astype(np.uint8), labels, landmarks, False

    def raw(self, index: int):
        identity, image = divmod(int(index), self.images_per_identity)
        return self._draw(self.colours[identity], identity, image)

    def render_chimera(self, identity_a: int, identity_b: int, part: str, image_index: int = 0):
        colours = self.colours[identity_a].copy()
        for fine in PART_GROUPS[part]:
            colours[PART_NAMES.index(fine)] = self.colours[identity_b, PART_NAMES.index(fine)]
        return self._draw(colours, identity_a, image_index)


def box_assignment() -> PartAssignment:
    return PartAssignment(
        part_names=PART_NAMES,
        assigned=np.repeat(np.arange(len(PART_NAMES)), 3),
        reference_peak=np.full(3 * len(PART_NAMES), 0.5),
        groups=PART_GROUPS,
    )


def nose_pair(faces: BoxFaces):
    original = image_to_tensor(faces.raw(0)[0])
    chimera = image_to_tensor(faces.render_chimera(0, 1, "nose")[0])
    return original, chimera


def nose_box() -> np.ndarray:
    return box_masks()[PART_NAMES.index("nose")].numpy()


@pytest.fixture(scope="module")
def faces():
    return BoxFaces()


@pytest.fixture(scope="module")
def model():
    return BoxPartModel().eval()


def cosine(model, a, b) -> float:
    with torch.no_grad():
        e = F.normalize(model(torch.stack([a, b]))[0], dim=1)
    return float(e[0] @ e[1])


# ---------------------------------------------------------------------------------- deletion / insertion
def test_a_perfect_map_beats_random_order_in_deletion_and_insertion(model, faces):
    a, b = image_to_tensor(faces.raw(0)[0]), image_to_tensor(faces.raw(1)[0])  # a mated pair
    perfect = box_masks().any(0).float()  # the only pixels the model sees
    curves = deletion_insertion(model, a, b, perfect, steps=10, num_random=3, seed=0)
    deletion, insertion = curves["deletion"], curves["insertion"]
    assert deletion.auc < deletion.random_auc - 0.05
    assert insertion.auc > insertion.random_auc + 0.02
    assert deletion.beats_random and insertion.beats_random
    # both ends are known: the pair itself, and the baseline against face b
    assert deletion.scores[0] == pytest.approx(cosine(model, a, b), abs=1e-5)
    assert insertion.scores[-1] == pytest.approx(cosine(model, a, b), abs=1e-5)
    assert deletion.scores[-1] == pytest.approx(insertion.scores[0], abs=1e-6)
    np.testing.assert_allclose(deletion.fractions, np.linspace(0, 1, 11), atol=1 / SIZE**2)  # whole pixels
    assert deletion.random_scores.shape == (3, 11)
    # once every box pixel is gone the curve is flat: the perfect order gets there first
    assert deletion.scores[4] == pytest.approx(deletion.scores[-1], abs=1e-5)
    json.dumps(deletion.to_dict())


def test_curves_take_maps_of_any_resolution_and_are_seeded(model, faces):
    original, chimera = nose_pair(faces)
    cells = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))
    first = perturbation_curve(model, original, chimera, cells, steps=4, num_random=2, seed=5, side="b")
    again = perturbation_curve(model, original, chimera, cells, steps=4, num_random=2, seed=5, side="b")
    other = perturbation_curve(model, original, chimera, cells, steps=4, num_random=2, seed=6, side="b")
    np.testing.assert_array_equal(first.scores, again.scores)
    np.testing.assert_array_equal(first.random_scores, again.random_scores)
    assert not np.array_equal(first.random_scores, other.random_scores)
    blurred = perturbation_curve(model, original, chimera, cells, steps=4, num_random=0, baseline="blur")
    assert blurred.random_auc is None and blurred.beats_random is None
    with pytest.raises(ValueError, match="mode"):
        perturbation_curve(model, original, chimera, cells, mode="erase")
    with pytest.raises(ValueError, match="side"):
        perturbation_curve(model, original, chimera, cells, side="c")
    with pytest.raises(ValueError, match="baseline"):
        perturbation_curve(model, original, chimera, cells, baseline="noise")


def test_baseline_images():
    image = torch.rand(3, SIZE, SIZE)
    mean = baseline_image(image, "mean")
    torch.testing.assert_close(mean[:, 0, 0], image.mean((1, 2)))
    assert mean.std((1, 2)).max() < 1e-6
    blur = baseline_image(image, "blur")
    assert blur.shape == image.shape and blur.std() < image.std()
    assert baseline_image(image, "zero").abs().max() == 0
    torch.testing.assert_close(baseline_image(image, torch.ones(3, SIZE, SIZE)), torch.ones(3, SIZE, SIZE))


def test_pair_method_curves_summarise_every_method(model, faces):
    a = torch.stack([image_to_tensor(faces.raw(0)[0]), image_to_tensor(faces.raw(3)[0])])
    b = torch.stack([image_to_tensor(faces.raw(1)[0]), image_to_tensor(faces.raw(4)[0])])
    out = pair_method_curves(
        model,
        a,
        b,
        methods=("xcos", "occlusion", "shapley"),
        assignment=box_assignment(),
        steps=4,
        num_random=1,
    )
    assert out["num_pairs"] == 2 and set(out["methods"]) == {"xcos", "occlusion", "shapley"}
    row = out["methods"]["occlusion"]
    assert {"deletion_auc", "deletion_random_auc", "deletion_beats_random", "insertion_auc_std"} <= set(row)
    json.dumps(out)
    with pytest.raises(ValueError, match="unknown method"):
        pair_method_curves(model, a, b, methods=("lime",))


def test_pair_method_curves_share_one_set_of_random_orders_and_pass_map_options(model, faces):
    """The random orders do not depend on the map: evaluated once per pair, they give every method the
    numbers it would get with random orders of its own, and the areas of each map are unchanged."""
    a = torch.stack([image_to_tensor(faces.raw(0)[0]), image_to_tensor(faces.raw(3)[0])])
    b = torch.stack([image_to_tensor(faces.raw(1)[0]), image_to_tensor(faces.raw(4)[0])])
    options = {"occlusion": {"patch": 4, "stride": 4}}
    out = pair_method_curves(model, a, b, methods=("xcos", "occlusion"), steps=4, num_random=2, seed=7,
                             map_options=options)  # fmt: skip
    for method in ("xcos", "occlusion"):
        alone = {mode: [] for mode in ("deletion", "insertion")}
        for i in range(2):
            saliency = pair_map(model, a[i], b[i], method, **options.get(method, {}))
            for mode, curve in deletion_insertion(model, a[i], b[i], saliency, steps=4, num_random=2,
                                                  seed=7 + i).items():  # fmt: skip
                alone[mode].append((curve.auc, curve.random_auc, float(curve.beats_random)))
        for mode, rows in alone.items():
            auc, random_auc, beats = np.mean(rows, axis=0)
            row = out["methods"][method]
            assert row[f"{mode}_auc"] == pytest.approx(auc, abs=1e-12)
            assert row[f"{mode}_random_auc"] == pytest.approx(random_auc, abs=1e-12)
            assert row[f"{mode}_beats_random"] == pytest.approx(beats)
            assert out["random"][f"{mode}_auc"] == pytest.approx(random_auc, abs=1e-12)
    without = pair_method_curves(model, a, b, methods=("xcos",), steps=4, num_random=0)
    assert without["random"] == {"deletion_auc": None, "insertion_auc": None}
    assert without["methods"]["xcos"]["deletion_beats_random"] == 0.0


# ------------------------------------------------------------------------------------------- occlusion
def test_occlusion_of_both_faces_finds_the_only_part_that_differs(model, faces):
    original, chimera = nose_pair(faces)
    both = occlusion_map(model, original, chimera, patch=4, stride=2, side="both")
    rise = -both.pixel  # covering the difference in both faces makes them more alike
    region = top_region(rise, int(nose_box().sum()), (SIZE, SIZE), np.random.default_rng(0))
    assert region_iou(region, nose_box()) > 0.5
    y, x = np.unravel_index(rise.argmax(), rise.shape)
    assert nose_box()[y, x]
    assert both.similarity == pytest.approx(cosine(model, original, chimera), abs=1e-6)


def test_occlusion_of_one_face_drops_only_where_the_model_looks(model, faces):
    a, b = image_to_tensor(faces.raw(0)[0]), image_to_tensor(faces.raw(1)[0])
    result = occlusion_map(model, a, b, patch=4, stride=4, side="a")
    assert result.drop.shape == (8, 8) and result.pixel.shape == (SIZE, SIZE)
    seen = F.avg_pool2d(box_masks().any(0).float()[None, None], 4)[0, 0].numpy() > 0
    np.testing.assert_allclose(result.drop[~seen], 0.0, atol=1e-6)  # pixels outside every box: no effect
    assert np.abs(result.drop[seen]).max() > 1e-3
    assert occlusion_map(model, a, b).patch == SIZE // 8  # default patch: S / 8, stride half of it
    with pytest.raises(ValueError, match="side"):
        occlusion_map(model, a, b, side="left")
    json.dumps(result.to_dict())


# ------------------------------------------------------------------------------------------------ xCos
def test_xcos_weighted_grid_sums_to_its_score_and_bounds_the_flat_cosine():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 5, 4, 4, generator=generator), torch.rand(2, 5, 4, 4, generator=generator)
    grid = xcos_grid(a, b)
    torch.testing.assert_close(grid.attention.sum((1, 2)), torch.ones(2))
    torch.testing.assert_close(grid.contribution.sum((1, 2)), grid.score)
    torch.testing.assert_close(grid.difference.sum((1, 2)), 1 - grid.score)
    torch.testing.assert_close(grid.cosine[1, 2, 3], F.cosine_similarity(a[1, :, 2, 3], b[1, :, 2, 3], dim=0))
    # the stated relation: flat cosine = kappa * score, kappa = sum |f_a||f_b| / (|F_a||F_b|) in (0, 1]
    kappa = (a.norm(dim=1) * b.norm(dim=1)).sum((1, 2)) / (
        a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1)
    )
    torch.testing.assert_close(grid.flat_cosine, kappa * grid.score)
    assert (kappa <= 1 + 1e-6).all()
    same = xcos_grid(a, 2 * a)  # proportional maps: every local cosine is 1, kappa is 1
    torch.testing.assert_close(same.score, torch.ones(2))
    torch.testing.assert_close(same.flat_cosine, torch.ones(2))
    uniform = xcos_grid(a, b, attention="uniform")
    torch.testing.assert_close(uniform.score, grid.cosine.mean((1, 2)))
    with pytest.raises(ValueError, match="attention"):
        xcos_grid(a, b, attention="learned")


def test_xcos_pooled_by_part_masks_adds_up_to_its_score(model, faces):
    original, chimera = nose_pair(faces)
    with torch.no_grad():
        activations = model(torch.stack([original, chimera]))[1]
    grid = xcos_grid(activations[:1], activations[1:])
    masks = box_masks()
    pooled = xcos_part_breakdown(grid, PART_NAMES, masks, masks, overall=cosine(model, original, chimera))
    assert abs(pooled.residual) < 1e-6
    assert sum(pooled.parts.values()) + pooled.rest == pytest.approx(float(grid.score[0]), abs=1e-6)
    assert pooled.rest == pytest.approx(0.0, abs=1e-6)  # the model has features inside the boxes only
    means = {p: pooled.parts[p] / pooled.weights[p] for p in ("eyes", "nose", "mouth", "hair")}
    assert min(means, key=means.get) == "nose"
    assert means["eyes"] == pytest.approx(1.0, abs=1e-6)
    # the difference map lies on the nose cells only
    nose_cells = F.avg_pool2d(torch.from_numpy(nose_box()).float()[None, None], CELL)[0, 0] > 0
    assert grid.difference[0][~nose_cells].abs().max() < 1e-6 < grid.difference[0][nose_cells].max()
    json.dumps(pooled.to_dict())


# ------------------------------------------------------------------------------ additive channel parts
def test_channel_shapley_adds_up_to_the_embedding_cosine():
    from ecl.models import create_face_model

    torch.manual_seed(0)
    face_model = create_face_model("test_resnet", embedding_dim=16, image_size=SIZE).eval()
    c = face_model.num_channels
    assigned = np.arange(c) % len(PART_NAMES)
    assigned[::5] = -1  # some channels belong to no part: a player of their own, inside rest
    assignment = PartAssignment(PART_NAMES, assigned, np.ones(c), PART_GROUPS)
    generator = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, SIZE, SIZE, generator=generator), torch.rand(3, SIZE, SIZE, generator=generator)
    breakdown = channel_shapley(face_model, a, b, assignment)
    assert sum(breakdown.parts.values()) + breakdown.rest == pytest.approx(breakdown.total, abs=1e-5)
    assert breakdown.total == pytest.approx(cosine(face_model, a, b), abs=1e-5)
    assert set(breakdown.terms) == {"baseline", "unassigned"}
    assert breakdown.rest == pytest.approx(sum(breakdown.terms.values()), abs=1e-12)
    assert list(breakdown.parts) == list(assignment.group_names)
    assert breakdown.text().endswith(f"= {breakdown.total:.3f}") and " + rest " in breakdown.text()
    json.dumps(breakdown.to_dict())


def test_channel_shapley_gives_absent_parts_nothing(model, faces):
    original, chimera = nose_pair(faces)
    breakdown = channel_shapley(model, original, chimera, box_assignment())
    assert breakdown.parts["brows"] == 0.0 and breakdown.parts["skin"] == 0.0  # channels zero in both
    assert "unassigned" not in breakdown.terms
    assert abs(breakdown.residual) < 1e-9
    assert breakdown.total == pytest.approx(cosine(model, original, chimera), abs=1e-6)
    with pytest.raises(ValueError, match="players"):
        channel_shapley(model, original, chimera, box_assignment(), max_players=3)
    wrong = PartAssignment(PART_NAMES, np.zeros(5, dtype=int), np.ones(5), PART_GROUPS)
    with pytest.raises(ValueError, match="another model"):
        channel_shapley(model, original, chimera, wrong)


# --------------------------------------------------------------------------------------- landmark regions
def test_region_breakdown_names_the_region_that_differs(model, faces):
    original, chimera = nose_pair(faces)
    with torch.no_grad():
        activations = model(torch.stack([original, chimera]))[1]
    masks, groups = join_part_masks(box_masks(), PART_NAMES)
    similarity = region_similarity(activations[:1], activations[1:], masks[None], masks[None])[0]
    scores = dict(zip(groups, similarity.tolist(), strict=True))
    assert min((v, k) for k, v in scores.items() if np.isfinite(v))[1] == "nose"
    assert scores["eyes"] == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(scores["brows"])  # an empty region has no similarity


def test_region_breakdown_from_landmarks_needs_no_part_channels(model, faces):
    original, chimera = nose_pair(faces)
    landmarks = faces.raw(0)[2]
    scores = region_breakdown(model, original, chimera, landmarks, landmarks)
    assert set(scores) == {"eyes", "nose", "mouth"}
    assert min(scores, key=scores.get) == "nose"
    assert scores["eyes"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same number of points"):
        region_breakdown(model, original, chimera, landmarks, np.zeros((68, 2)))


def test_landmark_region_masks_from_5_and_68_points():
    points = np.array([[10, 12], [22, 12], [16, 18], [11, 24], [21, 24]], dtype=np.float64)
    masks, names = landmark_region_masks(points, SIZE)
    assert names == FIVE_POINT_PART_NAMES and masks.shape == (4, SIZE, SIZE)
    assert masks[0, 12, 10] and masks[1, 12, 22] and masks[2, 18, 16] and masks[3, 24, 16]
    assert not (masks[0] & masks[1]).any()
    missing = points.copy()
    missing[2] = np.nan
    assert not landmark_region_masks(missing, SIZE)[0][2].any()
    dense = np.stack([np.linspace(4, 28, 68), np.linspace(6, 26, 68)], axis=1)
    assert landmark_region_masks(dense, SIZE)[1] == LANDMARK_PART_NAMES
    with pytest.raises(ValueError, match="5 or 68"):
        landmark_region_masks(points[:3], SIZE)


# ------------------------------------------------------------------------------------------- the game
def test_part_swap_scores_on_a_constructed_game(model, faces):
    out = part_swap_scores(
        model, box_assignment(), faces, parts=GAME_PARTS, num_trials=8, seed=0, patch=4, stride=2
    )
    assert set(out["methods"]) == set(GAME_METHODS)
    assert out["valid_trials"] == 8  # the swap changes the identity the network sees, every time
    for method in ("breakdown", "regions", "xcos_parts", "oracle"):  # exact: the region is the swapped part
        row = out["methods"][method]
        assert row["nonmate_rate"] == 1.0 and row["iou"] == pytest.approx(1.0)
        if method != "oracle":
            assert row["top1"] == 1.0
    assert out["methods"]["random"]["iou"] < 0.3
    assert out["methods"]["random"]["nonmate_rate"] < 0.5
    assert out["methods"]["xcos"]["iou"] > 0.5 and out["methods"]["occlusion"]["iou"] > 0.5
    assert 0.0 <= out["methods"]["gradcam"]["nonmate_rate"] <= 1.0
    assert set(out["methods"]["oracle"]["per_part"]) == set(GAME_PARTS)
    json.dumps(out)
    with pytest.raises(ValueError, match="unknown methods"):
        part_swap_scores(model, box_assignment(), faces, parts=GAME_PARTS, methods=("lime",))
    with pytest.raises(ValueError, match="two images per identity"):
        part_swap_scores(model, box_assignment(), BoxFaces(images_per_identity=1), parts=GAME_PARTS)


# --------------------------------------------------------------------------------- maps, CLI, picture
@pytest.mark.parametrize("method", MAP_METHODS)
def test_every_map_method_gives_a_pixel_map(model, faces, method):
    original, chimera = nose_pair(faces)
    saliency = pair_map(model, original, chimera, method, assignment=box_assignment(), side="b")
    assert saliency.shape == (SIZE, SIZE) and torch.isfinite(saliency).all()


def test_map_errors(model, faces):
    original, chimera = nose_pair(faces)
    with pytest.raises(ValueError, match="method"):
        pair_map(model, original, chimera, "lime")
    with pytest.raises(ValueError, match="assignment"):
        pair_map(model, original, chimera, "shapley")
    with pytest.raises(ValueError, match="assignment"):
        explain_pair_with("parts", model, original, chimera)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A run folder with a part assignment, two face images, and a tiny ``FaceModel`` for ``load_run``."""
    from PIL import Image

    from ecl.models import create_face_model

    torch.manual_seed(0)
    face_model = create_face_model("test_resnet", embedding_dim=16, image_size=SIZE).eval()
    c = face_model.num_channels
    root = tmp_path_factory.mktemp("run")
    PartAssignment(PART_NAMES, np.arange(c) % len(PART_NAMES), np.ones(c), PART_GROUPS).save(root)
    faces = BoxFaces()
    paths = []
    for index in (0, 1):
        path = root / f"face{index}.png"
        Image.fromarray(faces.raw(index)[0]).save(path)
        paths.append(str(path))
    return root, paths, face_model


@pytest.mark.parametrize("method", PAIR_METHODS)
def test_cli_method_and_png(cli_run, method, monkeypatch, capsys, tmp_path):
    from ecl import checkpoint
    from ecl.cli import main

    root, (a, b), face_model = cli_run
    monkeypatch.setattr(checkpoint, "load_run", lambda path, map_location="cpu": (face_model, None))
    png = tmp_path / "out" / "pair.png"
    assert main(["explain-pair", "--checkpoint", str(root), a, b, "--method", method, "--png", str(png)]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["method"] == method and -1.0 <= output["overall"] <= 1.0 + 1e-6
    assert output["png"] == str(png) and png.read_bytes().startswith(b"\x89PNG")
    if method == "parts":
        assert {"parts", "least_similar", "descriptor"} <= set(output)
    if method == "shapley":
        assert sum(output["parts"].values()) + output["rest"] == pytest.approx(output["total"], abs=1e-5)
        assert output["total"] == pytest.approx(output["overall"], abs=1e-5)
    if method == "xcos":
        assert np.sum(np.array(output["attention_map"])) == pytest.approx(1.0, abs=1e-4)
    if method == "cam":  # pytorch-grad-cam's Grad-CAM by default, both faces at the image's resolution
        assert output["cam"] == "gradcam" and np.array(output["map_a"]).shape == (SIZE, SIZE)


def test_cli_map_methods_need_no_assignment(cli_run, monkeypatch, capsys, tmp_path):
    from ecl import checkpoint
    from ecl.cli import main

    _, (a, b), face_model = cli_run
    monkeypatch.setattr(checkpoint, "load_run", lambda path, map_location="cpu": (face_model, None))
    assert main(["explain-pair", "--checkpoint", str(tmp_path), a, b, "--method", "xcos"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "xcos"
    assert main(["explain-pair", "--checkpoint", str(tmp_path), a, b, "--method", "shapley"]) == 2
    assert "assign-parts" in capsys.readouterr().err


def test_pair_method_picture_draws_every_map(model, faces):
    from ecl.viz import pair_method_picture

    original, chimera = nose_pair(faces)
    result = explain_pair_with("shapley", model, original, chimera, box_assignment())
    picture = pair_method_picture(original, chimera, result.maps, title="shapley", caption=result.caption)
    assert picture.dtype == np.uint8 and picture.ndim == 3
    assert picture.shape[1] >= (1 + len(result.maps)) * 2 * SIZE  # a column per map, faces enlarged twice
    assert result.caption == channel_shapley(model, original, chimera, box_assignment()).text()

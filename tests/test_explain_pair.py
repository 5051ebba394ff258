"""Explaining a match: the per-part breakdown, the part-swap game, occlusion, the explain-pair CLI.

The reference model here is built so that its channels are exact part detectors: channels
``3k .. 3k + 2`` are the image's RGB inside part k's mask, average-pooled to the target map. A
chimera whose nose alone differs then changes the nose channels and nothing else.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ecl.attribution import PART_GROUPS, PartAssignment, explain_pair, part_similarity, similarity_saliency
from ecl.data.faceparts import PART_NAMES, FaceParts, image_to_tensor
from ecl.studies import game_summary, occlusion_summary, occlusion_verification, part_swap_game

SIZE = 64


def _key(image: torch.Tensor) -> bytes:
    return image.detach().cpu().float().contiguous().numpy().tobytes()


def _to_image(array: np.ndarray) -> torch.Tensor:
    return image_to_tensor(array)  # bit-identical to FaceParts items (the oracle keys on bytes)


def _masks(labelmap: np.ndarray) -> torch.Tensor:
    codes = np.arange(1, len(PART_NAMES) + 1)
    return torch.from_numpy(labelmap[None] == codes[:, None, None])


class ExactPartModel(nn.Module):
    """Channel 3k + c = colour c of the image inside part k's mask, pooled to ``map_size``.

    The masks come from an oracle: every image must be ``register``-ed with its part masks first.
    Embeddings are the flattened activations, so the saliency gradient is defined.
    """

    def __init__(self, map_size: int = 8):
        super().__init__()
        self.map_size = map_size
        self.gain = nn.Parameter(torch.ones(()))  # makes the activations carry gradients
        self.oracle: dict[bytes, torch.Tensor] = {}

    def register(self, image: torch.Tensor, masks: torch.Tensor) -> None:
        self.oracle[_key(image)] = masks.bool()

    def forward(self, images: torch.Tensor):
        try:
            masks = torch.stack([self.oracle[_key(image)] for image in images]).float()
        except KeyError:
            raise KeyError("image not registered with the oracle") from None
        b, p, s, _ = masks.shape
        parts = (masks[:, :, None] * images[:, None]).reshape(b, p * 3, s, s)
        activations = F.adaptive_avg_pool2d(parts, self.map_size) * self.gain
        return activations.flatten(1), activations


class Registering:
    """A FaceParts that registers every image it renders with the model's oracle."""

    def __init__(self, dataset: FaceParts, model: ExactPartModel):
        self.dataset, self.model = dataset, model
        self.part_names = dataset.part_names

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def _register(self, out):
        self.model.register(_to_image(out[0]), _masks(out[1]))
        return out

    def raw(self, index):
        return self._register(self.dataset.raw(index))

    def render_chimera(self, *args, **kwargs):
        return self._register(self.dataset.render_chimera(*args, **kwargs))

    def __getitem__(self, index):
        item = self.dataset[index]
        self.model.register(item["image"], item["masks"])
        return item


def exact_assignment() -> PartAssignment:
    return PartAssignment(
        part_names=PART_NAMES,
        assigned=np.repeat(np.arange(len(PART_NAMES)), 3),
        # typical peaks: a small part (an eye) fills a small share of a pooled cell
        reference_peak=np.full(3 * len(PART_NAMES), 0.05),
        groups=PART_GROUPS,
        source={g: "detector" for g in PART_GROUPS},
    )


@pytest.fixture(scope="module")
def faces():
    return FaceParts(
        "test", num_identities=6, images_per_identity=2, image_size=SIZE, occlusion_prob=0.0, cache="memory"
    )


@pytest.fixture()
def nose_pair(faces):
    """An image and the same image with only its nose recoloured, registered with an exact model."""
    model = ExactPartModel()
    item = faces[0]
    image, masks = item["image"], item["masks"]
    chimera = image.clone()
    nose = masks[PART_NAMES.index("nose")]
    chimera[:, nose] = torch.tensor([0.2, 0.6, 0.3])[:, None]
    model.register(image, masks)
    model.register(chimera, masks)
    return model, image, chimera


def test_nose_only_chimera_gives_the_nose_the_lowest_similarity(nose_pair):
    model, image, chimera = nose_pair
    result = explain_pair(model, image, chimera, exact_assignment())
    assert result.least_similar == "nose"
    assert result.parts["nose"] < 0.99
    for part in ("eyes", "brows", "mouth", "hair"):  # untouched and not next to the nose
        assert result.parts[part] == pytest.approx(1.0, abs=1e-5)
    assert result.overall < 1.0
    peak = explain_pair(model, image, chimera, exact_assignment(), descriptor="peak")
    assert peak.least_similar == "nose"


def test_breakdown_is_symmetric(nose_pair, faces):
    model, image, chimera = nose_pair
    other = faces[5]
    model.register(other["image"], other["masks"])
    for a, b in ((image, chimera), (image, other["image"])):
        ab = explain_pair(model, a, b, exact_assignment())
        ba = explain_pair(model, b, a, exact_assignment())
        assert ab.overall == pytest.approx(ba.overall, abs=1e-6)
        assert ab.parts.keys() == ba.parts.keys()
        for part in ab.parts:
            assert ab.parts[part] == pytest.approx(ba.parts[part], abs=1e-6)
        np.testing.assert_allclose(ab.saliency_a, ba.saliency_b, atol=1e-6)
        np.testing.assert_allclose(ab.part_maps_a, ba.part_maps_b, atol=1e-6)


def test_identical_images_are_similar_everywhere(nose_pair):
    model, image, _ = nose_pair
    result = explain_pair(model, image, image.clone(), exact_assignment())
    assert result.overall == pytest.approx(1.0, abs=1e-5)
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in result.parts.values())
    json.dumps(result.to_dict())  # plain JSON


def test_saliency_is_the_grad_cam_of_the_embedding_cosine(nose_pair):
    model, image, chimera = nose_pair
    saliency_a, saliency_b, similarity = similarity_saliency(model, image[None], chimera[None])
    assert saliency_a.shape == saliency_b.shape == (1, 8, 8)
    a = model(image[None])[1].detach().requires_grad_(True)
    b = model(chimera[None])[1].detach().requires_grad_(True)
    cosine = F.cosine_similarity(a.flatten(1), b.flatten(1))
    grad_a, grad_b = torch.autograd.grad(cosine.sum(), [a, b])
    torch.testing.assert_close(similarity, cosine.detach())
    torch.testing.assert_close(saliency_a, (grad_a.mean((2, 3), keepdim=True) * a).sum(1).detach())
    torch.testing.assert_close(saliency_b, (grad_b.mean((2, 3), keepdim=True) * b).sum(1).detach())
    same, _, one = similarity_saliency(model, image[None], image[None].clone())
    assert float(one[0]) == pytest.approx(1.0, abs=1e-6)
    assert same.abs().max() < 1e-4  # no gradient at the maximum of the cosine


def test_part_similarity_is_zero_when_a_part_is_missing_in_one_image():
    assignment = exact_assignment()
    a = torch.rand(2, assignment.num_channels, 4, 4)
    b = a.clone()
    b[0, assignment.channels("mouth")] = 0.0  # mouth gone in image b of pair 0
    b[1] = 0.0
    a[1] = 0.0  # nothing anywhere in pair 1
    similarity, _, _ = part_similarity(a, b, assignment)
    mouth = assignment.group_names.index("mouth")
    assert similarity[0, mouth] == 0.0
    assert torch.isnan(similarity[1]).all()
    # a flicker below min_peak (a fraction of the reference peak) is not evidence of the part
    a[0, assignment.channels("mouth")] = 0.001
    similarity, _, _ = part_similarity(a, b, assignment, min_peak=0.1)
    assert torch.isnan(similarity[0, mouth])


def test_bad_inputs_give_clear_errors(nose_pair, tmp_path):
    model, image, chimera = nose_pair
    assignment = exact_assignment()
    with pytest.raises(ValueError, match="needs a part assignment"):
        explain_pair(model, image, chimera)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        explain_pair(model, image * 255, chimera, assignment)
    with pytest.raises(ValueError, match="shape"):
        explain_pair(model, image[:2], chimera, assignment)
    with pytest.raises(TypeError, match="tensor"):
        explain_pair(model, "face.png", chimera, assignment)
    wrong = PartAssignment(PART_NAMES, np.zeros(5, dtype=int), np.ones(5), PART_GROUPS)
    with pytest.raises(ValueError, match="another model"):
        explain_pair(model, image, chimera, wrong)
    with pytest.raises(ValueError, match="descriptor"):
        explain_pair(model, image, chimera, assignment, descriptor="mean")
    with pytest.raises(FileNotFoundError, match="assign-parts"):
        PartAssignment.load(tmp_path)


def test_assignment_round_trip(tmp_path):
    assignment = exact_assignment()
    path = assignment.save(tmp_path)
    assert path.name == "part_assignment.json"
    loaded = PartAssignment.load(tmp_path / "checkpoints" / "step_000001")  # found from a checkpoint folder
    assert loaded.part_names == assignment.part_names
    np.testing.assert_array_equal(loaded.assigned, assignment.assigned)
    assert loaded.groups == assignment.groups
    assert loaded.channels("eyes").tolist() == [0, 1, 2, 3, 4, 5]


def test_assign_parts_finds_the_exact_detectors(faces):
    from ecl.attribution import assign_parts

    model = ExactPartModel(map_size=SIZE)  # full resolution: tiny parts (eyes) stay separable
    for i in range(len(faces)):
        model.register(faces[i]["image"], faces[i]["masks"])
    assignment = assign_parts(model, faces, batch_size=4)
    np.testing.assert_array_equal(assignment.assigned, np.repeat(np.arange(len(PART_NAMES)), 3))
    assert set(assignment.group_names) == set(PART_GROUPS)


def test_part_swap_game_beats_chance_with_exact_detectors(faces):
    model = ExactPartModel()
    result = part_swap_game(model, exact_assignment(), Registering(faces, model), num_trials=20, seed=1)
    assert result["chance"] == pytest.approx(0.2)
    assert result["breakdown"]["top1"] >= 0.6
    assert 0.0 <= result["saliency"]["top1"] <= 1.0
    assert sum(sum(row.values()) for row in result["breakdown"]["confusion"].values()) == 20
    json.dumps(result)
    summary = game_summary(
        [{**result, "method": "exact", "seed": 1}, {**result, "method": "exact", "seed": 2}]
    )
    assert summary["exact"]["breakdown_top1_mean"] == pytest.approx(result["breakdown"]["top1"])
    assert summary["exact"]["breakdown_top1_std"] == 0.0


def test_occlusion_verification_runs_on_a_face_model():
    from ecl.models import create_face_model

    torch.manual_seed(0)
    model = create_face_model("test_resnet", embedding_dim=16, image_size=SIZE).eval()
    kwargs = dict(num_identities=20, images_per_identity=2, image_size=SIZE, cache="memory")
    clean = FaceParts("test", occlusion_prob=0.0, **kwargs)
    occluded = FaceParts("test", occlusion_prob=1.0, **kwargs)
    c = model.num_channels
    assignment = PartAssignment(PART_NAMES, np.arange(c) % len(PART_NAMES), np.full(c, 1e6), PART_GROUPS)
    # every part looks collapsed against a huge reference peak: every pair is re-embedded
    result = occlusion_verification(model, clean, occluded, assignment, num_pairs=20, threshold=0.5)
    assert {"clean", "occluded", "clean_ignoring", "occluded_ignoring"} <= set(result)
    assert result["pairs_changed"] == {"clean": 20, "occluded": 20}
    assert "fpr" in result["occluded"]
    json.dumps(result)
    summary = occlusion_summary([{**result, "method": "m", "seed": 0}, {**result, "method": "m", "seed": 1}])
    assert summary["m"]["occluded_ignoring_accuracy_mean"] == pytest.approx(
        result["occluded_ignoring"]["accuracy"]
    )
    assert summary["m"]["clean_auc_std"] == 0.0


def test_cli_help_and_errors(tmp_path, capsys):
    from ecl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["explain-pair", "--help"])
    assert exit_info.value.code == 0
    assert "IMAGE_A" in capsys.readouterr().out
    bogus = tmp_path / "face.png"
    bogus.write_text("not an image")
    assert main(["explain-pair", "--checkpoint", str(tmp_path), str(bogus), str(bogus)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (SIZE, SIZE)).save(good)
    assert (
        main(["explain-pair", "--checkpoint", str(tmp_path), str(good), str(tmp_path / "missing.png")]) == 2
    )
    assert "no such file" in capsys.readouterr().err
    assert main(["explain-pair", "--checkpoint", str(tmp_path), str(good), str(good)]) == 2
    assert "assign-parts" in capsys.readouterr().err


def test_pair_figures_and_explorer(nose_pair, faces):
    import ecl.viz

    model, image, chimera = nose_pair
    explanation = explain_pair(model, image, chimera, exact_assignment())
    bars = ecl.viz.pair_breakdown_figure(explanation)
    assert len(bars.data[0].x) == len(explanation.parts) + 1
    assert ecl.viz.pair_breakdown_figure(explanation.to_dict(), scale="similarity").layout.yaxis.type is None
    maps = ecl.viz.pair_maps_figure(image, chimera, explanation, parts=["nose", "mouth"])
    assert len(maps.data) == 2 * 4  # per image: image, saliency, two parts
    explorer = ecl.viz.pair_explorer(model, exact_assignment(), Registering(faces, model))
    controls, bars_html, picture, _ = explorer.children
    first = bytes(picture.value)
    assert first.startswith(b"\x89PNG") and "nose" in bars_html.value
    controls.children[1].value = "another face"  # B is another face: redraws
    assert bytes(picture.value) != first

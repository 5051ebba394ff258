"""pytorch-grad-cam's CAM family on a pair's similarity: the library's Grad-CAM equals the project's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecl.attribution import similarity_saliency
from ecl.models import create_face_model
from ecl.pair_cam import CAM_METHODS, SimilarityTarget, library_cam

SIZE = 48


@pytest.fixture(scope="module")
def model_and_pair():
    torch.manual_seed(0)
    model = create_face_model("resnet18", embedding_dim=16, image_size=SIZE).eval()
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, SIZE, SIZE, generator=generator)
    return model, a, b


def test_similarity_target_is_the_cosine_with_the_fixed_embedding():
    fixed, output = torch.tensor([3.0, 4.0]), torch.tensor([[4.0, 3.0], [-3.0, -4.0]])
    assert torch.allclose(SimilarityTarget(fixed)(output), torch.tensor([24 / 25, -1.0]))


def test_library_gradcam_equals_the_projects_similarity_gradcam(model_and_pair):
    scale_cam_image = pytest.importorskip("pytorch_grad_cam.utils.image").scale_cam_image
    model, a, b = model_and_pair
    theirs = library_cam(model, a, b, cam="gradcam")
    ours = similarity_saliency(model, a[None], b[None])[0][0].numpy()  # signed, at the target layer
    assert ours.min() < 0 < ours.max(), "a constructed case must have regions on both sides of zero"

    # The library keeps the positive part, scales it to [0, 1] and resizes it to the image, then scales the
    # mean over its target layers (here one) to [0, 1] again.
    def library_scaling(cam):
        return scale_cam_image(scale_cam_image(np.maximum(cam, 0)[None], (SIZE, SIZE)))[0]

    expected = library_scaling(ours)
    assert theirs.shape == (SIZE, SIZE) and theirs.dtype == np.float32
    np.testing.assert_allclose(theirs, expected, atol=1e-5)
    # Face b's map is face a's with the roles swapped, and it differs.
    theirs_b = library_cam(model, b, a, cam="gradcam")
    ours_b = similarity_saliency(model, a[None], b[None])[1][0].numpy()
    np.testing.assert_allclose(theirs_b, library_scaling(ours_b), atol=1e-5)
    assert not np.allclose(theirs, theirs_b)


@pytest.mark.parametrize("cam", ["hirescam", "eigencam", "gradcam++"])
def test_other_cams_are_one_argument_away(model_and_pair, cam):
    pytest.importorskip("pytorch_grad_cam")
    model, a, b = model_and_pair
    was_training = model.training
    result = library_cam(model, a, b, cam=cam)
    assert result.shape == (SIZE, SIZE) and np.isfinite(result).all()
    assert 0.0 <= result.min() and result.max() <= 1.0 + 1e-6 and result.max() > 0.5
    assert model.training == was_training, "the model's mode was not restored"


def test_bad_requests_name_the_problem(model_and_pair):
    model, a, b = model_and_pair
    with pytest.raises(ValueError, match="cam must be one of"):
        library_cam(model, a, b, cam="gradcamm")
    with pytest.raises(TypeError, match="FaceModel"):
        library_cam(torch.nn.Linear(2, 2), a, b)
    assert set(CAM_METHODS) >= {"gradcam", "hirescam", "scorecam", "eigencam"}


def test_a_missing_library_says_how_to_install_it(model_and_pair, monkeypatch):
    import sys

    model, a, b = model_and_pair
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # what an environment without it sees
    with pytest.raises(ImportError, match=r"pip install \"ecl\[cam\]\""):
        library_cam(model, a, b)

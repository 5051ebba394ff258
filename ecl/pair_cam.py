"""The CAM family of pytorch-grad-cam, on the similarity of two faces.

pytorch-grad-cam (the ``grad-cam`` package) explains a classifier's class score with Grad-CAM, HiResCAM,
ScoreCAM, EigenCAM and a dozen more. A face model has no classes: what a pair's explanation explains is
the cosine of face a's embedding with face b's. :class:`SimilarityTarget` is that score as a
pytorch-grad-cam *target* (face b's embedding held fixed), and :func:`library_cam` runs any of the
library's CAM classes on face a with it, at the model's target layer, so a reader swaps Grad-CAM for
HiResCAM in one argument.

The package is optional (``pip install "ecl[cam]"``, or ``pip install grad-cam==1.5.5``); only this module
imports it. ``tests/test_pair_cam.py`` checks that the library's Grad-CAM equals this project's own
similarity Grad-CAM (``ecl.attribution.similarity_saliency``) after the library's ReLU and scaling, which is
why the project's own stays: it keeps the sign (negative = the region pulls the faces apart), which the
deletion and insertion curves of ``ecl.pair_scores`` use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecl.attribution import target_module
from ecl.pair_methods import as_pair, embed, prepare_model
from ecl.utils import eval_mode, split_output

#: ``library_cam(cam=...)`` name -> pytorch-grad-cam class name.
CAM_METHODS = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
}

INSTALL_HINT = 'install the optional CAM library: pip install "ecl[cam]" (or pip install grad-cam==1.5.5)'


class SimilarityTarget:
    """A pytorch-grad-cam target: the cosine of an embedding with a fixed one (face b's).

    The library calls a target on the model's output for one image, here that image's embedding (D,).
    """

    def __init__(self, embedding: torch.Tensor):
        self.embedding = F.normalize(embedding.detach().float().reshape(-1), dim=0)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return (F.normalize(output.float(), dim=-1) * self.embedding.to(output.device)).sum(-1)


class EmbeddingOnly(nn.Module):
    """The face model with its embeddings as the only output (what pytorch-grad-cam calls)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return split_output(self.model(images))[0]


def _library():
    try:
        import pytorch_grad_cam
    except ImportError as err:
        raise ImportError(
            f"library_cam needs pytorch-grad-cam, which is not installed: {INSTALL_HINT}"
        ) from err
    return pytorch_grad_cam


def library_cam(
    model: nn.Module,
    image_a: Any,
    image_b: Any,
    cam: str = "gradcam",
    device: str | torch.device | None = None,
    **options: Any,
) -> np.ndarray:
    """pytorch-grad-cam's ``cam`` map of face a, for its similarity to face b, at the model's target layer.

    Args:
        model: a ``FaceModel`` (its ``target_layer`` is the layer the CAM looks at).
        image_a, image_b: as ``ecl.attribution.explain_pair``; the map is of face a (swap them for face b).
        cam: one of :data:`CAM_METHODS`.
        device: default the model's device.
        **options: passed to the CAM class (for example ``batch_size`` for ``"scorecam"``).

    Returns:
        (S, S) float32 map in [0, 1] at the image's resolution, as the library returns it (ReLU, then
        scaled to [0, 1] and resized); high means the region makes face a similar to face b.

    Raises:
        ValueError: an unknown ``cam``. TypeError: a model without a target layer. ImportError: the library
        is not installed (the message says how to install it).
    """
    if cam not in CAM_METHODS:
        raise ValueError(f"cam must be one of {sorted(CAM_METHODS)}; got {cam!r}")
    layer = target_module(model)
    if layer is None:
        raise TypeError(
            "library_cam needs a FaceModel (a model with .backbone and .target_layer); "
            f"got {type(model).__name__}"
        )
    cam_class = getattr(_library(), CAM_METHODS[cam])
    a, b = as_pair(image_a, image_b)
    device = prepare_model(model, device)
    with eval_mode(model):
        target = SimilarityTarget(embed(model, b)[0])
        with cam_class(model=EmbeddingOnly(model), target_layers=[layer], **options) as explainer:
            maps = explainer(input_tensor=a.to(device), targets=[target])
    return np.asarray(maps[0], dtype=np.float32)

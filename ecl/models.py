"""Face-recognition models on timm backbones, with the ECLoss target layer tapped in the same forward pass.

:func:`create_face_model` builds a :class:`FaceModel`: any timm backbone (by name), a face-recognition
embedding head (insightface's BN - dropout - flatten - linear - BN), and a forward hook on the *target
layer* that hands its activations (after ReLU) back next to the embeddings, without a second forward.

Choices, documented here because the book and the configs refer to them:

* **Target activations** are captured with a forward hook on the named module, which works for every
  timm family (ResNet, MobileNet, EfficientNet, ConvNeXt, RegNet ...), unlike ``features_only`` (which
  drops the layers after the last requested stage) or ``forward_intermediates`` (not in every model).
  ReLU is applied to the captured copy only; for a post-ReLU layer (ResNet stages) it changes nothing,
  for a stage without a final ReLU (ConvNeXt, EfficientNet) the backbone itself continues unchanged.
* **Valid target layers** are the backbone's modules named with at most one dot (``layer3``,
  ``layer3.1``, ``blocks.5``, ``stages.2``) that run exactly once in ``forward_features`` and output a
  ``(B, C, H, W)`` map; :meth:`FaceModel.layer_names` lists them. The default is the one whose map is
  closest to 28 x 28 at the model's input size (the deepest such layer on ties), METHOD section 4. A
  28 x 28 map (4 px cells at 112 px) was chosen on the FaceParts validation split over the 14 x 14 map of
  the original setting, whose 8 px cells hold a whole eye.
* **Face stem** (``face_stem=True``, the default) halves the backbone's total stride at the stem, as
  face-recognition ResNets do at 112 x 112: a stem max-pool is removed if there is one (ResNets:
  reduction 16, so layer1..4 are 56, 28, 14, 7 at 112 px, the map sizes of insightface's iresnet);
  otherwise the first convolution's stride is halved (MobileNet/EfficientNet ``conv_stem`` 2 -> 1,
  ConvNeXt's 4 x 4 patchify stem 4 -> 2 with padding 1). Unlike iresnet (3 x 3 stride-1 stem conv and a
  stride-2 first block), the ResNet stem conv is kept as timm builds it, so pretrained weights fit.
* **output_stride** is passed to timm (dilated last stages; ResNet, EfficientNet, ConvNeXt support 8
  and 16); a backbone without it raises ``ValueError``.
* **Embedding head**: ``pooling="flatten"`` (default, as insightface) flattens the final map, which ties
  the model to ``image_size``; ``pooling="avg"`` global-average-pools instead (fewer parameters, any
  input size). The last BatchNorm1d has its weight frozen at 1 as in insightface (bias trainable).
* **Normalisation** (mean, std) comes from timm's data config for the backbone and is applied inside
  the model, so inputs are images in [0, 1]; ``data_config["input_size"]`` is set to ``image_size``.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecl.losses import MarginHead, TemplateMask, make_head
from ecl.utils import eval_mode, model_device

if TYPE_CHECKING:
    from ecl.config import ExperimentConfig

__all__ = [
    "FaceModel",
    "FaceOutput",
    "apply_face_stem",
    "build_model",
    "create_face_model",
    "list_target_layers",
    "tap",
]

DEFAULT_MAP_SIZE = 28  # METHOD section 4: about 28 x 28 at 112 x 112 input (chosen on validation)
POOLINGS = ("flatten", "avg")


class FaceOutput(NamedTuple):
    """What :meth:`FaceModel.forward` returns.

    Attributes:
        embeddings: ``(B, D)``, not L2-normalised.
        activations: ``(B, C, H, W)``, the target layer's output after ReLU (before the forward mask,
            when one is used: the loss judges each channel's own map, the mask changes what flows on).
    """

    embeddings: Tensor
    activations: Tensor


def _import_timm():
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a hard dependency
        raise ImportError("ecl.models needs timm: pip install timm") from err
    return timm


def _check_backbone_name(name: str) -> None:
    timm = _import_timm()
    if timm.is_model(name):
        return
    arch = name.split(".", 1)[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else " See timm.list_models() for the names."
    raise ValueError(f"timm does not know the backbone {name!r}.{hint}")


def apply_face_stem(backbone: nn.Module) -> str:
    """Halve a timm backbone's total stride at its stem, in place (see the module docstring).

    Returns:
        A one-line description of the change, for logs and the book.

    Raises:
        ValueError: No stem max-pool and no strided first convolution to change.
    """
    maxpool = getattr(backbone, "maxpool", None)
    if isinstance(maxpool, nn.Module) and not isinstance(maxpool, nn.Identity):
        backbone.maxpool = nn.Identity()
        return "removed the stem max-pool"
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            stride = module.stride[0]
            if stride < 2 or module.stride[0] != module.stride[1]:
                break
            new_stride = stride // 2
            module.stride = (new_stride, new_stride)
            kernel = module.kernel_size[0]
            if isinstance(module.padding, tuple) and kernel == stride and module.padding == (0, 0):
                # A patchify stem (kernel == stride, no padding) now overlaps: pad to keep H / new_stride.
                pad = (kernel - new_stride) // 2
                module.padding = (pad, pad)
            return f"stride of the stem convolution {name!r} {stride} -> {new_stride}"
    raise ValueError(
        f"face_stem is not supported for {type(backbone).__name__}: no stem max-pool and no strided first "
        "convolution; use face_stem=False (and output_stride=16 or 8 if the backbone supports it)"
    )


def _trace_layers(
    backbone: nn.Module, image_size: int, in_chans: int
) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]]:
    """Run one dummy forward and record the output shape of every candidate layer, in completion order."""
    shapes: dict[str, list[tuple[int, ...]]] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            shape = tuple(output.shape) if isinstance(output, Tensor) else ()
            shapes.setdefault(name, []).append(shape)

        return hook

    for name, module in backbone.named_modules():
        if name and name.count(".") <= 1:
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        with eval_mode(backbone), torch.no_grad():
            dummy = torch.zeros(1, in_chans, image_size, image_size, device=model_device(backbone))
            features = backbone.forward_features(dummy)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(features, Tensor) or features.dim() != 4:
        raise ValueError(
            f"{type(backbone).__name__}.forward_features does not return a (B, C, H, W) map "
            f"(got {tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__}); "
            "ECLoss needs a convolutional backbone (ResNet, MobileNet, EfficientNet, ConvNeXt, RegNet ...)"
        )
    layers = {name: found[0] for name, found in shapes.items() if len(found) == 1 and len(found[0]) == 4}
    return layers, tuple(features.shape)


def _default_layer(layers: dict[str, tuple[int, ...]]) -> str:
    # Closest to 28 x 28; on ties the deepest (last to finish), whose channels are the most semantic.
    best, best_distance = None, None
    for name, shape in layers.items():
        distance = abs(shape[2] - DEFAULT_MAP_SIZE) + abs(shape[3] - DEFAULT_MAP_SIZE)
        if best_distance is None or distance <= best_distance:
            best, best_distance = name, distance
    assert best is not None
    return best


class FaceModel(nn.Module):
    """A timm backbone with a face-recognition embedding head and a tapped target layer.

    Build it with :func:`create_face_model`. ``forward(images)`` takes ``(B, 3, S, S)`` images in
    [0, 1], normalises them with the backbone's timm data config, and returns
    :class:`FaceOutput` ``(embeddings, activations)``.

    Attributes:
        backbone: The timm model (``num_classes=0, global_pool=""``), possibly with a face stem.
        target_layer: Name of the tapped module in ``backbone``.
        embedding_dim: D.
        num_channels: C of the target layer.
        target_size: ``(H, W)`` of the target map at ``image_size``.
        feature_shape: ``(C, H, W)`` of the backbone's final map at ``image_size``.
        data_config: timm data config (mean, std, interpolation, input_size = (3, S, S)).
        image_size: S.
        config: The :func:`create_face_model` arguments that rebuild this model.
    """

    def __init__(
        self,
        backbone: nn.Module,
        layers: dict[str, tuple[int, ...]],
        feature_shape: tuple[int, ...],
        target_layer: str,
        embedding_dim: int,
        data_config: dict[str, Any],
        image_size: int,
        dropout: float = 0.0,
        pooling: str = "flatten",
        forward_mask: bool = False,
        mask_beta: float = 4.0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if target_layer not in layers:
            raise ValueError(f"unknown target layer {target_layer!r}; valid names: {', '.join(layers)}")
        self.backbone = backbone
        self._layers = dict(layers)
        self.target_layer = target_layer
        self.embedding_dim = int(embedding_dim)
        self.num_channels = int(layers[target_layer][1])
        self.target_size = (int(layers[target_layer][2]), int(layers[target_layer][3]))
        self.feature_shape = tuple(int(s) for s in feature_shape[1:])
        self.data_config = dict(data_config)
        self.image_size = int(image_size)
        self.pooling = pooling
        self.config = dict(config or {})
        self.register_buffer("mean", torch.tensor(data_config["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data_config["std"]).view(1, -1, 1, 1), persistent=False)

        channels, height, width = self.feature_shape
        flat_dim = channels * height * width if pooling == "flatten" else channels
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.Identity(),
            nn.Dropout(dropout),
            nn.Flatten(1),
            nn.Linear(flat_dim, self.embedding_dim),
            nn.BatchNorm1d(self.embedding_dim),
        )
        # insightface: the embedding BN's scale is fixed at 1 (only its shift learns).
        nn.init.constant_(self.head[-1].weight, 1.0)
        self.head[-1].weight.requires_grad_(False)

        self.mask = TemplateMask(beta=mask_beta) if forward_mask else None
        self._tap: Tensor | None = None
        module = dict(backbone.named_modules())[target_layer]
        self._hook = module.register_forward_hook(self._capture)

    def _capture(self, _module: nn.Module, _inputs: Any, output: Tensor) -> Tensor | None:
        self._tap = F.relu(output)
        if self.mask is not None:
            return self.mask(output)  # changes what flows on; the loss still sees the unmasked map
        return None

    def retarget(self, target_layer: str) -> None:
        """Tap another layer for the returned activations; the embeddings do not change.

        For measuring a trained model at a layer other than the one it was trained on (for example the
        baseline at the layer an ECLoss variant moved to). ``config`` follows, so a rebuilt model taps
        the same layer.

        Raises:
            ValueError: an unknown layer, or a model with a forward mask (the mask belongs to its layer).
        """
        if target_layer not in self._layers:
            raise ValueError(f"unknown target layer {target_layer!r}; valid names: {', '.join(self._layers)}")
        if self.mask is not None:
            raise ValueError(
                "a model with a forward mask cannot be retargeted: the mask belongs to its layer"
            )
        self._hook.remove()
        self.target_layer = target_layer
        self.num_channels = int(self._layers[target_layer][1])
        self.target_size = (int(self._layers[target_layer][2]), int(self._layers[target_layer][3]))
        self.config["target_layer"] = target_layer
        self._hook = dict(self.backbone.named_modules())[target_layer].register_forward_hook(self._capture)

    def layer_names(self) -> tuple[str, ...]:
        """Valid ``target_layer`` names, in the order their outputs are produced."""
        return tuple(self._layers)

    def layer_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``(C, H, W)`` of every valid target layer at ``image_size``."""
        return {name: tuple(shape[1:]) for name, shape in self._layers.items()}

    def normalize(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> the backbone's normalised input."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: Tensor) -> FaceOutput:
        """Embeddings and target activations in one pass.

        Args:
            images: RGB images in [0, 1].

        Returns:
            :class:`FaceOutput`.

        Shape:
            images ``(B, 3, S, S)`` -> embeddings ``(B, D)``, activations ``(B, C, H, W)``.
        """
        if images.dim() != 4 or images.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"images must have shape (B, {self.mean.shape[1]}, S, S) with values in [0, 1], "
                f"got {tuple(images.shape)}"
            )
        if self.pooling == "flatten" and tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                "this model flattens its final map, "
                f"so it takes {self.image_size} x {self.image_size} images, "
                f"got {tuple(images.shape[-2:])}; resize the images or build the model with "
                f"image_size={images.shape[-1]} (or pooling='avg')"
            )
        self._tap = None
        try:
            features = self.backbone.forward_features(self.normalize(images))
            activations = self._tap
        finally:
            self._tap = None  # never keep a batch's activations alive between calls
        if activations is None:  # pragma: no cover - the hook is on a module of forward_features
            raise RuntimeError(f"target layer {self.target_layer!r} did not run in forward_features")
        return FaceOutput(self.head(features), activations)

    def extra_repr(self) -> str:
        return (
            f"target_layer={self.target_layer!r}, target_size={self.target_size}, "
            f"num_channels={self.num_channels}, "
            f"embedding_dim={self.embedding_dim}, image_size={self.image_size}, pooling={self.pooling!r}"
        )


def create_face_model(
    backbone: str = "resnet18",
    embedding_dim: int = 512,
    target_layer: str | None = None,
    pretrained: bool = False,
    face_stem: bool = True,
    output_stride: int | None = None,
    dropout: float = 0.0,
    image_size: int = 112,
    forward_mask: bool = False,
    mask_beta: float = 4.0,
    pooling: str = "flatten",
    **timm_kwargs: Any,
) -> FaceModel:
    """A :class:`FaceModel` on a timm backbone.

    Defaults give resnet18 with the face stem at 112 x 112: target layer ``layer2`` (128 x 28 x 28),
    final map 512 x 7 x 7 flattened into a 512-d embedding.

    Args:
        backbone: timm model name (``"resnet18"``, ``"mobilenetv3_large_100"``, ``"convnext_atto"`` ...).
        embedding_dim: D of the embeddings.
        target_layer: Module name to tap (see :meth:`FaceModel.layer_names`); None picks the layer whose
            map is closest to 28 x 28 at ``image_size``.
        pretrained: Load timm's pretrained weights (needs the hub or its cache; never in tests).
        face_stem: Halve the stem's stride (see the module docstring).
        output_stride: Passed to timm (8 or 16 dilate the last stages); None keeps the model's own.
        dropout: Dropout before the embedding's linear layer.
        image_size: Input size S; also written into ``data_config["input_size"]``.
        forward_mask: Multiply the target layer's output by its templates before it flows on (ICNN).
        mask_beta: Template slope of the forward mask.
        pooling: ``"flatten"`` (insightface) or ``"avg"`` (global average pooling) before the linear layer.
        **timm_kwargs: Extra arguments for ``timm.create_model`` (e.g. ``drop_path_rate``, ``channels``).

    Returns:
        The model, in training mode.

    Raises:
        ValueError: Unknown backbone (with close matches), unknown target layer (with the valid names),
            unsupported ``output_stride`` or ``face_stem``, or a non-convolutional backbone.
    """
    timm = _import_timm()
    _check_backbone_name(backbone)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    kwargs = dict(timm_kwargs)
    if output_stride is not None:
        kwargs["output_stride"] = int(output_stride)
    try:
        net = timm.create_model(backbone, pretrained=pretrained, num_classes=0, global_pool="", **kwargs)
    except TypeError as err:
        if output_stride is not None and "output_stride" in str(err):
            raise ValueError(
                f"timm's {backbone!r} does not support output_stride; use output_stride=None "
                "(and face_stem=True for a finer target map)"
            ) from err
        raise
    if face_stem:
        apply_face_stem(net)
    in_chans = int(kwargs.get("in_chans", 3))
    layers, feature_shape = _trace_layers(net, image_size, in_chans)
    if target_layer is None:
        target_layer = _default_layer(layers)
    elif target_layer not in layers:
        raise ValueError(
            f"unknown target layer {target_layer!r} for {backbone!r}; valid names: {', '.join(layers)}"
        )
    data_config = dict(timm.data.resolve_model_data_config(net))
    data_config["input_size"] = (in_chans, image_size, image_size)
    config = {
        "backbone": backbone,
        "embedding_dim": embedding_dim,
        "target_layer": target_layer,
        "pretrained": pretrained,
        "face_stem": face_stem,
        "output_stride": output_stride,
        "dropout": dropout,
        "image_size": image_size,
        "forward_mask": forward_mask,
        "mask_beta": mask_beta,
        "pooling": pooling,
        **timm_kwargs,
    }
    return FaceModel(
        net,
        layers,
        feature_shape,
        target_layer=target_layer,
        embedding_dim=embedding_dim,
        data_config=data_config,
        image_size=image_size,
        dropout=dropout,
        pooling=pooling,
        forward_mask=forward_mask,
        mask_beta=mask_beta,
        config=config,
    )


def list_target_layers(
    backbone: str = "resnet18", image_size: int = 112, **kwargs: Any
) -> dict[str, tuple[int, int, int]]:
    """``(C, H, W)`` of every valid target layer of a backbone, built with :func:`create_face_model`'s
    options."""
    return create_face_model(backbone, image_size=image_size, **kwargs).layer_shapes()


class _Tapped:
    """What :func:`tap` yields; ``.activations`` is the tapped layer's latest output after ReLU."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self._activations: Tensor | None = None

    @property
    def activations(self) -> Tensor:
        if self._activations is None:
            raise RuntimeError(
                f"no forward call has run through {self.layer!r} yet: call the model on a batch inside the "
                "`with tap(...)` block, then read .activations"
            )
        return self._activations


@contextlib.contextmanager
def tap(model: nn.Module, layer: str) -> Iterator[_Tapped]:
    """Tap one layer of any model for ECLoss: its output after ReLU, from the latest forward call.

    For a model of your own (torchvision, timm, ...): a forward hook on the module named ``layer`` keeps
    ``relu(output)`` with its autograd graph, so ``ecloss(t.activations)`` trains every layer up to the
    tapped one. ReLU is applied to the kept copy only; what flows on through the model is unchanged. The
    hook is removed when the block exits; ``.activations`` then keeps the last map seen.

    Args:
        model: Any ``nn.Module``.
        layer: Name of a module in ``model.named_modules()`` whose output is a ``(B, C, H, W)`` map
            (``"layer2"`` of a torchvision ResNet, ``"stages.1"`` of a timm ConvNeXt).

    Returns:
        A context manager yielding an object whose ``.activations`` is the ``(B, C, H, W)`` map.

    Raises:
        ValueError: ``model`` has no module named ``layer`` (the message lists close or top-level
            names); during the forward, the layer's output is not a ``(B, C, H, W)`` tensor.
        RuntimeError: ``.activations`` read before any forward call ran through the layer.

    Example:
        >>> net = torchvision.models.resnet18(num_classes=128)
        >>> with tap(net, "layer2") as t:
        ...     embeddings = net(images)
        ...     loss = identity_loss(embeddings, labels) + DEFAULT_WEIGHT * ecloss(t.activations)
    """
    modules = dict(model.named_modules())
    if layer not in modules:
        names = [name for name in modules if name]
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.6)
        top = [name for name in names if "." not in name][:8]
        raise ValueError(
            f"{type(model).__name__} has no module named {layer!r}; "
            + (f"close matches: {', '.join(close)}; " if close else "")
            + f"top-level modules: {', '.join(top)} (all names: [n for n, _ in model.named_modules()])"
        )
    tapped = _Tapped(layer)

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, Tensor) or output.dim() != 4:
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"ECLoss needs a (B, C, H, W) map, but {layer!r} output {got}; "
                "tap a convolutional layer or stage instead"
            )
        tapped._activations = F.relu(output)

    handle = modules[layer].register_forward_hook(hook)
    try:
        yield tapped
    finally:
        handle.remove()


def build_model(cfg: ExperimentConfig, num_classes: int) -> tuple[FaceModel, MarginHead]:
    """A fresh ``FaceModel`` and identity head for a config (seed the RNG first for reproducibility)."""
    m = cfg.model
    model = create_face_model(
        backbone=m.backbone,
        embedding_dim=m.embedding_dim,
        target_layer=m.target_layer,
        pretrained=m.pretrained,
        face_stem=m.face_stem,
        output_stride=m.output_stride,
        dropout=m.dropout,
        image_size=cfg.data.image_size,
        forward_mask=m.forward_mask,
        mask_beta=m.mask_beta,
    )
    head = make_head(cfg.loss.identity, m.embedding_dim, num_classes, s=cfg.loss.s, margin=cfg.loss.margin)
    return model, head

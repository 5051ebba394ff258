"""Face models on timm backbones at 112 x 112: target layers, face stem, head, normalisation, errors."""

from __future__ import annotations

import pytest
import torch

from ecl.losses import ecloss, find_peaks, positive_template
from ecl.models import FaceOutput, create_face_model

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return create_face_model("resnet18", embedding_dim=32)


def test_default_resnet_taps_layer2_at_28x28(resnet):
    assert resnet.target_layer == "layer2"
    assert resnet.num_channels == 128 and resnet.target_size == (28, 28)
    assert resnet.feature_shape == (512, 7, 7)  # face stem: last stage 7 x 7, not 4 x 4
    shapes = resnet.layer_shapes()
    assert shapes["layer1"] == (64, 56, 56) and shapes["layer4"] == (512, 7, 7)
    assert resnet.data_config["input_size"] == (3, 112, 112)
    assert resnet.image_size == 112 and resnet.embedding_dim == 32


def test_forward_returns_embeddings_and_post_relu_activations_in_one_pass(resnet):
    images = torch.rand(2, 3, 112, 112)
    calls = []
    handle = resnet.backbone.conv1.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = resnet(images)
    finally:
        handle.remove()
    assert isinstance(out, FaceOutput) and len(calls) == 1
    assert out.embeddings.shape == (2, 32) and out.activations.shape == (2, 128, 28, 28)
    assert (out.activations >= 0).all()
    loss = ecloss(out.activations) + out.embeddings.pow(2).mean()
    loss.backward()
    assert resnet.backbone.layer1[0].conv1.weight.grad is not None
    assert resnet._tap is None  # activations are not kept alive between calls


def test_model_normalises_with_timm_data_config(resnet):
    import timm

    config = timm.data.resolve_model_data_config(timm.create_model("resnet18", num_classes=0))
    torch.testing.assert_close(resnet.mean.flatten(), torch.tensor(config["mean"]))
    torch.testing.assert_close(resnet.std.flatten(), torch.tensor(config["std"]))
    images = torch.rand(1, 3, 112, 112)
    expected = (images - torch.tensor(config["mean"]).view(1, 3, 1, 1)) / torch.tensor(config["std"]).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(resnet.normalize(images), expected)
    assert "mean" not in resnet.state_dict()  # derived from the config, not a learned state


def test_target_layer_by_name_and_errors(resnet):
    model = create_face_model("resnet18", target_layer="layer4", embedding_dim=16)
    assert model.num_channels == 512 and model.target_size == (7, 7)
    assert "layer3.1" in model.layer_names()
    with pytest.raises(ValueError, match=r"valid names: .*layer3") as err:
        create_face_model("resnet18", target_layer="layer5")
    assert "layer4" in str(err.value)
    with pytest.raises(ValueError, match="resnet18"):
        create_face_model("resnet81")
    with pytest.raises(ValueError, match="output_stride"):
        create_face_model("mobilenetv3_small_100", output_stride=8)
    with pytest.raises(ValueError, match="image_size=96"):
        resnet(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        resnet(torch.rand(3, 112, 112))


def test_without_face_stem_and_with_output_stride():
    plain = create_face_model("resnet18", face_stem=False, target_layer="layer4", embedding_dim=8)
    assert plain.target_size == (4, 4)
    dilated = create_face_model(
        "resnet18", face_stem=False, output_stride=8, embedding_dim=8, pooling="avg", target_layer="layer4"
    )
    assert dilated.target_size == (14, 14)
    out = dilated(torch.rand(2, 3, 96, 96))  # avg pooling: any input size
    assert out.embeddings.shape == (2, 8) and out.activations.shape == (2, 512, 12, 12)


@pytest.mark.parametrize(
    "backbone, layer, channels",
    [
        ("mobilenetv3_small_100", "blocks.1", 24),
        ("convnext_atto", "stages.1", 80),
        ("efficientnet_b0", "blocks.2", 40),
    ],
)
def test_other_backbones_default_to_a_28x28_map(backbone, layer, channels):
    torch.manual_seed(0)
    model = create_face_model(backbone, embedding_dim=16)
    assert (model.target_layer, model.num_channels, model.target_size) == (layer, channels, (28, 28))
    assert model.feature_shape[1:] == (7, 7)
    out = model(torch.rand(2, 3, 112, 112))
    assert out.embeddings.shape == (2, 16) and out.activations.shape == (2, channels, 28, 28)
    assert (out.activations >= 0).all()  # ReLU applied to the tapped copy (these stages end without one)
    ecloss(out.activations).backward()
    assert any(p.grad is not None for p in model.backbone.parameters())


def test_relu_only_on_the_tap_and_forward_mask_changes_what_flows():
    torch.manual_seed(0)
    model = create_face_model("convnext_atto", embedding_dim=8, target_layer="stages.2").eval()
    seen = {}
    stage3 = model.backbone.stages[3]
    handle = stage3.register_forward_pre_hook(lambda _m, inputs: seen.__setitem__("x", inputs[0]))
    images = torch.rand(2, 3, 112, 112)
    try:
        out = model(images)
        assert (seen["x"] < 0).any()  # the backbone continues with the raw (signed) stage output
        torch.testing.assert_close(out.activations, seen["x"].relu())
        masked = create_face_model(
            "convnext_atto", embedding_dim=8, target_layer="stages.2", forward_mask=True
        ).eval()
        masked.load_state_dict(model.state_dict())
        handle.remove()
        handle = masked.backbone.stages[3].register_forward_pre_hook(
            lambda _m, inputs: seen.__setitem__("x", inputs[0])
        )
        out_masked = masked(images)
    finally:
        handle.remove()
    torch.testing.assert_close(out_masked.activations, out.activations)  # the loss sees the unmasked map
    template = positive_template(find_peaks(out.activations), (14, 14))
    flowing = seen["x"]
    assert (flowing[template == 0] == 0).all()  # nothing passes outside each channel's blob
    assert (flowing[template > 0] != 0).any()
    assert not torch.allclose(out_masked.embeddings, out.embeddings)


def test_model_config_rebuilds_the_same_model(resnet):
    clone = create_face_model(**resnet.config)
    clone.load_state_dict(resnet.state_dict())
    resnet.eval(), clone.eval()
    images = torch.rand(2, 3, 112, 112)
    torch.testing.assert_close(clone(images).embeddings, resnet(images).embeddings)
    resnet.train()
    frozen = resnet.head[-1].weight
    assert not frozen.requires_grad and torch.equal(frozen, torch.ones_like(frozen))


def test_deepcopy_keeps_the_tap_on_the_copy(resnet):
    import copy

    clone = copy.deepcopy(resnet).eval()  # e.g. an EMA copy of the model
    out = clone(torch.rand(1, 3, 112, 112))
    assert out.activations.shape == (1, 128, 28, 28)
    hook = next(iter(clone.backbone.layer2._forward_hooks.values()))
    assert hook.__self__ is clone


def test_retarget_taps_another_layer_without_changing_the_embeddings():
    torch.manual_seed(0)
    model = create_face_model("test_resnet", embedding_dim=16, target_layer="layer3").eval()
    images = torch.rand(2, 3, 112, 112)
    before = model(images)
    model.retarget("layer2")
    after = model(images)
    assert model.target_layer == "layer2" and model.config["target_layer"] == "layer2"
    assert after.activations.shape[-2:] == (28, 28) and model.target_size == (28, 28)
    torch.testing.assert_close(after.embeddings, before.embeddings)
    with pytest.raises(ValueError, match="unknown target layer 'layer9'"):
        model.retarget("layer9")
    masked = create_face_model("test_resnet", embedding_dim=16, target_layer="layer3", forward_mask=True)
    with pytest.raises(ValueError, match="forward mask"):
        masked.retarget("layer2")

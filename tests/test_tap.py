"""``ecl.models.tap``: ECLoss on one layer of any model (torchvision, timm), its gradients and its errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecl.losses import ecloss
from ecl.models import tap

torchvision = pytest.importorskip("torchvision")


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=16)


@pytest.fixture
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _grad_norm(module: nn.Module) -> float:
    grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
    return float(sum(grads)) if grads else 0.0


def test_ecloss_on_the_tap_trains_the_layers_up_to_it_and_none_after(resnet, images):
    with tap(resnet, "layer2") as t:
        resnet(images)
        loss = ecloss(t.activations)
    assert t.activations.requires_grad and loss.requires_grad
    loss.backward()
    for before in (resnet.conv1, resnet.bn1, resnet.layer1, resnet.layer2):
        assert _grad_norm(before) > 0, "the matching loss must reach the layers up to the tapped one"
    for after in (resnet.layer3, resnet.layer4, resnet.fc):
        assert all(p.grad is None for p in after.parameters()), "no gradient may reach layers after the tap"


def test_tap_sees_the_layer_output_after_relu(resnet, images):
    seen = {}

    def manual(name):
        return lambda _module, _inputs, output: seen.__setitem__(name, output.detach().clone())

    handles = [
        resnet.layer2.register_forward_hook(manual("layer2")),
        resnet.layer2[0].bn2.register_forward_hook(manual("bn2")),  # a module without ReLU of its own
    ]
    try:
        with torch.no_grad(), tap(resnet, "layer2") as t, tap(resnet, "layer2.0.bn2") as t_bn:
            resnet(images)
    finally:
        for handle in handles:
            handle.remove()
    assert t.activations.shape == (2, 128, 8, 8)
    torch.testing.assert_close(t.activations, seen["layer2"])  # a ResNet stage ends with its ReLU
    assert (seen["bn2"] < 0).any(), "the BatchNorm output should have negative values to clip"
    torch.testing.assert_close(t_bn.activations, torch.relu(seen["bn2"]))


def test_tap_keeps_the_latest_forward_and_what_flows_on_is_unchanged(resnet, images):
    resnet.eval()
    with torch.no_grad():
        plain = resnet(images)
        with tap(resnet, "layer2.0.bn2") as t:
            resnet(images[:1])
            tapped = resnet(images)
    assert t.activations.shape[0] == 2  # the latest call, not the first
    torch.testing.assert_close(tapped, plain)  # ReLU only on the kept copy


def test_the_hook_is_removed_after_the_block(resnet, images):
    with torch.no_grad():
        with tap(resnet, "layer2") as t:
            resnet(images)
        kept = t.activations
        resnet(torch.rand(3, 3, 64, 64))
    assert t.activations is kept and t.activations.shape[0] == 2
    assert not resnet.layer2._forward_hooks


def test_the_hook_is_removed_when_the_block_raises(resnet, images):
    with pytest.raises(RuntimeError, match="boom"), tap(resnet, "layer2"):
        raise RuntimeError("boom")
    assert not resnet.layer2._forward_hooks


def test_unknown_layer_lists_close_and_top_level_names(resnet):
    with pytest.raises(ValueError, match="no module named 'layr2'") as err:
        with tap(resnet, "layr2"):
            pass
    message = str(err.value)
    assert "close matches: layer2" in message and "top-level modules: conv1, bn1" in message
    assert not any(m._forward_hooks for m in resnet.modules()), "a refused tap must not leave a hook"


def test_non_4d_output_names_the_shape_it_got(resnet, images):
    with pytest.raises(ValueError, match=r"needs a \(B, C, H, W\) map, but 'fc' output \(2, 16\)"):
        with tap(resnet, "fc"):
            resnet(images)
    assert not resnet.fc._forward_hooks


def test_reading_activations_before_any_forward_says_so(resnet):
    with tap(resnet, "layer2") as t, pytest.raises(RuntimeError, match="no forward call has run through"):
        _ = t.activations


def test_tap_works_on_a_timm_convnext(images):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=8)
    with tap(model, "stages.1") as t:
        embeddings = model(images)
        loss = ecloss(t.activations)
    assert embeddings.shape == (2, 8) and t.activations.shape == (2, 80, 8, 8)
    assert (t.activations >= 0).all()  # ConvNeXt stages end without a ReLU: the tap applies it
    loss.backward()
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.stages[2].parameters())

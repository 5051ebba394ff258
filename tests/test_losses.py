"""ECLoss, its baselines and the margin heads: the formulas of METHOD sections 3-5, checked on small maps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ecl.losses import (
    ECLoss,
    MarginHead,
    TemplateMask,
    activation_template,
    consistency_loss,
    ecloss,
    find_peaks,
    icnn_filter_loss,
    make_head,
    positive_template,
    sad_loss,
)


def original(activations: torch.Tensor, **kwargs):
    """ECLoss with the original setting (beta 4, argmax peaks), which the hand-computed values assume."""
    return ecloss(activations, **{"beta": 4.0, "peak": "argmax", **kwargs})


def naive_ecloss(activations: torch.Tensor, beta: float = 4.0, eps: float = 1e-6) -> torch.Tensor:
    """METHOD section 4 written as a loop over maps and cells (the reference the vectorised loss must
    equal)."""
    batch, channels, height, width = activations.shape
    n = max(height, width)
    terms = []
    for b in range(batch):
        for c in range(channels):
            a = activations[b, c].clamp_min(0)
            if a.max() <= 0:
                continue
            flat_index = int(a.flatten().argmax())
            mu_i, mu_j = divmod(flat_index, width)
            t = torch.zeros(height, width, dtype=a.dtype)
            for i in range(height):
                for j in range(width):
                    t[i, j] = max(1 - beta * (abs(i - mu_i) + abs(j - mu_j)) / n, 0.0)
            terms.append(1 - (a * t).sum() / (a.norm() * t.norm() + eps))
    if not terms:
        return torch.zeros((), dtype=activations.dtype)
    return torch.stack(terms).mean()


def naive_div(activations: torch.Tensor) -> torch.Tensor:
    per_image = []
    for a in activations.clamp_min(0):
        active = [c for c in range(a.shape[0]) if a[c].max() > 0]
        if len(active) < 2:
            continue
        total = 0.0
        for c in active:
            for d in active:
                if c != d:
                    total = total + (F.cosine_similarity(a[c].flatten(), a[d].flatten(), dim=0)) ** 2
        per_image.append(total / (len(active) * (len(active) - 1)))
    return torch.stack(per_image).mean() if per_image else torch.zeros(())


# ------------------------------------------------------------------------------------- templates
def test_template_matches_formula_on_hand_computed_cells():
    # 5 x 7 map: n = 7, beta = 4, peak at (1, 2).
    t = activation_template(torch.tensor([1, 2]), (5, 7), beta=4.0)
    assert t.shape == (5, 7)
    assert t[1, 2] == 1.0
    assert t[1, 3] == pytest.approx(1 - 4 / 7)  # L1 distance 1
    assert t[2, 3] == pytest.approx(1 - 8 / 7)  # distance 2: -1/7
    assert t[4, 6] == -1.0  # distance 7: 1 - 4 = -3, floored at -1
    assert t[0, 0] == pytest.approx(1 - 12 / 7)  # distance 3: -5/7
    tp = positive_template(torch.tensor([1, 2]), (5, 7), beta=4.0)
    assert tp[2, 3] == 0.0 and tp[1, 3] == pytest.approx(3 / 7)
    torch.testing.assert_close(tp, t.clamp_min(0))


def test_template_batched_shapes_and_beta():
    peaks = torch.tensor([[[0, 0], [3, 3]], [[2, 1], [0, 3]]])
    t = activation_template(peaks, (4, 4), beta=2.0)
    assert t.shape == (2, 2, 4, 4)
    torch.testing.assert_close(t[1, 0], activation_template(torch.tensor([2, 1]), (4, 4), beta=2.0))
    assert t[0, 0, 1, 1] == pytest.approx(1 - 2 * 2 / 4)


def test_find_peaks_argmax_first_on_ties_and_centroid():
    a = torch.zeros(1, 2, 3, 4)
    a[0, 0, 1, 2] = 5.0
    a[0, 0, 2, 3] = 5.0  # tie: the first in row-major order wins
    a[0, 1, 0, 0] = 1.0
    a[0, 1, 2, 2] = 1.0
    peaks = find_peaks(a)
    assert peaks.dtype == torch.long
    assert peaks.tolist() == [[[1, 2], [0, 0]]]
    centroid = find_peaks(a, mode="centroid")
    assert centroid.tolist() == [[[2, 2], [1, 1]]]  # (1.5, 2.5) rounds half to even; (1, 1)
    dead = find_peaks(torch.zeros(1, 1, 3, 3), mode="centroid")
    assert dead.tolist() == [[[0, 0]]]


# ---------------------------------------------------------------------------------------- ECLoss
def test_ecloss_is_zero_for_scaled_templates_in_any_shape():
    peaks = torch.tensor([[[0, 0], [2, 5], [4, 1]], [[3, 3], [1, 6], [4, 6]]])
    maps = positive_template(peaks, (5, 7)) * torch.tensor([0.5, 3.0, 100.0]).view(1, 3, 1, 1)
    assert original(maps).item() == pytest.approx(0.0, abs=1e-5)


def test_ecloss_in_unit_interval_and_scale_invariant():
    torch.manual_seed(0)
    a = torch.rand(3, 4, 6, 5)
    loss = original(a)
    assert 0.0 < loss.item() <= 1.0
    scaled = a * torch.tensor([0.1, 1.0, 7.0, 1000.0]).view(1, 4, 1, 1)
    assert original(scaled).item() == pytest.approx(loss.item(), abs=1e-5)
    # A map orthogonal to its template cannot exist (the peak is inside), but a flat map is far from it.
    flat = torch.ones(1, 1, 9, 9)
    assert 0.5 < original(flat).item() <= 1.0


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (3, 2, 4, 7), (1, 4, 1, 6)])
def test_ecloss_equals_naive_loop(shape):
    torch.manual_seed(1)
    a = torch.randn(*shape, dtype=torch.float64).relu()  # includes zeros and some dead maps
    a[0, 0] = 0.0
    torch.testing.assert_close(original(a), naive_ecloss(a))


def test_ecloss_dead_maps_are_excluded_and_all_dead_gives_zero_with_gradient():
    torch.manual_seed(2)
    a = torch.rand(2, 3, 4, 4)
    b = a.clone()
    b[:, 1] = 0.0
    torch.testing.assert_close(original(b), naive_ecloss(b))
    dead = torch.zeros(2, 3, 4, 4, requires_grad=True)
    loss = original(dead, gamma=0.5)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(dead.grad, torch.zeros_like(dead))
    negative = (-torch.rand(1, 2, 3, 3)).requires_grad_()
    loss = original(negative)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(negative.grad).all()


def test_ecloss_gradients_finite_and_gradcheck():
    torch.manual_seed(3)
    # Distinct positive values keep the argmax away from ties (the peak is piecewise constant).
    a = (torch.rand(2, 3, 4, 5, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: original(x), (a,))
    assert torch.autograd.gradcheck(lambda x: original(x, gamma=0.3, peak="centroid"), (a,))
    b = torch.rand(2, 3, 4, 5, requires_grad=True)
    original(b, gamma=1.0).backward()
    assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0


def test_ecloss_gradient_pulls_towards_the_template():
    # One step of gradient descent on a noisy blob lowers the loss.
    t = positive_template(torch.tensor([[[2, 3]]]), (6, 6))
    a = (t + 0.3 * torch.rand(1, 1, 6, 6)).requires_grad_()
    loss = original(a)
    loss.backward()
    with torch.no_grad():
        after = original(a - 0.5 * a.grad / a.grad.norm())
    assert after < loss


def test_ecloss_diversity_term_and_parts():
    torch.manual_seed(4)
    a = torch.rand(3, 4, 5, 5)
    a[1, 2:] = 0.0
    a[2, 1:] = 0.0  # only one active map: no pair, excluded from the mean
    loss, parts = original(a, gamma=0.25, return_parts=True)
    torch.testing.assert_close(parts["div"], naive_div(a))
    torch.testing.assert_close(parts["match"], naive_ecloss(a))
    torch.testing.assert_close(loss, parts["match"] + 0.25 * parts["div"])
    assert parts["active"].item() == pytest.approx(7 / 12)
    assert not parts["match"].requires_grad
    torch.testing.assert_close(sad_loss(a), naive_div(a))
    _, parts0 = original(a, return_parts=True)  # gamma = 0 still reports the diversity
    torch.testing.assert_close(parts0["div"], parts["div"])
    # Channels peaking at disjoint places do not overlap at all.
    disjoint = positive_template(torch.tensor([[[0, 0], [7, 7]]]), (8, 8))
    assert sad_loss(disjoint).item() == pytest.approx(0.0)


def test_ecloss_module_holds_hyperparameters():
    torch.manual_seed(5)
    a = torch.rand(2, 3, 5, 5)
    module = ECLoss(beta=2.0, gamma=0.1, peak="centroid")
    torch.testing.assert_close(module(a), original(a, beta=2.0, gamma=0.1, peak="centroid"))
    assert len(list(module.parameters())) == 0
    with pytest.raises(ValueError, match="peak"):
        ECLoss(peak="max")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        original(torch.rand(3, 5, 5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ecloss_low_precision_inputs_and_autocast(dtype):
    torch.manual_seed(6)
    a = torch.rand(2, 3, 6, 6) * 300  # squared norms would overflow fp16 without the float32 cast
    reference = original(a)
    low = a.to(dtype).requires_grad_()
    loss = original(low, gamma=0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(original(a.to(dtype).float(), gamma=0.1).item(), abs=1e-5)
    loss.backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv = torch.nn.Conv2d(3, 3, 1)
        mapped = conv(a)
        assert mapped.dtype == torch.bfloat16
        loss = original(mapped.relu(), gamma=0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert 0 <= reference.item() <= 1


def test_template_mask_multiplies_by_positive_template():
    torch.manual_seed(7)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = TemplateMask(beta=4.0)(x)
    expected = x * positive_template(find_peaks(x.detach().clamp_min(0)), (6, 6))
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    torch.testing.assert_close(x.grad, positive_template(find_peaks(x.detach().clamp_min(0)), (6, 6)))


# --------------------------------------------------------------------------------------- ICNN
def naive_icnn(activations: torch.Tensor, beta: float = 4.0) -> torch.Tensor:
    batch, channels, height, width = activations.shape
    n = max(height, width)
    tau, alpha = 0.5 / n**2, n**2 / (1 + n**2)
    templates = [
        tau * activation_template(torch.tensor([i, j]), (height, width), beta, dtype=activations.dtype)
        for i in range(height)
        for j in range(width)
    ]
    templates.append(torch.full((height, width), -tau, dtype=activations.dtype))
    priors = [alpha / (height * width)] * (height * width) + [1 - alpha]
    losses = []
    for c in range(channels):
        x = activations[:, c]
        p_x_t = torch.stack([torch.softmax((x * t).sum(dim=(-2, -1)), dim=0) for t in templates])  # (T, B)
        prior = torch.tensor(priors, dtype=x.dtype).unsqueeze(1)
        p_x = (prior * p_x_t).sum(dim=0)
        losses.append(-(prior * p_x_t * (p_x_t / p_x).log()).sum())
    return torch.stack(losses).mean()


def test_icnn_filter_loss_matches_naive_definition_and_is_nonpositive():
    torch.manual_seed(8)
    a = torch.rand(4, 3, 3, 5, dtype=torch.float64) * 50
    loss = icnn_filter_loss(a)
    torch.testing.assert_close(loss, naive_icnn(a))
    assert loss.item() <= 0.0
    b = a.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: icnn_filter_loss(x), (b,))
    huge = (torch.rand(3, 2, 4, 4) * 1e5).requires_grad_()  # logsumexp keeps it finite
    out = icnn_filter_loss(huge)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(huge.grad).all()


def test_icnn_prefers_blobs_at_varied_places_over_flat_maps():
    # MI is high when each map looks like one template and different images use different templates.
    peaks = torch.tensor([[[0, 0]], [[4, 4]], [[0, 4]], [[4, 0]]])
    blobs = positive_template(peaks, (5, 5)) * 200
    flat = torch.ones(4, 1, 5, 5) * blobs.mean()
    assert icnn_filter_loss(blobs) < icnn_filter_loss(flat)


# ------------------------------------------------------------------------------------ margin heads
def test_margin_head_zero_margins_is_cross_entropy_on_scaled_cosine():
    torch.manual_seed(9)
    head = MarginHead(8, 5, s=30.0, m1=1.0, m2=0.0, m3=0.0)
    emb, labels = torch.randn(6, 8), torch.randint(0, 5, (6,))
    logits = head(emb, labels)
    cos = F.normalize(emb) @ F.normalize(head.weight).T
    torch.testing.assert_close(logits, 30.0 * cos)
    torch.testing.assert_close(F.cross_entropy(logits, labels), F.cross_entropy(30.0 * cos, labels))


def test_arcface_and_cosface_margins_on_target_only():
    torch.manual_seed(10)
    emb, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    arc = make_head("arcface", 8, 5, s=10.0)
    cos_head = make_head("cosface", 8, 5, s=10.0, margin=0.2)
    cos_head.weight.data.copy_(arc.weight.data)
    cos = arc.cosine(emb)
    target = cos[torch.arange(6), labels]
    theta = torch.acos(target)
    expected_arc = torch.where(theta + 0.5 > math.pi, target - 0.5 * math.sin(0.5), torch.cos(theta + 0.5))
    logits = arc(emb, labels)
    torch.testing.assert_close(logits[torch.arange(6), labels], 10.0 * expected_arc, atol=1e-5, rtol=1e-5)
    other = torch.ones_like(cos, dtype=torch.bool)
    other[torch.arange(6), labels] = False
    torch.testing.assert_close(logits[other], 10.0 * cos[other])
    torch.testing.assert_close(cos_head(emb, labels)[torch.arange(6), labels], 10.0 * (target - 0.2))
    assert make_head("softmax", 8, 5).m2 == 0.0
    with pytest.raises(ValueError, match="softmax head has no margin"):
        make_head("softmax", 8, 5, margin=0.3)
    with pytest.raises(ValueError, match="kind"):
        make_head("sphereface", 8, 5)


def test_arcface_corner_cases_threshold_easy_margin_and_ignored_labels():
    head = MarginHead(2, 2, s=1.0, m2=0.5)
    head.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    angles = torch.tensor([0.0, 1.0, 2.5, 3.0, math.pi])  # theta to class 0
    emb = torch.stack((torch.cos(angles), torch.sin(angles)), dim=1)
    labels = torch.zeros(5, dtype=torch.long)
    logits = head(emb, labels)[:, 0]
    cos = torch.cos(angles)
    assert logits[1].item() == pytest.approx(math.cos(1.5), abs=1e-5)
    # theta + m > pi: the linear fallback, not the rising cos(theta + m).
    for k in (3, 4):
        assert logits[k].item() == pytest.approx(cos[k].item() - 0.5 * math.sin(0.5), abs=1e-5)
    assert logits[4] < logits[3] < logits[2] < logits[1] < logits[0]  # monotone in theta
    assert (logits <= cos + 1e-6).all()
    easy = MarginHead(2, 2, s=1.0, m2=0.5, easy_margin=True)
    easy.weight.data = head.weight.data.clone()
    easy_logits = easy(emb, labels)[:, 0]
    assert easy_logits[2].item() == pytest.approx(cos[2].item(), abs=1e-6)  # cos < 0: no margin
    assert easy_logits[1].item() == pytest.approx(math.cos(1.5), abs=1e-5)
    ignored = head(emb, torch.full((5,), -1))
    torch.testing.assert_close(ignored, head.cosine(emb))
    # An embedding exactly on its class centre still has a finite gradient.
    on_centre = torch.tensor([[1.0, 0.0]], requires_grad=True)
    F.cross_entropy(head(on_centre, torch.tensor([0])), torch.tensor([0])).backward()
    assert torch.isfinite(on_centre.grad).all()


def test_sphereface_style_multiplicative_margin_and_autocast():
    torch.manual_seed(11)
    head = MarginHead(4, 3, s=8.0, m1=2.0, m2=0.0, m3=0.0)
    emb, labels = torch.randn(5, 4), torch.randint(0, 3, (5,))
    cos = head.cosine(emb)[torch.arange(5), labels]
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    expected = torch.where(theta > math.pi / 2, cos, torch.cos(2 * theta))
    torch.testing.assert_close(
        head(emb, labels)[torch.arange(5), labels], 8.0 * expected, atol=1e-5, rtol=1e-5
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = make_head("arcface", 4, 3)(emb.bfloat16(), labels)
    assert logits.dtype == torch.float32


def test_ecloss_properties_on_random_shapes():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=40, deadline=None)
    @hypothesis.given(
        shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 7), st.integers(1, 7)),
        scale=st.floats(1e-3, 1e3),
        seed=st.integers(0, 2**16),
    )
    def check(shape, scale, seed):
        generator = torch.Generator().manual_seed(seed)
        a = torch.randn(*shape, generator=generator, dtype=torch.float64).relu()
        loss = original(a)
        assert 0.0 <= loss.item() <= 1.0
        # Scale invariance holds up to the eps in the denominator: each map's term moves by at most
        # eps / (||A|| ||T+||) <= eps / ||A||, which matters only for nearly dead maps.
        norms = a.flatten(2).norm(dim=-1)
        smallest = norms[norms > 0].min().item() * min(scale, 1.0) if (norms > 0).any() else 1.0
        tolerance = 2e-6 / smallest + 1e-9
        assert abs(original(a * scale).item() - loss.item()) <= tolerance
        torch.testing.assert_close(loss, naive_ecloss(a))

    check()


@pytest.mark.parametrize("mu", [(0.0, 0.0), (3.3, 7.8), (13.0, 13.0), (6.5, 2.25), (9.0, 0.0)])
@pytest.mark.parametrize("beta", [2.0, 4.0, 8.0])
def test_subcell_peak_finds_a_template_anywhere_so_templates_are_fixed_points(mu, beta):
    template = positive_template(torch.tensor([[mu]]), (14, 14), beta=beta)
    peak = find_peaks(template, mode="subcell")
    assert peak.dtype.is_floating_point
    torch.testing.assert_close(peak[0, 0], torch.tensor(mu), atol=1e-5, rtol=0)
    assert ecloss(template, beta=beta, peak="subcell").item() < 1e-5


def test_only_the_subcell_peak_leaves_a_border_template_in_place():
    border = positive_template(torch.tensor([[[0.0, 0.0]]]), (14, 14), beta=4.0)
    assert find_peaks(border, mode="centroid").tolist() == [[[1, 1]]]  # the centroid's inward pull
    assert ecloss(border, peak="centroid").item() > 0.1
    assert find_peaks(border, mode="subcell").tolist() == [[[0.0, 0.0]]]


def test_subcell_ecloss_gradient_holds_the_peaks_fixed():
    # The sub-cell peak moves continuously with the map, so a finite-difference gradcheck would see it
    # move; the loss's gradient is, by design, the one with every peak held where it is.
    torch.manual_seed(0)
    a = torch.rand(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    peaks = find_peaks(a, mode="subcell")
    assert not peaks.requires_grad
    template = positive_template(peaks, (6, 5), beta=4.0, dtype=torch.float64)
    flat_a, flat_t = a.flatten(2), template.flatten(2)
    by_hand = (1 - (flat_a * flat_t).sum(-1) / (flat_a.norm(dim=-1) * flat_t.norm(dim=-1) + 1e-6)).mean()
    (expected,) = torch.autograd.grad(by_hand, a)
    (actual,) = torch.autograd.grad(ecloss(a, beta=4.0, peak="subcell"), a)
    torch.testing.assert_close(actual, expected)


def _consistency_by_hand(a: torch.Tensor) -> torch.Tensor:
    b, c, h, w = a.shape
    flat = a.flatten(2)
    cells = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    active = flat.amax(-1) > 0
    terms = []
    for k in range(c):
        vectors = [cells[i, :, int(flat[i, k].argmax())] for i in range(b) if active[i, k]]
        prototype = torch.stack(vectors).sum(0)
        prototype = prototype / prototype.norm()
        for i in range(b):
            if active[i, k]:
                share = flat[i, k] / flat[i, k].sum()
                terms.append((share * (1 - prototype @ cells[i])).sum())
    return torch.stack(terms).mean()


def test_consistency_matches_a_loop_and_is_zero_when_channels_fire_on_what_they_always_see():
    torch.manual_seed(0)
    a = torch.rand(3, 4, 5, 6, dtype=torch.float64)
    a[0, 1] = 0  # a dead map: left out
    torch.testing.assert_close(consistency_loss(a), _consistency_by_hand(a))
    # Two channels that each fire on one cell, the same pattern in every image, at different places.
    same = torch.zeros(2, 2, 4, 4, dtype=torch.float64)
    same[0, 0, 1, 1] = same[0, 1, 2, 3] = 1.0
    same[1, 0, 3, 0] = same[1, 1, 0, 2] = 2.0
    assert consistency_loss(same).item() == pytest.approx(0.0, abs=1e-12)
    # Channel 0 also fires, a little less, where channel 1 fires: 40% of its activation is on cells
    # that look unlike its prototype (cosine 0.71 there), so each of its maps costs 0.4 * 0.29.
    mixed = same.clone()
    mixed[:, 0] = 1.5 * same[:, 0] + same[:, 1]
    assert consistency_loss(mixed).item() == pytest.approx(2 * 0.4 * (1 - 0.5**0.5) / 4, rel=0.05)
    assert consistency_loss(3.0 * a).item() == pytest.approx(consistency_loss(a).item())


def test_consistency_moves_activation_not_features_and_adds_to_ecloss():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(consistency_loss(a), a)
    # Only through each map's share: the gradient of a share-weighted mean sums to 0 along each map
    # once scaled by the map (d/dA of sum(A * s) / sum(A) with s fixed).
    torch.testing.assert_close((grad * a).detach().sum((-2, -1)), torch.zeros(2, 3, dtype=torch.float64))
    total, parts = ecloss(a, consistency=0.5, return_parts=True)
    torch.testing.assert_close(total, ecloss(a) + 0.5 * consistency_loss(a))
    assert "cons" in parts and "cons" not in ecloss(a, return_parts=True)[1]
    with pytest.raises(ValueError, match="consistency must be >= 0"):
        ecloss(a, consistency=-1.0)


def test_peak_pull_is_the_centroids_inward_pull_on_wide_templates_only():
    from ecl.losses import peak_pull

    pull = peak_pull((14, 14), beta=4.0, mode="centroid")
    assert pull[0, 0].tolist() == [1.0, 1.0] and pull[0, 7].tolist() == [1.0, 0.0]  # corner, edge: inward
    assert pull[7, 7].tolist() == [0.0, 0.0] and pull[13, 13].tolist() == [-1.0, -1.0]
    assert (pull.abs().sum(-1) > 0).float().mean().item() == pytest.approx(52 / 196)  # the two outer rings
    for mode in ("argmax", "subcell"):
        assert peak_pull((14, 14), beta=4.0, mode=mode).abs().max().item() == 0.0
    assert peak_pull((14, 14), beta=8.0, mode="centroid").abs().max().item() == 0.0  # a small template


def test_anchored_peak_asks_each_channel_for_its_usual_place_on_the_face():
    # Three faces at different places; the "face" is channel 1, a wide blob; channel 0 sits 3 cells
    # left of it in two faces and 3 cells right of it in the third.
    faces = torch.tensor([[4.0, 4.0], [6.0, 8.0], [8.0, 5.0]])
    eye = faces + torch.tensor([[0.0, -3.0], [0.0, -3.0], [0.0, 3.0]])
    maps = torch.stack(
        [positive_template(eye, (14, 14), beta=12.0), positive_template(faces, (14, 14), beta=3.0)], 1
    )
    peaks = find_peaks(maps, mode="anchored")
    anchors = peaks[:, 1]  # the face channel's median offset is about 0: it sits on the anchor
    torch.testing.assert_close(peaks[:, 0] - anchors, torch.tensor([[0.0, -3.0]] * 3), atol=0.5, rtol=0)
    # The outlier is asked for a blob at the usual place (left of the face), not where it fired.
    assert peaks[2, 0, 1] < faces[2, 1] - 2
    # A batch of one: the rule is the sub-cell peak.
    torch.testing.assert_close(find_peaks(maps[:1], mode="anchored"), find_peaks(maps[:1], mode="subcell"))
    assert (
        ecloss(maps[:2], beta=12.0, peak="anchored").item() < ecloss(maps, beta=12.0, peak="anchored").item()
    )


def test_the_defaults_are_the_setting_chosen_on_validation_everywhere(repo_root):
    import inspect

    from ecl.config import LossConfig, load_config
    from ecl.experiments import METHODS, SEARCH_POINTS, method_config
    from ecl.losses import DEFAULT_BETA, DEFAULT_PEAK, DEFAULT_WEIGHT, ECLoss

    defaults = inspect.signature(ecloss).parameters
    assert (defaults["beta"].default, defaults["peak"].default, defaults["gamma"].default) == (
        8.0,
        "anchored",
        0.0,
    )
    assert (DEFAULT_BETA, DEFAULT_PEAK, DEFAULT_WEIGHT) == (8.0, "anchored", 10.0)
    module = ECLoss()
    assert (module.beta, module.peak, module.gamma, module.consistency) == (8.0, "anchored", 0.0, 0.0)
    config = LossConfig()
    assert (config.lambda_, config.beta, config.peak, config.gamma) == (
        DEFAULT_WEIGHT,
        DEFAULT_BETA,
        DEFAULT_PEAK,
        0.0,
    )
    chosen = SEARCH_POINTS["layer2 lambda=10 anchored beta=8"].overrides
    for name in ("faceparts-quick", "faceparts-grid", "faceparts-full", "lfw-quick", "lfw-full", "casia-r50"):
        preset = load_config(repo_root / "configs" / f"{name}.yaml")
        loss = method_config(preset, "ecloss").loss
        assert (loss.lambda_, loss.beta, loss.peak, loss.gamma, loss.consistency) == (
            10.0,
            8.0,
            "anchored",
            0.0,
            0.0,
        )
        assert preset.model.target_layer == "layer2", name
    grid = load_config(repo_root / "configs" / "faceparts-grid.yaml")
    from ecl.config import apply_overrides, config_hash

    searched = method_config(
        apply_overrides(load_config(repo_root / "configs" / "faceparts-search.yaml"), chosen), "ecloss"
    )
    assert config_hash(method_config(grid, "ecloss")) == config_hash(
        searched
    )  # the grid's ECLoss is the choice
    original = method_config(grid, "ecloss-original")
    assert (original.loss.lambda_, original.loss.beta, original.loss.peak) == (1.0, 4.0, "argmax")
    assert original.model.target_layer == "layer3" and "ecloss-original" in METHODS

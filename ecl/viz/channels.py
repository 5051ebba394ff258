"""What each target-layer channel sees: the interactive channel explorer and the top channels per part."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ecl.viz.images import heatmap_overlay, image_hwc, to_png


def _channel_order(num_channels: int, channel_scores: Any = None) -> list[int]:
    if channel_scores is None:
        return list(range(num_channels))
    scores = np.nan_to_num(np.asarray(channel_scores, dtype=np.float64), nan=-np.inf)
    return [int(c) for c in np.argsort(-scores, kind="stable")]


def channel_explorer(
    images: torch.Tensor,
    activations: torch.Tensor,
    part_names: Sequence[str] = (),
    channel_parts: Any = None,
    channel_scores: Any = None,
    scale: int = 3,
    title: str = "",
):
    """Pick an image, a part and a channel; see the channel's activation over the face.

    Channels can be filtered by the part they were assigned to and are listed by ``channel_scores``
    (e.g. their best part IoU), best first. The picture is an ``ipywidgets.Image``, so the saved
    notebook shows the last choice even without a kernel.

    Args:
        images: ``(N, 3, S, S)`` images in [0, 1].
        activations: ``(N, C, H, W)`` target-layer maps of those images.
        part_names: Names of the parts channels can be assigned to.
        channel_parts: ``(C,)`` assigned part index per channel, -1 for none.
        channel_scores: ``(C,)`` score used to sort channels (higher first), e.g. best part IoU.
        scale: Enlargement of the drawn image.
        title: Shown above the controls.

    Returns:
        An ``ipywidgets.VBox``.
    """
    import ipywidgets as widgets

    images = images.detach().cpu()
    activations = activations.detach().cpu().float()
    num_images, num_channels = activations.shape[:2]
    parts = np.full(num_channels, -1) if channel_parts is None else np.asarray(channel_parts)
    scores = None if channel_scores is None else np.asarray(channel_scores, dtype=np.float64)
    order = _channel_order(num_channels, scores)

    def label(c: int) -> str:
        part = part_names[parts[c]] if parts[c] >= 0 and len(part_names) else "none"
        score = f", score {scores[c]:.3f}" if scores is not None else ""
        return f"channel {c} ({part}{score})"

    part_choice = widgets.Dropdown(
        options=["all channels", *part_names], value="all channels", description="part"
    )
    channel_choice = widgets.Dropdown(description="channel", layout=widgets.Layout(width="340px"))
    image_choice = widgets.IntSlider(value=0, min=0, max=num_images - 1, description="image")
    opacity = widgets.FloatSlider(value=0.55, min=0.0, max=1.0, step=0.05, description="opacity")
    picture = widgets.Image(format="png", width=int(images.shape[-1]) * scale)
    caption = widgets.HTML()

    def refill(_: Any = None) -> None:
        wanted = part_choice.value
        keep = [
            c for c in order if wanted == "all channels" or (parts[c] >= 0 and part_names[parts[c]] == wanted)
        ]
        channel_choice.options = [(label(c), c) for c in keep] or [("no channel assigned to this part", -1)]
        channel_choice.value = channel_choice.options[0][1]

    def redraw(_: Any = None) -> None:
        c, i = channel_choice.value, image_choice.value
        if c is None or c < 0:
            picture.value = to_png(image_hwc(images[i]), scale=scale)
            caption.value = "no channel to show"
            return
        overlay = heatmap_overlay(images[i], activations[i, c], opacity=opacity.value)
        picture.value = to_png(overlay, scale=scale)
        peak = int(activations[i, c].argmax())
        height, width = activations.shape[-2:]
        caption.value = (
            f"{label(c)}: max activation {float(activations[i, c].max()):.3f} on image {i}, "
            f"peak at cell (row {peak // width}, col {peak % width}) of {height}x{width}"
        )

    part_choice.observe(refill, names="value")
    for control in (channel_choice, image_choice, opacity):
        control.observe(redraw, names="value")
    refill()
    redraw()
    header = [widgets.HTML(f"<b>{title}</b>")] if title else []
    return widgets.VBox(
        [
            *header,
            widgets.HBox([part_choice, channel_choice]),
            widgets.HBox([image_choice, opacity]),
            picture,
            caption,
        ]
    )


def top_channels_figure(
    images: torch.Tensor,
    activations: torch.Tensor,
    part_names: Sequence[str],
    channel_parts: Any,
    channel_scores: Any,
    per_part: int = 3,
    image_indices: Sequence[int] = (0, 1, 2),
    opacity: float = 0.55,
    title: str | None = None,
):
    """The static companion of :func:`channel_explorer`: for each part, its best channels on a few images.

    Rows are (part, channel) for the ``per_part`` highest-scoring channels assigned to each part (parts
    with no channel are left out); columns are the images.

    Returns:
        A plotly figure.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    parts = np.asarray(channel_parts)
    order = _channel_order(len(parts), channel_scores)
    rows = [(p, c) for p in range(len(part_names)) for c in [c for c in order if parts[c] == p][:per_part]]
    if not rows:
        fig = go.Figure()
        fig.update_layout(title=(title or "") + " - no channel is assigned to a part", height=120)
        return fig
    scores = np.asarray(channel_scores, dtype=np.float64)
    titles = [
        f"{part_names[p]}: ch {c} ({scores[c]:.2f})" if k == 0 else ""
        for p, c in rows
        for k in range(len(image_indices))
    ]
    fig = make_subplots(
        rows=len(rows),
        cols=len(image_indices),
        subplot_titles=titles,
        horizontal_spacing=0.01,
        vertical_spacing=0.25 / len(rows),
    )
    for r, (_, c) in enumerate(rows):
        for k, i in enumerate(image_indices):
            overlay = heatmap_overlay(images[i], activations[i, c].detach().cpu().float(), opacity=opacity)
            fig.add_trace(go.Image(z=overlay, hoverinfo="skip"), row=r + 1, col=k + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=140 * len(rows) + 60, margin=dict(l=5, r=5, t=50, b=5), title=title)
    return fig


def template_fit_figure(
    images: torch.Tensor,
    activations: torch.Tensor,
    channel: int,
    image_indices: Sequence[int] = (0, 1, 2),
    beta: float = 4.0,
    peak: str = "argmax",
    opacity: float = 0.55,
    title: str | None = None,
):
    """A trained channel's map beside the template ECLoss fits to it, on a few faces.

    For each image: the face with the channel's map over it, the map itself, and the positive template
    ``T+`` at the map's peak (the peak rule of the training, found from all channels of the shown faces),
    titled with the matching loss ``1 - cos(map, T+)`` of that map (0 when the map is exactly a pyramid).

    Args:
        images: ``(N, 3, S, S)`` in [0, 1]. activations: ``(N, C, H, W)`` of those images.
        channel: the channel shown. image_indices: the images, one row each.
        beta, peak: the template's slope and peak rule (those the model was trained with).

    Returns:
        A plotly figure.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ecl.losses import find_peaks, positive_template

    shown = activations[list(image_indices)].detach().cpu().float().clamp_min(0)
    # Peaks from every channel of the shown faces, as in training (the anchored rule needs them all).
    peaks = find_peaks(shown, mode=peak)[:, channel : channel + 1]
    maps = shown[:, channel : channel + 1]
    templates = positive_template(peaks, tuple(maps.shape[-2:]), beta=beta)
    cosine = (maps * templates).sum((-2, -1)) / (
        maps.norm(dim=(-2, -1)) * templates.norm(dim=(-2, -1)) + 1e-6
    )
    titles = []
    for k, i in enumerate(image_indices):
        loss = float(1.0 - cosine[k, 0])
        row, col = (float(v) for v in peaks[k, 0])
        titles += [f"image {i}", f"channel {channel}: L_match {loss:.2f}", f"T+ at ({row:.1f}, {col:.1f})"]
    fig = make_subplots(rows=len(image_indices), cols=3, subplot_titles=titles, horizontal_spacing=0.04)
    for k, i in enumerate(image_indices):
        overlay = heatmap_overlay(images[i], maps[k, 0], opacity=opacity)
        fig.add_trace(go.Image(z=overlay, hoverinfo="skip"), row=k + 1, col=1)
        for col, values in ((2, maps[k, 0] / maps[k, 0].max().clamp_min(1e-12)), (3, templates[k, 0])):
            fig.add_trace(
                go.Heatmap(z=values.numpy(), zmin=0, zmax=1, colorscale="Viridis", showscale=False,
                           hovertemplate="row %{y}, col %{x}: %{z:.2f}<extra></extra>"),
                row=k + 1, col=col,
            )  # fmt: skip
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    for k in range(len(image_indices)):
        fig.update_yaxes(autorange=None, row=k + 1, col=1)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=220 * len(image_indices) + 60, margin=dict(l=5, r=5, t=60, b=5), title=title)
    return fig

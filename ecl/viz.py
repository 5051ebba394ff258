"""Figures and widgets for the book and for your own notebooks.

Every function returns a plotly figure, an ipywidgets widget or an image array; none shows or saves
anything. Widgets draw their pictures into ``ipywidgets.Image`` (PNG bytes), whose state is saved with
the executed notebook, so the published page shows the last picture even without a kernel; each widget
has a static plotly figure beside it in the book.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "channel_explorer",
    "colormap",
    "faces_figure",
    "masks_overlay",
    "metric_bars",
    "roc_figure",
    "top_channels_figure",
    "training_curves",
    "heatmap_overlay",
    "to_png",
    "template_figure",
    "template_explorer",
    "LivePlot",
]

# Viridis at 9 evenly spaced stops (matplotlib's published table, rounded); linear interpolation between
# them is visually indistinguishable at the sizes used here and keeps matplotlib out of the dependencies.
_VIRIDIS = np.array(
    [
        [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
        [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
    ],
    dtype=np.float64,
)


def colormap(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map values to viridis RGB colours.

    Args:
        values: Any array of numbers.
        vmin, vmax: Value range mapped to the ends of the colour map (default: the array's range).

    Returns:
        ``uint8`` array of shape ``values.shape + (3,)``.
    """
    values = np.asarray(values, dtype=np.float64)
    lo = np.nanmin(values) if vmin is None else vmin
    hi = np.nanmax(values) if vmax is None else vmax
    scaled = np.clip((values - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    position = np.nan_to_num(scaled) * (len(_VIRIDIS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (position - low)[..., None]
    rgb = _VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac
    return rgb.round().astype(np.uint8)


def _image_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A (3, H, W) float image in [0, 1] (or an (H, W, 3) uint8 array) as (H, W, 3) uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def heatmap_overlay(
    image: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    opacity: float = 0.5,
    vmax: float | None = None,
) -> np.ndarray:
    """Blend a channel's activation map, upsampled bilinearly to the image, over the image.

    Args:
        image: ``(3, H, W)`` float in [0, 1] or ``(H, W, 3)`` uint8.
        heatmap: ``(h, w)`` activation map (any size; bilinear upsampling as in the metrics).
        opacity: Weight of the heat map, 0 (image only) to 1 (heat map only).
        vmax: Value drawn as the brightest colour (default: the map's maximum), so maps can share a scale.

    Returns:
        ``(H, W, 3)`` uint8 array.
    """
    rgb = _image_hwc(image)
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    heat = torch.nn.functional.interpolate(heat, size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    colours = colormap(heat.numpy(), vmin=0.0, vmax=vmax if vmax is not None else max(float(heat.max()), 1e-12))
    blended = (1 - opacity) * rgb.astype(np.float64) + opacity * colours.astype(np.float64)
    return blended.round().astype(np.uint8)


def to_png(array: np.ndarray, scale: int = 1) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 (or ``(H, W)``) array as PNG bytes, enlarged ``scale`` times (nearest)."""
    from PIL import Image

    image = Image.fromarray(np.asarray(array))
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def template_figure(
    peaks: Sequence[tuple[int, int]] = ((4, 4), (9, 10)),
    size: tuple[int, int] = (14, 14),
    beta: float = 4.0,
):
    """The signed template ``T_mu`` and its positive part ``T_mu^+`` for a few peak positions.

    Args:
        peaks: ``(row, column)`` peak cells, one column of the figure each.
        size: ``(H, W)`` of the map.
        beta: Template slope.

    Returns:
        A plotly figure: one row for ``T_mu``, one for ``T_mu^+``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ecl.losses import activation_template

    peaks_t = torch.tensor(list(peaks), dtype=torch.long)
    signed = activation_template(peaks_t, size, beta=beta).numpy()
    titles = [f"T at mu={tuple(p)}" for p in peaks] + [f"T+ at mu={tuple(p)}" for p in peaks]
    fig = make_subplots(rows=2, cols=len(peaks), subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.12)
    for k in range(len(peaks)):
        for row, values in ((1, signed[k]), (2, np.maximum(signed[k], 0))):
            fig.add_trace(
                go.Heatmap(z=values, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                           showscale=(k == 0 and row == 1), hovertemplate="row %{y}, col %{x}: %{z:.2f}<extra></extra>"),
                row=row, col=k + 1,
            )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    fig.update_xaxes(constrain="domain")
    fig.update_layout(height=560, margin=dict(l=20, r=20, t=60, b=20),
                      title=f"ICNN activation templates, beta={beta:g}, {size[0]}x{size[1]} map")
    return fig


def template_explorer(size: tuple[int, int] = (14, 14), beta: float = 4.0, scale: int = 16):
    """Sliders for ``beta`` and the peak position, drawing ``T_mu^+`` and reporting its support.

    Args:
        size: ``(H, W)`` of the map.
        beta: Initial slope.
        scale: Pixels per map cell in the drawing.

    Returns:
        An ``ipywidgets.VBox``.
    """
    import ipywidgets as widgets

    from ecl.losses import positive_template

    height, width = size
    beta_slider = widgets.FloatSlider(value=beta, min=0.5, max=14.0, step=0.5, description="beta")
    row_slider = widgets.IntSlider(value=height // 3, min=0, max=height - 1, description="peak row")
    col_slider = widgets.IntSlider(value=width // 2, min=0, max=width - 1, description="peak col")
    picture = widgets.Image(format="png", width=width * scale, height=height * scale)
    caption = widgets.HTML()

    def redraw(_: Any = None) -> None:
        peak = torch.tensor([[row_slider.value, col_slider.value]])
        template = positive_template(peak, size, beta=beta_slider.value)[0].numpy()
        picture.value = to_png(colormap(template, vmin=0.0, vmax=1.0), scale=scale)
        caption.value = (
            f"T<sup>+</sup> is positive on {int((template > 0).sum())} of {height * width} cells "
            f"(L1 radius n/beta = {max(size) / beta_slider.value:.2f} cells)"
        )

    for control in (beta_slider, row_slider, col_slider):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([beta_slider, row_slider, col_slider]), picture, caption])


class LivePlot:
    """A training callback that redraws loss curves in place, for ``ecl.train.fit(..., callbacks=[...])``.

    In a notebook it keeps one display handle and updates it at most every ``every`` steps, so the saved
    notebook ends with the final curves as a normal plotly output (readable in the published book).

    Args:
        keys: Metric names to draw (those present in the events).
        every: Redraw every this many steps.
        title: Figure title.
    """

    def __init__(self, keys: Sequence[str] = ("loss",), every: int = 10, title: str = "training") -> None:
        self.keys = tuple(keys)
        self.every = max(1, int(every))
        self.title = title
        self.history: dict[str, list[tuple[int, float]]] = {key: [] for key in self.keys}
        self._handle = None

    def __call__(self, event: Mapping[str, Any]) -> None:
        step = event.get("step")
        if step is None:
            return
        for key in self.keys:
            if key in event and event[key] is not None:
                self.history[key].append((int(step), float(event[key])))
        if int(step) % self.every == 0 or event.get("event") in ("end", "epoch"):
            self.refresh()

    def figure(self):
        """The curves so far, as a plotly figure."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for key, points in self.history.items():
            if points:
                steps, values = zip(*points, strict=True)
                fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=key))
        fig.update_layout(title=self.title, xaxis_title="step", height=350, margin=dict(l=40, r=20, t=50, b=40))
        return fig

    def refresh(self) -> None:
        """Redraw in the notebook (no-op outside IPython)."""
        try:
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython is a dependency of the book extra
            return
        if self._handle is None:
            self._handle = display(self.figure(), display_id=True)
        else:
            self._handle.update(self.figure())



# Distinct colours for part masks (Tableau 10), in ``part_names`` order.
PART_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def masks_overlay(image: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray, opacity: float = 0.45,
                  parts: Sequence[int] | None = None) -> np.ndarray:
    """Colour each part mask over the image (later parts drawn over earlier ones).

    Args:
        image: ``(3, H, W)`` float in [0, 1] or ``(H, W, 3)`` uint8.
        masks: ``(P, H, W)`` boolean part masks.
        opacity: Weight of the mask colour.
        parts: Indices of the parts to draw (default: all).

    Returns:
        ``(H, W, 3)`` uint8 array.
    """
    rgb = _image_hwc(image).astype(np.float64)
    masks = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks, dtype=bool)
    for p in (range(len(masks)) if parts is None else parts):
        colour = np.array(PART_COLOURS[p % len(PART_COLOURS)], dtype=np.float64)
        rgb[masks[p]] = (1 - opacity) * rgb[masks[p]] + opacity * colour
    return rgb.round().astype(np.uint8)


def faces_figure(
    items: Sequence[Mapping[str, Any]],
    columns: int = 6,
    landmarks: bool = True,
    masks: bool = False,
    titles: Sequence[str] | None = None,
    landmark_names: Sequence[str] | None = None,
    part_names: Sequence[str] | None = None,
    height_per_row: int = 170,
):
    """A grid of dataset items with their landmarks (points) and part masks (colours) drawn.

    Args:
        items: Dataset items (dicts with "image", optionally "landmarks", "masks", "label").
        columns: Images per row.
        landmarks: Draw the landmarks (NaN ones are skipped).
        masks: Colour the part masks (items without "masks" are drawn plain).
        titles: One title per image (default: "id <label>").
        landmark_names: Hover names of the landmarks.
        part_names: Names for the mask legend line under the title.
        height_per_row: Figure height per row in pixels.

    Returns:
        A plotly figure.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = (len(items) + columns - 1) // columns
    if titles is None:
        titles = [f"id {int(item['label'])}" if "label" in item else "" for item in items]
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=list(titles),
                        horizontal_spacing=0.01, vertical_spacing=0.06 if rows > 1 else 0.0)
    for k, item in enumerate(items):
        row, col = k // columns + 1, k % columns + 1
        picture = _image_hwc(item["image"])
        if masks and "masks" in item:
            picture = masks_overlay(item["image"], item["masks"])
        fig.add_trace(go.Image(z=picture, hoverinfo="skip"), row=row, col=col)
        if landmarks and "landmarks" in item:
            points = np.asarray(item["landmarks"], dtype=np.float64)
            keep = ~np.isnan(points).any(axis=1)
            names = np.asarray(landmark_names if landmark_names is not None else [str(i) for i in range(len(points))])
            fig.add_trace(
                go.Scatter(x=points[keep, 0], y=points[keep, 1], mode="markers", text=names[keep] if len(names) == len(points) else None,
                           marker=dict(size=5, color="yellow", line=dict(width=1, color="black")),
                           hovertemplate="%{text}: (%{x:.0f}, %{y:.0f})<extra></extra>", showlegend=False),
                row=row, col=col,
            )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    title = None
    if masks and part_names:
        legend = " ".join(
            f"<span style='color:rgb{PART_COLOURS[p % len(PART_COLOURS)]}'>&#9632; {name}</span>" for p, name in enumerate(part_names)
        )
        title = dict(text=legend, font=dict(size=12))
    fig.update_layout(height=rows * height_per_row + 60, margin=dict(l=5, r=5, t=50, b=5), title=title)
    return fig


def training_curves(runs: Mapping[str, Any], keys: Sequence[str] = ("loss", "id", "match")):
    """Training curves of several runs side by side, one panel per metric, read from their ``metrics.jsonl``.

    Args:
        runs: Label -> run folder.
        keys: Step metrics to draw (a run without one of them is skipped in that panel).

    Returns:
        A plotly figure.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ecl.train import read_metrics

    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=list(keys))
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    for r, (label, run_dir) in enumerate(runs.items()):
        steps = [e for e in read_metrics(run_dir) if e.get("event") == "step"]
        for k, key in enumerate(keys):
            points = [(e["step"], e[key]) for e in steps if e.get(key) is not None]
            if not points:
                continue
            x, y = zip(*points, strict=True)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label, legendgroup=label, showlegend=(k == 0),
                                     line=dict(color=palette[r % len(palette)])), row=1, col=k + 1)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=360, margin=dict(l=40, r=20, t=50, b=40))
    return fig


def metric_bars(frame, columns: Sequence[str], group: str = "method", title: str | None = None):
    """Mean and standard deviation over seeds of a few metrics, one panel each, one bar per method.

    Args:
        frame: One row per run (e.g. :func:`ecl.reproduce.results_frame`), with a ``group`` column.
        columns: Metric columns to draw.
        group: Column whose values become the bars.
        title: Figure title.

    Returns:
        A plotly figure.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(columns), subplot_titles=list(columns))
    order = list(dict.fromkeys(frame[group]))
    for k, column in enumerate(columns):
        stats = frame.groupby(group)[column].agg(["mean", "std", "count"]).reindex(order)
        fig.add_trace(
            go.Bar(x=order, y=stats["mean"], error_y=dict(type="data", array=stats["std"].fillna(0)),
                   marker_color=["#7f7f7f" if g == "baseline" else "#1f77b4" for g in order], showlegend=False,
                   hovertemplate="%{x}: %{y:.4f}<extra></extra>"),
            row=1, col=k + 1,
        )
    fig.update_layout(height=340, margin=dict(l=40, r=20, t=60, b=40), title=title)
    return fig


def roc_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str = "ROC"):
    """ROC curves (true-accept rate against false-accept rate, log scale), one per label.

    Args:
        curves: Label -> (fpr, tpr).
        title: Figure title.

    Returns:
        A plotly figure.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, (fpr, tpr) in curves.items():
        fpr = np.clip(np.asarray(fpr, dtype=np.float64), 1e-4, 1.0)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=label))
    fig.update_xaxes(type="log", title="false accept rate", range=[-3.2, 0])
    fig.update_yaxes(title="true accept rate", range=[0, 1.02])
    fig.update_layout(title=title, height=400, margin=dict(l=50, r=20, t=50, b=40))
    return fig


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

    part_choice = widgets.Dropdown(options=["all channels", *part_names], value="all channels", description="part")
    channel_choice = widgets.Dropdown(description="channel", layout=widgets.Layout(width="340px"))
    image_choice = widgets.IntSlider(value=0, min=0, max=num_images - 1, description="image")
    opacity = widgets.FloatSlider(value=0.55, min=0.0, max=1.0, step=0.05, description="opacity")
    picture = widgets.Image(format="png", width=int(images.shape[-1]) * scale)
    caption = widgets.HTML()

    def refill(_: Any = None) -> None:
        wanted = part_choice.value
        keep = [c for c in order if wanted == "all channels" or (parts[c] >= 0 and part_names[parts[c]] == wanted)]
        channel_choice.options = [(label(c), c) for c in keep] or [("no channel assigned to this part", -1)]
        channel_choice.value = channel_choice.options[0][1]

    def redraw(_: Any = None) -> None:
        c, i = channel_choice.value, image_choice.value
        if c is None or c < 0:
            picture.value = to_png(_image_hwc(images[i]), scale=scale)
            caption.value = "no channel to show"
            return
        overlay = heatmap_overlay(images[i], activations[i, c], opacity=opacity.value)
        picture.value = to_png(overlay, scale=scale)
        peak = int(activations[i, c].argmax())
        height, width = activations.shape[-2:]
        caption.value = (f"{label(c)}: max activation {float(activations[i, c].max()):.3f} on image {i}, "
                         f"peak at cell (row {peak // width}, col {peak % width}) of {height}x{width}")

    part_choice.observe(refill, names="value")
    for control in (channel_choice, image_choice, opacity):
        control.observe(redraw, names="value")
    refill()
    redraw()
    header = [widgets.HTML(f"<b>{title}</b>")] if title else []
    return widgets.VBox([*header, widgets.HBox([part_choice, channel_choice]), widgets.HBox([image_choice, opacity]),
                         picture, caption])


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
    titles = [f"{part_names[p]}: ch {c} ({scores[c]:.2f})" if k == 0 else "" for p, c in rows for k in range(len(image_indices))]
    fig = make_subplots(rows=len(rows), cols=len(image_indices), subplot_titles=titles,
                        horizontal_spacing=0.01, vertical_spacing=0.25 / len(rows))
    for r, (_, c) in enumerate(rows):
        for k, i in enumerate(image_indices):
            overlay = heatmap_overlay(images[i], activations[i, c].detach().cpu().float(), opacity=opacity)
            fig.add_trace(go.Image(z=overlay, hoverinfo="skip"), row=r + 1, col=k + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=140 * len(rows) + 60, margin=dict(l=5, r=5, t=50, b=5), title=title)
    return fig


# --- explaining a match ---


def _breakdown_dict(breakdown: Any) -> dict[str, Any]:
    """A ``PairExplanation`` or its ``to_dict()`` as the dict."""
    return breakdown.to_dict() if hasattr(breakdown, "to_dict") else dict(breakdown)


def pair_breakdown_figure(breakdown: Any, title: str | None = None, scale: str = "auto"):
    """Bar chart of a pair's part similarities, with the overall embedding similarity beside them.

    Args:
        breakdown: a ``PairExplanation`` (``ecl.explain.explain_pair``) or its ``to_dict()``.
        title: figure title (default: names the least similar part).
        scale: ``"similarity"`` (cosine, linear axis), ``"dissimilarity"`` (1 - cosine on a log
            axis, which separates values that all lie near 1, as for a face and its chimera) or
            ``"auto"`` (dissimilarity when every value is above 0.9).

    Returns:
        A plotly figure.
    """
    import plotly.graph_objects as go

    data = _breakdown_dict(breakdown)
    parts = dict(data["parts"])
    names = list(parts) + ["overall (embedding)"]
    raw = list(parts.values()) + [data["overall"]]
    known = [v for v in raw if v is not None]
    if scale == "auto":
        scale = "dissimilarity" if known and min(known) > 0.9 else "similarity"
    if scale not in ("similarity", "dissimilarity"):
        raise ValueError(f"scale must be 'auto', 'similarity' or 'dissimilarity'; got {scale!r}")
    least = data.get("least_similar")
    colours = ["#d62728" if name == least else "#1f77b4" for name in parts] + ["#7f7f7f"]
    text = [f"{v:.4f}" if v is not None else "n/a" for v in raw]
    if scale == "similarity":
        values = [v if v is not None else 0.0 for v in raw]
        axis = dict(title="cosine similarity", range=[min(0.0, min(values) - 0.05), 1.1])
    else:
        values = [max(1.0 - v, 1e-7) if v is not None else None for v in raw]
        axis = dict(title="1 - cosine similarity (log)", type="log")
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=colours, text=text, textposition="outside",
                           hovertemplate="%{x}: %{text}<extra></extra>"))  # fmt: skip
    fig.update_layout(
        title=title or f"Part similarities (least similar: {least})", yaxis=axis, height=330,
        margin=dict(l=50, r=20, t=50, b=40),
    )  # fmt: skip
    return fig


def _tile(rows: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 pictures in a grid with white gaps."""
    h, w = rows[0][0].shape[:2]
    columns = max(len(row) for row in rows)
    out = np.full((len(rows) * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = picture
    return out


def _pair_pictures(image_a: Any, image_b: Any, explanation: Any, parts: Sequence[str] | None = None):
    """Column titles and the two rows of pictures: image, similarity saliency (ReLU), one overlay per part."""
    names = list(explanation.parts)
    parts = [p for p in (parts or names) if p in names]
    titles = ["image", "similarity saliency"] + [f"{p} channels" for p in parts]
    rows = []
    for image, saliency, maps in (
        (image_a, explanation.saliency_a, explanation.part_maps_a),
        (image_b, explanation.saliency_b, explanation.part_maps_b),
    ):
        row = [_image_hwc(image)]
        if saliency is not None:
            row.append(heatmap_overlay(image, np.maximum(saliency, 0.0)))
        for p in parts:
            row.append(heatmap_overlay(image, maps[names.index(p)]))
        rows.append(row)
    if explanation.saliency_a is None:
        titles.remove("similarity saliency")
    return titles, rows


def pair_maps_figure(image_a: Any, image_b: Any, explanation: Any, parts: Sequence[str] | None = None):
    """The static picture of a pair explanation: both images, their similarity saliency maps
    (Grad-CAM of the embedding cosine, ReLU) and what each part's channels see.

    Args:
        image_a, image_b: ``(3, S, S)`` float in [0, 1] or ``(S, S, 3)`` uint8.
        explanation: the ``PairExplanation`` of the two (with its maps).
        parts: which parts to draw (default: all in the breakdown).

    Returns:
        A plotly figure: a row per image.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles, rows = _pair_pictures(image_a, image_b, explanation, parts)
    fig = make_subplots(rows=2, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.04)  # fmt: skip
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            fig.add_trace(go.Image(z=picture, hoverinfo="skip"), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=330, margin=dict(l=5, r=5, t=40, b=5))
    return fig


def _bars_html(explanation: Any) -> str:
    """The breakdown as HTML bars (kept in the saved widget state, readable without a kernel)."""
    data = _breakdown_dict(explanation)
    least = data.get("least_similar")
    lines = []
    for name, value in [*data["parts"].items(), ("overall (embedding)", data["overall"])]:
        width = 0 if value is None else max(0.0, min(1.0, value)) * 240
        colour = "#d62728" if name == least else ("#7f7f7f" if name.startswith("overall") else "#1f77b4")
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(
            f"<div style='display:flex;align-items:center;font:12px sans-serif;margin:1px 0'>"
            f"<span style='width:130px'>{name}</span>"
            f"<span style='display:inline-block;height:12px;width:{width:.0f}px;background:{colour}'></span>"
            f"<span style='margin-left:6px'>{shown}</span></div>"
        )
    return "".join(lines)


def pair_explorer(
    model: Any,
    assignment: Any,
    dataset: Any,
    descriptor: str = "attention",
    parts: Sequence[str] | None = ("eyes", "brows", "nose", "mouth", "hair"),
    scale: int = 1,
):
    """Pick two faces, or a face and a chimera, and see which parts make them similar.

    Controls: identity and image of face A; "another face" (identity and image of face B) or
    "chimera" (A wearing one part of identity B, same pose and light, ``FaceParts.render_chimera``).
    Draws the part-similarity bars (HTML) and a picture (``ipywidgets.Image``, PNG) of both images
    with their similarity saliency and part-channel overlays, so the saved notebook keeps the last
    state offline. ``pair_breakdown_figure`` and ``pair_maps_figure`` are the static versions.

    Args:
        model: the face model. assignment: its ``ecl.explain.PartAssignment``.
        dataset: a ``FaceParts`` split (test identities). descriptor: see ``ecl.explain.part_similarity``.
        parts: parts whose channel overlays are drawn. scale: picture enlargement.

    Returns:
        An ``ipywidgets.VBox``.
    """
    import ipywidgets as widgets

    from ecl.data.faceparts import CHIMERA_PARTS, image_to_tensor
    from ecl.explain import explain_pair

    per = int(dataset.images_per_identity)
    last_identity = int(dataset.num_identities) - 1
    identity_a = widgets.BoundedIntText(value=0, min=0, max=last_identity, description="identity A")
    image_a = widgets.BoundedIntText(value=0, min=0, max=per - 1, description="image A")
    mode = widgets.ToggleButtons(options=["chimera", "another face"], value="chimera", description="B is")
    identity_b = widgets.BoundedIntText(value=min(1, last_identity), min=0, max=last_identity, description="identity B")
    image_b = widgets.BoundedIntText(value=min(1, per - 1), min=0, max=per - 1, description="image B")
    part = widgets.Dropdown(options=list(CHIMERA_PARTS), value="nose", description="swapped part")
    picture = widgets.Image(format="png")
    bars = widgets.HTML()
    caption = widgets.HTML()

    def redraw(_: Any = None) -> None:
        first = dataset[identity_a.value * per + image_a.value]["image"]
        if mode.value == "chimera":
            second = image_to_tensor(
                dataset.render_chimera(identity_a.value, identity_b.value, part.value, image_index=image_a.value)[0]
            )
            what = f"identity {identity_a.value} with the {part.value} of identity {identity_b.value}"
        else:
            second = dataset[identity_b.value * per + image_b.value]["image"]
            what = f"identity {identity_b.value}, image {image_b.value}"
        explanation = explain_pair(model, first, second, assignment, descriptor=descriptor)
        _, rows = _pair_pictures(first, second, explanation, parts)
        tiled = _tile(rows)
        picture.width = tiled.shape[1] * scale  # page width, not the PNG's natural size
        picture.value = to_png(tiled, scale=scale)
        bars.value = _bars_html(explanation)
        caption.value = (
            f"<small>A: identity {identity_a.value}, image {image_a.value}; B: {what}. Columns: image, "
            f"similarity saliency, then the channels of {', '.join(p for p in (parts or []) if p in explanation.parts)}."
            "</small>"
        )

    for control in (identity_a, image_a, mode, identity_b, image_b, part):
        control.observe(redraw, names="value")
    redraw()
    controls = widgets.VBox([widgets.HBox([identity_a, image_a]), mode, widgets.HBox([identity_b, image_b, part])])
    return widgets.VBox([controls, bars, picture, caption])


__all__ += ["pair_breakdown_figure", "pair_maps_figure", "pair_explorer"]

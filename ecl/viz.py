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
    "colormap",
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

"""Figures of the method and its results: templates, faces with their parts, training curves, metric
bars, ROC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ecl.viz.images import PART_COLOURS, colormap, image_hwc, masks_overlay, to_png


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
    fig = make_subplots(
        rows=2, cols=len(peaks), subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.12
    )
    for k in range(len(peaks)):
        for row, values in ((1, signed[k]), (2, np.maximum(signed[k], 0))):
            fig.add_trace(
                go.Heatmap(
                    z=values,
                    zmin=-1,
                    zmax=1,
                    colorscale="RdBu",
                    reversescale=True,
                    showscale=(k == 0 and row == 1),
                    hovertemplate="row %{y}, col %{x}: %{z:.2f}<extra></extra>",
                ),
                row=row,
                col=k + 1,
            )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    fig.update_xaxes(constrain="domain")
    fig.update_layout(
        height=560,
        margin=dict(l=20, r=20, t=60, b=20),
        title=f"ICNN activation templates, beta={beta:g}, {size[0]}x{size[1]} map",
    )
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
        fig.update_layout(
            title=self.title, xaxis_title="step", height=350, margin=dict(l=40, r=20, t=50, b=40)
        )
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
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=list(titles),
        horizontal_spacing=0.01,
        vertical_spacing=0.06 if rows > 1 else 0.0,
    )
    for k, item in enumerate(items):
        row, col = k // columns + 1, k % columns + 1
        picture = image_hwc(item["image"])
        if masks and "masks" in item:
            picture = masks_overlay(item["image"], item["masks"])
        fig.add_trace(go.Image(z=picture, hoverinfo="skip"), row=row, col=col)
        if landmarks and "landmarks" in item:
            points = np.asarray(item["landmarks"], dtype=np.float64)
            keep = ~np.isnan(points).any(axis=1)
            names = np.asarray(
                landmark_names if landmark_names is not None else [str(i) for i in range(len(points))]
            )
            fig.add_trace(
                go.Scatter(
                    x=points[keep, 0],
                    y=points[keep, 1],
                    mode="markers",
                    text=names[keep] if len(names) == len(points) else None,
                    marker=dict(size=5, color="yellow", line=dict(width=1, color="black")),
                    hovertemplate="%{text}: (%{x:.0f}, %{y:.0f})<extra></extra>",
                    showlegend=False,
                ),
                row=row,
                col=col,
            )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    title = None
    if masks and part_names:
        legend = " ".join(
            f"<span style='color:rgb{PART_COLOURS[p % len(PART_COLOURS)]}'>&#9632; {name}</span>"
            for p, name in enumerate(part_names)
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

    from ecl.checkpoint import read_metrics

    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=list(keys))
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    for r, (label, run_dir) in enumerate(runs.items()):
        steps = [e for e in read_metrics(run_dir) if e.get("event") == "step"]
        for k, key in enumerate(keys):
            points = [(e["step"], e[key]) for e in steps if e.get(key) is not None]
            if not points:
                continue
            x, y = zip(*points, strict=True)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines",
                    name=label,
                    legendgroup=label,
                    showlegend=(k == 0),
                    line=dict(color=palette[r % len(palette)]),
                ),
                row=1,
                col=k + 1,
            )
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=360, margin=dict(l=40, r=20, t=50, b=40))
    return fig


def metric_bars(frame, columns: Sequence[str], group: str = "method", title: str | None = None):
    """Mean and standard deviation over seeds of a few metrics, one panel each, one bar per method.

    Args:
        frame: One row per run (e.g. :func:`ecl.results.results_frame`), with a ``group`` column.
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
            go.Bar(
                x=order,
                y=stats["mean"],
                error_y=dict(type="data", array=stats["std"].fillna(0)),
                marker_color=["#7f7f7f" if g == "baseline" else "#1f77b4" for g in order],
                showlegend=False,
                hovertemplate="%{x}: %{y:.4f}<extra></extra>",
            ),
            row=1,
            col=k + 1,
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

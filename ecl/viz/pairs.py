"""Explaining a match: the per-part breakdown of a pair, its maps, an interactive pair explorer, and the
picture of any method's explanation (``explain-pair --png``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ecl.viz.images import heatmap_overlay, image_hwc, tile, to_png


def _breakdown_dict(breakdown: Any) -> dict[str, Any]:
    """A ``PairExplanation`` or its ``to_dict()`` as the dict."""
    return breakdown.to_dict() if hasattr(breakdown, "to_dict") else dict(breakdown)


def pair_breakdown_figure(breakdown: Any, title: str | None = None, scale: str = "auto"):
    """Bar chart of a pair's part similarities, with the overall embedding similarity beside them.

    Args:
        breakdown: a ``PairExplanation`` (``ecl.attribution.explain_pair``) or its ``to_dict()``.
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
    fig = go.Figure(
        go.Bar(
            x=names,
            y=values,
            marker_color=colours,
            text=text,
            textposition="outside",
            hovertemplate="%{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"Part similarities (least similar: {least})",
        yaxis=axis,
        height=330,
        margin=dict(l=50, r=20, t=50, b=40),
    )
    return fig


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
        row = [image_hwc(image)]
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
    fig = make_subplots(
        rows=2, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=0.04
    )
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
        model: the face model. assignment: its ``ecl.attribution.PartAssignment``.
        dataset: a ``FaceParts`` split (test identities). descriptor: see ``ecl.attribution.part_similarity``.
        parts: parts whose channel overlays are drawn. scale: picture enlargement.

    Returns:
        An ``ipywidgets.VBox``.
    """
    import ipywidgets as widgets

    from ecl.attribution import explain_pair
    from ecl.data.faceparts import CHIMERA_PARTS, image_to_tensor

    per = int(dataset.images_per_identity)
    last_identity = int(dataset.num_identities) - 1
    identity_a = widgets.BoundedIntText(value=0, min=0, max=last_identity, description="identity A")
    image_a = widgets.BoundedIntText(value=0, min=0, max=per - 1, description="image A")
    mode = widgets.ToggleButtons(options=["chimera", "another face"], value="chimera", description="B is")
    identity_b = widgets.BoundedIntText(
        value=min(1, last_identity), min=0, max=last_identity, description="identity B"
    )
    image_b = widgets.BoundedIntText(value=min(1, per - 1), min=0, max=per - 1, description="image B")
    part = widgets.Dropdown(options=list(CHIMERA_PARTS), value="nose", description="swapped part")
    picture = widgets.Image(format="png")
    bars = widgets.HTML()
    caption = widgets.HTML()

    def redraw(_: Any = None) -> None:
        first = dataset[identity_a.value * per + image_a.value]["image"]
        if mode.value == "chimera":
            second = image_to_tensor(
                dataset.render_chimera(
                    identity_a.value, identity_b.value, part.value, image_index=image_a.value
                )[0]
            )
            what = f"identity {identity_a.value} with the {part.value} of identity {identity_b.value}"
        else:
            second = dataset[identity_b.value * per + image_b.value]["image"]
            what = f"identity {identity_b.value}, image {image_b.value}"
        explanation = explain_pair(model, first, second, assignment, descriptor=descriptor)
        _, rows = _pair_pictures(first, second, explanation, parts)
        tiled = tile(rows)
        picture.width = tiled.shape[1] * scale  # page width, not the PNG's natural size
        picture.value = to_png(tiled, scale=scale)
        bars.value = _bars_html(explanation)
        caption.value = (
            f"<small>A: identity {identity_a.value}, image {image_a.value}; B: {what}. Columns: image, "
            "similarity saliency, then the channels of "
            f"{', '.join(p for p in (parts or []) if p in explanation.parts)}."
            "</small>"
        )

    for control in (identity_a, image_a, mode, identity_b, image_b, part):
        control.observe(redraw, names="value")
    redraw()
    controls = widgets.VBox(
        [widgets.HBox([identity_a, image_a]), mode, widgets.HBox([identity_b, image_b, part])]
    )
    return widgets.VBox([controls, bars, picture, caption])


def _font(size: int):
    """PIL's bundled font at ``size`` px (its small bitmap font on Pillow without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def pair_method_picture(
    image_a: Any,
    image_b: Any,
    maps: Mapping[str, tuple[Any, Any]],
    title: str = "",
    caption: str = "",
    scale: int = 2,
) -> np.ndarray:
    """A picture of one method's explanation of a pair: a row per face, the face and one overlay per map.

    Each map (any resolution, upsampled bilinearly) is drawn with ReLU, on its own colour scale, over
    its face; the column title names it (e.g. ``"nose +0.120"``, a part and its contribution). Drawn
    with PIL, so it needs no plotting library; ``to_png`` encodes it.

    Args:
        image_a, image_b: ``(3, S, S)`` float in [0, 1] or ``(S, S, 3)`` uint8.
        maps: column title -> (map over face a, map over face b), e.g. ``PairMethodResult.maps``
            (``ecl.pair_explain.explain_pair_with``).
        title: a line above the picture. caption: a line below it (e.g. the additive sum).
        scale: enlargement of the faces (nearest), so that small models' inputs stay visible.

    Returns:
        ``(H, W, 3)`` uint8 array.
    """
    from PIL import Image, ImageDraw

    rows = []
    for row, image in enumerate((image_a, image_b)):
        pictures = [image_hwc(image)]
        pictures += [
            heatmap_overlay(image, np.maximum(np.asarray(pair[row], dtype=np.float64), 0.0))
            for pair in maps.values()
        ]
        rows.append([np.kron(p, np.ones((scale, scale, 1), dtype=np.uint8)) for p in pictures])
    body = tile(rows, gap=4)
    side = rows[0][0].shape[1]
    font = _font(12)
    titles = ["face", *maps]
    line = 18
    top = line + (line if title else 0)
    bottom = line if caption else 0
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max([body.shape[1]] + [int(measure.textlength(text, font=font)) + 4 for text in (title, caption)])
    canvas = Image.new("RGB", (width, body.shape[0] + top + bottom + 4), "white")
    canvas.paste(Image.fromarray(body), (0, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 2), title, fill="black", font=font)
    for c, name in enumerate(titles):
        draw.text((c * (side + 4) + 2, top - line + 2), str(name), fill="black", font=font)
    if caption:
        draw.text((2, top + body.shape[0] + 3), caption, fill="black", font=font)
    return np.asarray(canvas, dtype=np.uint8)

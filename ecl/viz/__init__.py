"""Figures and widgets for the book and for your own notebooks.

Every function returns a plotly figure, an ipywidgets widget or an image array; none shows or saves
anything. Widgets draw their pictures into ``ipywidgets.Image`` (PNG bytes), whose state is saved with
the executed notebook, so the published page shows the last picture even without a kernel; each widget
has a static plotly figure beside it in the book.

- :mod:`ecl.viz.images`: arrays and PNG bytes (colour maps, overlays);
- :mod:`ecl.viz.figures`: the method and its results (templates, faces, training curves, metrics, ROC);
- :mod:`ecl.viz.channels`: what each target-layer channel sees;
- :mod:`ecl.viz.pairs`: explaining a match.
"""

from ecl.viz.channels import channel_explorer, template_fit_figure, top_channels_figure
from ecl.viz.figures import (
    LivePlot,
    faces_figure,
    metric_bars,
    roc_figure,
    template_explorer,
    template_figure,
    training_curves,
)
from ecl.viz.images import PART_COLOURS, colormap, heatmap_overlay, masks_overlay, to_png
from ecl.viz.pairs import pair_breakdown_figure, pair_explorer, pair_maps_figure, pair_method_picture

__all__ = [
    "PART_COLOURS",
    "LivePlot",
    "channel_explorer",
    "colormap",
    "faces_figure",
    "heatmap_overlay",
    "masks_overlay",
    "metric_bars",
    "pair_breakdown_figure",
    "pair_explorer",
    "pair_maps_figure",
    "pair_method_picture",
    "roc_figure",
    "template_explorer",
    "template_figure",
    "template_fit_figure",
    "to_png",
    "top_channels_figure",
    "training_curves",
]

"""dashboard.style: the shared look of labkit's dashboard plots (figure defaults, colours, notes).

Owns small constructors so the four views look alike. Must not: read events or hold state.
"""
from __future__ import annotations

from bokeh.models import Label, Legend
from bokeh.palettes import Category10_10, Turbo256
from bokeh.plotting import figure
import panel as pn

__all__ = ["new_figure", "colors", "note", "waiting_label", "outside_legend"]

_TOOLS = "pan,wheel_zoom,box_zoom,reset,save,hover"


def new_figure(title: str, *, height: int = 230, x_axis_label: str | None = None,
               y_axis_label: str | None = None, **kwargs):
    """A Bokeh figure with labkit's defaults (stretches to its container's width)."""
    kwargs.setdefault("sizing_mode", "stretch_width")
    fig = figure(title=title, height=height, tools=_TOOLS,
                 toolbar_location="right", x_axis_label=x_axis_label, y_axis_label=y_axis_label, **kwargs)
    fig.title.text_font_size = "12px"
    fig.toolbar.logo = None
    fig.min_border_left = 50
    return fig


def outside_legend(fig, place: str = "below", **kwargs) -> Legend:
    """An (empty) legend beside the plot area, never over the data; glyphs added later with ``legend_label`` or
    ``legend_field`` fill it."""
    legend = Legend(label_text_font_size="10px", orientation="horizontal" if place in ("below", "above")
                    else "vertical", **kwargs)
    fig.add_layout(legend, place)
    return legend


def colors(n: int) -> list[str]:
    """``n`` distinguishable colours (Category10, then samples of Turbo for many BN groups or hosts)."""
    if n <= 10:
        return list(Category10_10[:n])
    return [Turbo256[int(i * 255 / max(n - 1, 1))] for i in range(n)]


def note(text: str) -> pn.pane.HTML:
    """A grey explanatory line (e.g. why a plot is still empty)."""
    return pn.pane.HTML(f'<div style="color:#6b7280;font-size:90%">{text}</div>', sizing_mode="stretch_width",
                        margin=(0, 10))


def waiting_label(fig, text: str = "waiting for events") -> Label:
    """A grey note inside a figure whose lines are added when data arrives; hide it (``visible``) then."""
    label = Label(x=60, y=60, x_units="screen", y_units="screen", text=text, text_color="#9ca3af",
                  text_font_size="12px")
    fig.add_layout(label)
    return label

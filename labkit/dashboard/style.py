"""dashboard.style: the shared look of labkit's dashboard plots (figure defaults, colours, notes).

Owns small constructors so the four views look alike. Must not: read events or hold state.
"""
from __future__ import annotations

from bokeh.models import Label, Legend
from bokeh.palettes import Category10_10, Turbo256
from bokeh.plotting import figure
import panel as pn

__all__ = ["new_figure", "colors", "note", "waiting_label", "outside_legend", "plot_grid", "flow_row", "heading"]

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
    if place in ("below", "above"):  # two columns: narrow enough for a phone-width page, short enough for a wide one
        kwargs.setdefault("ncols", 2)
    legend = Legend(label_text_font_size="10px", **kwargs)
    fig.add_layout(legend, place)
    return legend


def plot_grid(*items, basis: int = 420, share: int = 40) -> pn.FlexBox:
    """Plots side by side that wrap onto new rows as the page narrows (no horizontal scrollbar at any width).
    ``items``: Bokeh figures, each at least ``basis`` px or ``share`` % of the row wide (whichever is more,
    then stretched to fill the row), or Panel panes of a fixed width."""
    def _cell(item):
        if isinstance(item, pn.viewable.Viewable):
            return pn.Column(item, styles={"flex": "0 0 auto"})
        return pn.Column(pn.pane.Bokeh(item, sizing_mode="stretch_width"), sizing_mode="stretch_width",
                         styles={"flex": f"1 1 max({basis}px, {share}%)", "min-width": "0"})
    return pn.FlexBox(*map(_cell, items), flex_wrap="wrap", sizing_mode="stretch_width")


def flow_row(*items) -> pn.FlexBox:
    """A row of headings and widgets that wraps on a narrow page."""
    return pn.FlexBox(*items, flex_wrap="wrap", align_items="center", sizing_mode="stretch_width")


def heading(text: str, level: int = 2) -> pn.pane.HTML:
    """A page or panel heading that wraps anywhere (long run directory paths included)."""
    import html
    style = "margin:4px 0;overflow-wrap:anywhere" + (";font-size:100%" if level > 2 else "")
    return pn.pane.HTML(f'<h{level} style="{style}">{html.escape(text)}</h{level}>', margin=(5, 10),
                        sizing_mode="stretch_width", styles={"min-width": "0", "flex": "1 1 200px"})


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

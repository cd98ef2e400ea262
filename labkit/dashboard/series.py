"""dashboard.series: bounded, downsampled columns behind a live Bokeh ``ColumnDataSource``.

Owns ``Series``: rows arrive (one per step, say) and are streamed into a ``ColumnDataSource``; once the plot holds
``max_points`` points, neighbouring points are merged pairwise (numbers averaged, anything else the later value)
and the bucket width doubles. A 100k-step run therefore costs at most ``max_points`` points per line in the
browser and O(1) work per event, while the whole run stays visible. This is display downsampling only.
Must not: know event kinds or compute statistics beyond averaging points for display.
"""
from __future__ import annotations

import math
from numbers import Real

from bokeh.models import ColumnDataSource

__all__ = ["Series"]


def _merge(values: list):
    """One value for a bucket: mean of finite numbers (NaN if none), else the last value."""
    if values and all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        finite = [float(v) for v in values if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else float("nan")
    return values[-1]


class Series:
    """Columns of display points, fewer than ``max_points``, mirrored into ``self.source``.

    Every point stands for exactly ``stride`` rows (the newest rows wait in a bucket until it is full).
    ``last_columns`` (the x columns) take the bucket's last value, so a point sits at the newest step it covers;
    the other columns take the bucket mean.
    """

    def __init__(self, columns: tuple[str, ...], *, max_points: int = 2000, last_columns: tuple[str, ...] = ()):
        if max_points < 4 or max_points % 2:
            raise ValueError(f"max_points: must be an even number >= 4, got {max_points}")
        self.columns = tuple(columns)
        self.max_points = max_points
        self.last_columns = set(last_columns)
        self.stride = 1
        self.rows_in = 0
        self._points: dict[str, list] = {c: [] for c in self.columns}
        self._bucket: dict[str, list] = {c: [] for c in self.columns}
        self.source = ColumnDataSource(data={c: [] for c in self.columns})

    def __len__(self) -> int:
        return len(self._points[self.columns[0]])

    def data(self) -> dict[str, list]:
        """A copy of the current points (what the plot shows)."""
        return {c: list(v) for c, v in self._points.items()}

    def extend(self, rows: dict[str, list]) -> None:
        """Append rows (a dict of equal-length column lists) and update ``self.source``."""
        n = len(rows[self.columns[0]]) if rows else 0
        if not n:
            return
        self.rows_in += n
        first_new, halved = len(self), False
        for i in range(n):
            for c in self.columns:
                self._bucket[c].append(rows[c][i])
            if len(self._bucket[self.columns[0]]) < self.stride:
                continue
            for c in self.columns:  # the bucket is full: it becomes one point
                self._points[c].append(self._merge_values(c, self._bucket[c]))
                self._bucket[c] = []
            if len(self) == self.max_points:  # halve the resolution: merge neighbours, double the bucket
                self._points = {c: [self._merge_values(c, v[j:j + 2]) for j in range(0, len(v), 2)]
                                for c, v in self._points.items()}
                self.stride *= 2
                halved = True
        if halved:
            self.source.data = self.data()
        elif len(self) > first_new:
            self.source.stream({c: v[first_new:] for c, v in self._points.items()}, rollover=self.max_points)

    def clear(self) -> None:
        self.stride, self.rows_in = 1, 0
        self._points = {c: [] for c in self.columns}
        self._bucket = {c: [] for c in self.columns}
        self.source.data = {c: [] for c in self.columns}

    def _merge_values(self, column: str, values: list):
        return values[-1] if column in self.last_columns else _merge(values)

"""The notebooks' own code that nbval cannot see: every position of 01's and 03's widget controls draws a figure.

A widget callback that raises shows its traceback inside the widget's output area, not as a cell error, so nbval
(which stores only the default figure) would pass a broken slider. These tests run each notebook's cells up to its
figure function, in order, in a fresh namespace (the deterministic cells, as tests/test_notebooks.py does), then
call that function at every option each control offers (the other controls at their lowest, then at their
highest), read from the notebook's own widget cell; the two extreme positions are also rendered to PNG.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _code(name: str) -> list[str]:
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def _run_until(name: str, defines: str) -> dict:
    """Exec the notebook's code cells in order (skipping the install cell, timed sweeps, widget cells and 03's
    16-device pictures, which the widgets do not use: a subprocess of ~10 s, re-run by tests/test_notebooks.py)
    until one defines ``defines``; return the namespace."""
    ns: dict = {"__name__": "__notebook__"}
    for src in _code(name):
        if any(mark in src for mark in ("find_spec(\"labkit\")", "NBVAL_IGNORE_OUTPUT", "lab.collective_steps(")):
            continue
        try:
            exec(compile(src, f"<{name}>", "exec"), ns)  # noqa: S102 - our own notebook
        except NameError as e:  # uses a value only a skipped (timed) cell computes, as in test_notebooks.py
            if "is not defined" not in str(e):
                raise
            continue
        if f"def {defines}(" in src:
            return ns
    raise AssertionError(f"{name}: no cell defines {defines}")


def _options(name: str) -> dict[str, list]:
    """Each control's options, read from the widget cell's source: SelectionSlider/Dropdown ``options=[...]``;
    FloatLogSlider: its ends and middle (base ** min, base ** max)."""
    src = next(s for s in _code(name) if "interactive_output" in s)
    found: dict[str, list] = {}
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if not (isinstance(key, ast.Constant) and isinstance(value, ast.Call)):
                    continue
                kw = {k.arg: k.value for k in value.keywords}
                if "options" in kw:
                    opts = ast.literal_eval(kw["options"])
                    found[key.value] = [o[1] if isinstance(o, tuple) else o for o in opts]
                else:
                    base, lo, hi = (ast.literal_eval(kw[k]) for k in ("base", "min", "max"))
                    found[key.value] = [base ** lo, base ** ((lo + hi) / 2), base ** hi]
    assert found, f"{name}: no widget controls found"
    return found


@pytest.mark.parametrize("name, function", [("01_distributed_bn", "noise_figure"),
                                            ("03_torus_allreduce", "cost_figure")])
def test_every_widget_position_draws_a_figure(name, function):
    ns = _run_until(name, function)
    options = _options(name)
    draw = ns[function]
    defaults = [v for v in options.values()]
    names = list(options)
    lows, highs = tuple(v[0] for v in defaults), tuple(v[-1] for v in defaults)
    positions = {lows, highs}
    for k, values in enumerate(defaults):  # every option of each control, the others at their lowest and highest
        for v in values:
            positions |= {lows[:k] + (v,) + lows[k + 1:], highs[:k] + (v,) + highs[k + 1:]}
    for values in sorted(positions, key=str):
        plot = draw(**dict(zip(names, values)))  # builds the figure: the numbers, the curves, the title
        assert plot.figure.axes and plot.figure.axes[0].get_title(), (name, values)
        if values in (lows, highs):  # rendering costs ~0.3 s: the two extreme positions are rendered to PNG
            assert plot._repr_png_().startswith(b"\x89PNG"), (name, values)


@pytest.mark.parametrize("name, functions", [("01_distributed_bn", ["my_grouped_bn"]),
                                             ("02_input_pipeline", ["my_input_pipeline"]),
                                             ("03_torus_allreduce", ["ring_reduce_scatter", "my_2d_all_reduce"])])
def test_from_scratch_code_is_short_enough_to_edit(name, functions):
    """Issue 21: each from-scratch version is at most ~15 lines, the learner's to edit (decorators included)."""
    for fn in functions:
        src = next(s for s in _code(name) if f"def {fn}(" in s)
        node = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef) and n.name == fn)
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        assert node.end_lineno - first + 1 <= 15, f"{name}: {fn} is {node.end_lineno - first + 1} lines"

"""labkit.figures: what a figure draws is what it was given (panels, titles, cell colours), read back from the
matplotlib objects; no pixels are compared against stored images."""
import numpy as np
from matplotlib import colormaps

from labkit import figures


def _two_step_result():
    """A hand-made 2x4 torus 'run' (8 replicas, 4 pieces): step 1 (a row hop, direction -1) replica 0 gets piece
    1 from replica 1 and adds it (2 replicas summed); step 2 (a column hop) replica 4 copies piece 3, finished
    (all 8), from replica 0."""
    ones = [[1] * 4 for _ in range(8)]
    after1 = [row[:] for row in ones]
    after1[0][1] = 2
    after2 = [row[:] for row in after1]
    after2[4][3] = 8
    held1, held2 = [[] for _ in range(8)], [[] for _ in range(8)]
    held1[0], held2[4] = [[1, 3]], [[3, 255]]
    row_minus = [[r, 4 * (r // 4) + (r - 1) % 4] for r in range(8)]
    column = [[r, (r + 4) % 8] for r in range(8)]
    return {"shape": [2, 4], "elements": 4, "ppermutes": 2, "result": [],
            "steps": [{"hops": [{"perm": row_minus, "axes": ["y"], "reduce": True}], "held": held1, "counts": after1},
                      {"hops": [{"perm": column, "axes": ["x"], "reduce": False}], "held": held2, "counts": after2}]}


def test_collective_steps_draws_a_panel_per_step_with_the_pieces_held():
    plot = figures.collective_steps(_two_step_result(), "demo", columns=3)
    panels = [ax for ax in plot.figure.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["start: own buffer", "step 1: sum Y-", "step 2: copy X+"]
    cmap = colormaps["viridis_r"]
    img = panels[1].images[0].get_array()          # replica r at block (r // 4, r % 4): 2x2 pieces, gap 1
    assert np.allclose(img[0, 1], cmap((2 - 1) / 7))                   # arrived this step: solid
    assert np.allclose(img[0, 0], 0.35 * np.asarray(cmap(0.0)) + 0.65)  # its own piece 0, unchanged: faded
    img = panels[2].images[0].get_array()
    assert np.allclose(img[3 + 1, 1], cmap(1.0))                       # replica 4 (block row 1), piece 3: all 8
    assert np.allclose(img[0, 1], 0.35 * np.asarray(cmap(1 / 7)) + 0.65)  # replica 0's piece 1, held from step 1
    assert plot._repr_png_().startswith(b"\x89PNG")


def test_bn_noise_draws_the_variance_beside_the_mean():
    rows = [{"bn_group": g, "bn_batch": g * n, "per_replica": n, "replicas": 8, "noise": 0.1 / n,
             "predicted": 0.09 / n if g < 8 else 0.0, "var_noise": 0.3 / n, "var_predicted": 0.31 / n,
             "c": 0.07, "c_var": 0.19} for g in (1, 8) for n in (2, 4)]
    plot = figures.bn_noise(rows)
    mean_ax, var_ax = plot.figure.axes
    assert mean_ax.get_title() == "mean, c = 0.070" and var_ax.get_title() == "variance, c_var = 0.190"
    measured = [line for line in var_ax.lines if line.get_marker() == "o"]
    assert [list(line.get_ydata()) for line in measured] == [[0.15, 0.075]]  # g=8 (all replicas) not drawn

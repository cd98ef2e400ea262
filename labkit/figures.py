"""figures: static matplotlib figures of the lab's results, stored as PNG in the notebooks' outputs.

Owns one plotting function per result the notebooks show (the torus and its BN groups, BN noise against its
1/sqrt(BN batch) prediction, the input ladder, the host-queue demo, the collective sweep with its fitted model,
the 2-D torus all-reduce phases, a training run's curves, the pod projection). Each takes the plain numbers a
labkit call returned (or telemetry events) and returns a ``Plot``, which Jupyter shows as a PNG, so GitHub,
nbviewer and Colab's preview render it with no JavaScript.
Must not: compute results, run JAX, or read training internals (only returned numbers and telemetry).
Uses ``matplotlib.figure.Figure`` directly (no pyplot state: safe from threads and never shown twice).
"""
from __future__ import annotations

import io
from typing import Iterable, Sequence

__all__ = ["Plot", "torus_groups", "bn_noise", "input_ladder", "input_switches", "feed_demo", "collective_sweep",
           "collective_pairs", "torus_phases", "collective_steps", "training_curves", "pod_projection",
           "pod_sensitivity", "comm_fraction", "step_breakdown"]

_COLORS = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#000000"]
_STEP_COLORS = {"compute": _COLORS[0], "bn_collectives": _COLORS[1], "gradient_allreduce": _COLORS[2],
                "other_collectives": _COLORS[3], "unattributed": _COLORS[6], "input_wait": _COLORS[4],
                "host": _COLORS[5]}


class Plot:
    """A finished figure: Jupyter displays it as a PNG (``_repr_png_``); ``save(path)`` writes PNG or SVG."""

    def __init__(self, figure, title: str):
        self.figure, self.title = figure, title

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
        return buf.getvalue()

    def __repr__(self) -> str:  # the text/plain form stored next to the image: stable for nbval
        return f"<figure: {self.title}>"

    def save(self, path) -> str:
        self.figure.savefig(str(path), dpi=100, bbox_inches="tight")
        return str(path)


def _figure(ncols: int = 1, *, width: float = 6.4, height: float = 3.6):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def torus_groups(topo) -> Plot:
    """The (X, Y) torus: one square per replica, coloured by BN group, with replica ids and wrap-around links."""
    x, y = topo.shape
    group_of = {r: k for k, g in enumerate(topo.bn_groups()) for r in g}
    fig, ax = _figure(width=1.1 * y + 1.5, height=1.1 * x + 0.9)
    for r in range(x * y):
        i, j = divmod(r, y)
        ax.add_patch(_square(j, -i, _COLORS[group_of[r] % len(_COLORS)]))
        ax.text(j, -i, f"{r}\n{chr(65 + group_of[r])}", ha="center", va="center", fontsize=10)
    for i in range(x):  # row wrap-around
        ax.annotate("", xy=(-0.45, -i), xytext=(y - 0.55, -i),
                    arrowprops=dict(arrowstyle="-", color="grey", ls=":", connectionstyle="arc3,rad=0.25"))
    ax.set_xlim(-0.8, y - 0.2), ax.set_ylim(-x + 0.2, 0.8), ax.set_aspect("equal"), ax.axis("off")
    ax.set_title(f"{x}x{y} torus, BN group {topo.bn_group}: {topo.num_bn_groups} groups (letters)", fontsize=10)
    return Plot(fig, f"{x}x{y} torus, BN groups of {topo.bn_group}")


def _square(cx, cy, color, size=0.9):
    from matplotlib.patches import FancyBboxPatch
    return FancyBboxPatch((cx - size / 2, cy - size / 2), size, size, boxstyle="round,pad=0.02",
                          facecolor=color, alpha=0.45, edgecolor="black")


def bn_noise(rows: Sequence[dict]) -> Plot:
    """Measured BN noise against BN batch (log-log), one colour per group size, with the prediction lines: the
    mean's noise, and beside it the variance's when the rows carry it (``var_noise``, ``var_predicted``).

    ``rows`` from ``lab.bn_group_sweep``: ``bn_group``, ``bn_batch``, ``noise``, ``predicted``, ``replicas``.
    A group spanning every replica has zero noise by definition (it *is* the global batch): listed, not drawn.
    """
    panels = [("noise", "predicted", "mean: RMS (group - global) / std", "c")]
    if all("var_noise" in r for r in rows):
        panels.append(("var_noise", "var_predicted", "variance: RMS (group - global) / global", "c_var"))
    fig, axes = _figure(len(panels), width=5.2 * len(panels) + 0.6, height=4.0)
    axes = list(axes) if len(panels) > 1 else [axes]
    groups = sorted({r["bn_group"] for r in rows})
    for ax, (key, pred, ylabel, const) in zip(axes, panels):
        for k, g in enumerate(groups):
            mine = sorted((r for r in rows if r["bn_group"] == g and r["predicted"] > 0), key=lambda r: r["bn_batch"])
            if not mine:
                continue
            color = _COLORS[k % len(_COLORS)]
            b = [r["bn_batch"] for r in mine]
            ax.plot(b, [r[key] for r in mine], "o", color=color, label=f"g={g} measured")
            ax.plot(b, [r[pred] for r in mine], "-", color=color, alpha=0.7,
                    label=f"g={g}: {const}·sqrt(1-g/R)/sqrt(BN batch)")
        ax.set_xscale("log", base=2), ax.set_yscale("log")
        ax.set_xlabel("BN batch = g x images per replica"), ax.set_ylabel(ylabel)
        value = next((f" = {r[const]:.3f}" for r in rows if const in r), "")
        ax.set_title(f"{ylabel.split(':')[0]}, {const}{value}", fontsize=9)
        ax.legend(fontsize=6.5, loc="lower left")
        ax.grid(True, which="both", alpha=0.3)
    full = [r for r in rows if r["predicted"] == 0]
    note = f"; g={full[0]['bn_group']} (all replicas): exactly 0" if full else ""
    fig.suptitle(f"BN noise per channel, fresh batches{note}", fontsize=10)
    return Plot(fig, "BN noise vs BN batch")


def input_ladder(results: dict, *, reference: dict | None = None, label: str = "",
                 reference_label: str = "") -> Plot:
    """Images/s of each rung (bar: best of the interleaved rounds; dots: every round) and the ceiling (line: its
    best round; band: all its rounds), with each bar's x naive; a second panel the same for ``reference``."""
    runs = [(results, label or "this run")] + ([(reference, reference_label or "reference")] if reference else [])
    fig, axes = _figure(len(runs), width=6.2 * len(runs), height=3.8)
    axes = axes if len(runs) > 1 else [axes]
    top = max(max(r["img_s"] for r in res["rungs"] + [res["ceiling"]]) for res, _ in runs)
    for ax, (res, title) in zip(axes, runs):
        rungs, ceiling = res["rungs"], res["ceiling"]
        naive = rungs[0]["img_s"]
        ax.bar(range(len(rungs)), [r["img_s"] for r in rungs], color=_COLORS[0], label="best round")
        for k, r in enumerate(rungs):
            ax.plot([k] * len(r["rounds"]), r["rounds"], ".", color="k", ms=4,
                    label="each round" if k == 0 else None)
            ax.text(k, r["img_s"], f"{r['img_s'] / naive:.2f}x", ha="center", va="bottom", fontsize=7)
        ax.axhspan(min(ceiling["rounds"]), max(ceiling["rounds"]), color=_COLORS[1], alpha=0.2)
        ax.axhline(ceiling["img_s"], color=_COLORS[1], lw=1.5,
                   label=f"ceiling (decode alone, in memory): {ceiling['img_s']:.0f}")
        ax.set_xticks(range(len(rungs)), [r["name"] for r in rungs], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.18 * top)
        ax.set_ylabel("images/s (x naive above each bar)")
        ax.set_title(f"{title}\n{len(ceiling['rounds'])} rounds of {res.get('seconds', float('nan')):g} s, "
                     f"{_load_text(res)}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    return Plot(fig, "input ladder" + (" and reference" if reference else ""))


def input_switches(result: dict, *, ladder: dict | None = None) -> Plot:
    """The rung-switch re-measure (``lab.input_switches``): naive, the chosen switches, the full pipeline (best
    round, dots every round), with the stored ladder's best naive and full pipeline as dashed lines."""
    modes = result["modes"]
    fig, ax = _figure(width=6.4, height=3.4)
    naive = modes[0]["img_s"]
    colors = [_COLORS[6], _COLORS[2], _COLORS[0]]
    ax.barh(range(len(modes)), [m["img_s"] for m in modes], color=colors[:len(modes)])
    for k, m in enumerate(modes):
        ax.plot(m["rounds"], [k] * len(m["rounds"]), ".", color="k", ms=4)
        ax.text(m["img_s"], k, f" {m['img_s']:.0f} img/s ({m['img_s'] / naive:.2f}x naive)", va="center", fontsize=8)
    if ladder:
        for r, style in ((ladder["rungs"][0], ":"), (ladder["rungs"][-1], "--")):
            ax.axvline(r["img_s"], color="0.4", ls=style, lw=1, label=f"the ladder above: {r['name']}")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.set_yticks(range(len(modes)), [m["name"] for m in modes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.45 * max(m["img_s"] for m in modes))
    ax.set_xlabel("images/s (best round; dots: each round)")
    ax.set_title(f"{result.get('cores', '?')}-core CPU (simulation): {result['rounds']} rounds of "
                 f"{result['seconds']:g} s, {_load_text(result)}", fontsize=9)
    return Plot(fig, "input switches: " + (", ".join(result["switches"]) or "none"))


def _load_text(run: dict) -> str:
    """The cores other programs kept busy during the run where measured, else the load average (which counts the
    benchmark's own threads too)."""
    others = run.get("others_cores") or []
    if others:
        return f"other programs: {min(others):.2f}-{max(others):.2f} cores"
    load = run.get("load") or [float("nan")]
    return f"load average {min(load):.1f}-{max(load):.1f} (own threads included)"


def feed_demo(results: Sequence[dict]) -> Plot:
    """The host-queue demo: images/s and the fraction of input-bound steps for each pretend model speed."""
    fig, (a, b) = _figure(2, width=7.0, height=3.0)
    names = [f"{r['compute_s'] * 1e3:.0f} ms/step" for r in results]
    a.bar(names, [r["images_per_s"] for r in results], color=_COLORS[0])
    a.set_ylabel("images/s"), a.set_title("throughput", fontsize=10)
    b.bar(names, [100 * r["input_bound_fraction"] for r in results], color=_COLORS[1])
    b.set_ylabel("% of steps"), b.set_ylim(0, 100), b.set_title("input-bound steps (queue empty)", fontsize=10)
    return Plot(fig, "input-bound vs compute-bound")


def collective_sweep(results: Sequence[dict], fits: Sequence[dict] = (), *, label: str = "") -> Plot:
    """Measured all-reduce time against bytes per replica (log-log), one colour per algorithm, fitted model
    dashed; busbw on the right."""
    fig, (a, b) = _figure(2, width=9.0, height=3.6)
    algorithms = list(dict.fromkeys(r["algorithm"] for r in results))
    for k, alg in enumerate(algorithms):
        mine = sorted((r for r in results if r["algorithm"] == alg), key=lambda r: r["bytes"])
        color = _COLORS[k % len(_COLORS)]
        sizes = [r["bytes"] for r in mine]
        a.plot(sizes, [r["time_s"] * 1e3 for r in mine], "o-", color=color, label=alg)
        for f in fits:
            if f["algorithm"] == alg:
                a.plot(sizes, [t * 1e3 for t in f["predicted_s"]], "--", color=color, alpha=0.6)
        if all("busbw" in r for r in mine):
            b.plot(sizes, [r["busbw"] / 1e9 for r in mine], "o-", color=color, label=alg)
    for ax in (a, b):
        ax.set_xscale("log", base=2), ax.set_xlabel("bytes per replica"), ax.grid(True, which="both", alpha=0.3)
    a.set_yscale("log"), a.set_ylabel("time (ms)"), a.legend(fontsize=8)
    a.set_title(f"all-reduce time, fitted model dashed{(' · ' + label) if label else ''}", fontsize=9)
    b.set_ylabel("busbw (GB/s)"), b.set_title("bus bandwidth (nccl-tests convention)", fontsize=9)
    return Plot(fig, "collective sweep")


def collective_pairs(ratios: dict, *, reference: dict | None = None, label: str = "") -> Plot:
    """Each like-for-like pair's time ratio (slower / faster) against bytes per replica: this run solid, the
    committed reference run (``lab.collective_reference(...)["ratios"]``) dashed; 1 = even."""
    fig, a = _figure(1, width=6.4, height=3.4)
    for k, (pair, r) in enumerate(ratios.items()):
        color = _COLORS[k % len(_COLORS)]
        a.plot(r["bytes"], r["ratio"], "o-", color=color, label=f"{pair} (this run)")
        if reference and pair in reference:
            ref = reference[pair]
            a.plot(ref["bytes"], ref["ratio"], "s--", color=color, alpha=0.6, label=f"{pair} (reference)")
    a.axhline(1.0, color="#888888", lw=0.8)
    a.set_xscale("log", base=2), a.set_xlabel("bytes per replica"), a.set_ylabel("time ratio (best of rounds)")
    a.grid(True, which="both", alpha=0.3), a.legend(fontsize=7)
    a.set_title(f"like-for-like pairs: > 1 means the first is slower{(' · ' + label) if label else ''}", fontsize=9)
    return Plot(fig, "all-reduce pairs")


def torus_phases(phases: Sequence[dict], shape: tuple[int, int]) -> Plot:
    """One panel per phase of a 2-D all-reduce: for each replica, which chunk(s) it holds and how many
    replicas' contributions are summed into them (``lab.torus_phases``)."""
    x, y = shape
    fig, axes = _figure(len(phases), width=2.9 * len(phases), height=1.0 * x + 1.6)
    axes = list(axes) if len(phases) > 1 else [axes]
    n = x * y
    for ax, ph in zip(axes, phases):
        for r, held in enumerate(ph["held"]):
            i, j = divmod(r, y)
            full = all(c == n for _chunk, c in held)
            color = _COLORS[2] if full else _COLORS[0] if len(held) == 1 else _COLORS[6]
            ax.add_patch(_square(j, -i, color))
            text = _held_text(held, n)
            ax.text(j, -i, f"r{r}\n{text}", ha="center", va="center", fontsize=7)
        ax.set_xlim(-0.6, y - 0.4), ax.set_ylim(-x + 0.4, 0.6), ax.set_aspect("equal"), ax.axis("off")
        ax.set_title(ph["phase"], fontsize=8)
    fig.suptitle("2-D torus all-reduce: chunk(s) held / replicas summed in (rows = torus X, columns = Y)",
                 fontsize=9)
    return Plot(fig, "2-D torus all-reduce phases")


def _held_text(held: Sequence[tuple[int, int]], n: int) -> str:
    chunks = [c for c, _ in held]
    counts = sorted({k for _, k in held})
    if len(chunks) > 2 and chunks == list(range(chunks[0], chunks[0] + len(chunks))):
        ids = f"c{chunks[0]}-c{chunks[-1]}"
    else:
        ids = ",".join(f"c{c}" for c in chunks)
    return f"{ids}\n{'/'.join(map(str, counts))} of {n}"


def collective_steps(result: dict, algorithm: str, *, columns: int = 7) -> Plot:
    """One hop-by-hop all-reduce step by step (``lab.collective_steps(...)[algorithm]``): a panel per step, the
    start first, each the X x Y torus; inside every replica its buffer, one cell per piece, coloured by how many
    replicas are summed into what it holds of that piece (dark = all). What arrived in the step is solid, the
    rest faded. Panel titles: 'sum' (a reduce-scatter hop: the arrival is added to the replica's own copy) or
    'copy' (an all-gather hop), and each ppermute's torus dimension and direction (X+, Y-, or ring)."""
    import math

    import numpy as np
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    x, y = result["shape"]
    n, length, steps = x * y, result["elements"], result["steps"]
    side = math.isqrt(length - 1) + 1                      # pieces drawn as a side x side block per replica
    cmap, norm = colormaps["viridis_r"], Normalize(1, n)
    panels = [{"hops": [], "held": [[] for _ in range(n)], "counts": [[1] * length for _ in range(n)]}] + steps
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(1.45 * columns + 0.9, 1.55 * rows + 0.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
    for k, (ax, step) in enumerate(zip(axes, panels)):
        img = np.ones((x * (side + 1) - 1, y * (side + 1) - 1, 4))
        for r in range(n):
            i, j = divmod(r, y)
            new = {e for e, _mask in step["held"][r]}
            for e, c in enumerate(step["counts"][r]):
                rgba = np.asarray(cmap(norm(c)))
                img[i * (side + 1) + e // side, j * (side + 1) + e % side] = rgba if e in new else 0.35 * rgba + 0.65
        ax.imshow(img, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        hops = " ".join(_hop_label(h["perm"], x, y) for h in step["hops"])
        kind = ("sum " if step["hops"][0]["reduce"] else "copy ") if step["hops"] else ""
        ax.set_title(f"step {k}: {kind}{hops}" if k else "start: own buffer", fontsize=7)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes.tolist(), shrink=0.6, label="replicas summed into a piece",
                 ticks=sorted({1, *range(4, n + 1, 4), n}))
    fig.suptitle(f"{algorithm} on a {x}x{y} torus, run hop by hop: {len(steps)} steps, {result['ppermutes']} "
                 f"ppermutes (from the traced program). A square per replica (rows: torus X), a cell per piece of "
                 f"its buffer ({length}); solid: arrived in this step", fontsize=8)
    return Plot(fig, f"{algorithm} step by step, {x}x{y} torus")


def _hop_label(perm, x: int, y: int) -> str:
    """'Y+' / 'Y-' (along rows), 'X+' / 'X-' (along columns) or 'ring' for one ppermute's (source, dest) pairs."""
    if all(a // y == b // y for a, b in perm):
        return "Y+" if all((b - a) % y == 1 for a, b in perm) else "Y-"
    if all(a % y == b % y for a, b in perm):
        return "X+" if all((b // y - a // y) % x == 1 for a, b in perm) else "X-"
    return "ring"


def training_curves(events: Iterable[dict], *, label: str = "") -> Plot:
    """Loss per step and top-1 per evaluation from a run's telemetry events (``kind`` step / eval)."""
    steps = [e for e in events if e.get("kind") in ("step", "eval")]
    train = [e for e in steps if e["kind"] == "step" and e.get("loss") is not None]
    evals = [e for e in steps if e["kind"] == "eval" and e.get("top1") is not None]
    fig, (a, b) = _figure(2, width=9.0, height=3.2)
    a.plot([e["step"] for e in train], [e["loss"] for e in train], color=_COLORS[0], lw=1)
    a.set_xlabel("step"), a.set_ylabel("training loss"), a.set_yscale("log"), a.grid(True, alpha=0.3)
    b.plot([e["step"] for e in evals], [e["top1"] for e in evals], "o-", color=_COLORS[2])
    b.set_xlabel("step"), b.set_ylabel("top-1 (eval)"), b.grid(True, alpha=0.3)
    b.set_title("evaluation", fontsize=10)
    a.set_title(f"training{(' · ' + label) if label else ''}", fontsize=10)
    return Plot(fig, "training curves")


def pod_projection(rows: Sequence[dict], *, measured_step_s: float | None = None, title: str = "") -> Plot:
    """Stacked bars of the projected step time per row: compute, gradient all-reduce, BN collectives, input.

    ``rows``: dicts with ``algorithm`` and the seconds ``compute_s``, ``allreduce_s`` and optional
    ``bn_s``/``input_s`` (``lab.pod_projection``); a row with ``published_step_s`` gets a black tick there and
    its error in %. ``measured_step_s`` draws one published step as a line. The legend sits below the axes.
    """
    fig, ax = _figure(width=7.0, height=0.55 * len(rows) + 2.0)
    parts = [("compute_s", "compute"), ("allreduce_s", "gradient all-reduce"), ("bn_s", "BN collectives"),
             ("input_s", "input wait")]
    names = [r.get("name") or f"{r['algorithm']} ({r.get('directions', r.get('inputs', {}).get('directions', 1))} dir)"
             for r in rows]
    left = [0.0] * len(rows)
    for k, (key, text) in enumerate(parts):
        vals = [1e3 * r.get(key, 0.0) for r in rows]
        if not any(vals):
            continue
        ax.barh(names, vals, left=left, color=_COLORS[k], label=text)
        left = [a + v for a, v in zip(left, vals)]
    published = [1e3 * r["published_step_s"] if r.get("published_step_s") else None for r in rows]
    for i, (pub, r) in enumerate(zip(published, rows)):
        if pub is None:
            continue
        ax.plot([pub, pub], [i - 0.42, i + 0.42], color="black", lw=2.5,
                label="published step" if i == published.index(next(p for p in published if p)) else None)
        ax.annotate(f"{r['step_error']:+.0%}", (max(pub, left[i]), i), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
    if measured_step_s:
        ax.axvline(measured_step_s * 1e3, color="black", ls="--", label="published step")
    ax.set_xlabel("ms per step"), ax.invert_yaxis()
    fig.legend(fontsize=8, ncol=5, loc="outside lower center")  # below the axes: it covers no bar
    ax.set_title(title or "projected step time on the pod", fontsize=10)
    top = max(left + [p or 0 for p in published] + [measured_step_s * 1e3 if measured_step_s else 0])
    ax.set_xlim(0, top * 1.18 or 1)
    return Plot(fig, "pod projection")


def pod_sensitivity(rows: Sequence[dict], published_steps_s: dict | None = None) -> Plot:
    """Projected step (stacked: compute, all-reduce, BN) of each algorithm as one input moves, one panel per
    input (``labkit.collectives.project.sensitivity``); ``published_steps_s`` ({label: s}) as dashed lines."""
    fields = list(dict.fromkeys(r["input"] for r in rows))
    fig, axes = _figure(len(fields), width=4.0 * len(fields), height=3.6)
    axes = list(axes) if len(fields) > 1 else [axes]
    names = {"alpha_s": "per-hop latency (µs)", "bn_group": "BN group (replicas)",
             "bn_form": "BN collectives a layer (form)"}
    algs = list(rows[0]["by"])
    width = 0.8 / len(algs)
    for ax, field in zip(axes, fields):
        sub = [r for r in rows if r["input"] == field]
        ticks = [f"{r['value'] * 1e6:g}" if field == "alpha_s" else
                 f"{r['bn_collectives_per_layer']} ({r['value']})" if field == "bn_form" else f"{r['value']}"
                 for r in sub]
        for j, alg in enumerate(algs):
            xs = [i + (j - (len(algs) - 1) / 2) * width for i in range(len(sub))]
            bottom = [0.0] * len(sub)
            for k, key in enumerate(("compute_s", "allreduce_s", "bn_s")):
                vals = [1e3 * r["by"][alg][key] for r in sub]
                ax.bar(xs, vals, width * 0.92, bottom=bottom, color=_COLORS[k], alpha=(1.0, 0.75, 0.5)[j % 3],
                       edgecolor="white", lw=0.3)
                bottom = [b + v for b, v in zip(bottom, vals)]
            for x, b in zip(xs, bottom):
                ax.text(x, b, alg.replace("torus2d_bidir", "bidir").replace("torus2d", "2-D")[:5], rotation=90,
                        ha="center", va="bottom", fontsize=6)
        for k, (label, s) in enumerate((published_steps_s or {}).items()):
            ax.axhline(s * 1e3, color="black", ls=("--", ":")[k % 2], lw=1)
        ax.set_xticks(range(len(sub)), ticks, fontsize=8)
        ax.set_xlabel(names.get(field, field), fontsize=9)
        ax.set_ylim(0, max(max(r["by"][a]["step_s"] for r in rows for a in algs),
                           max((published_steps_s or {0: 0}).values())) * 1e3 * 1.2)
    axes[0].set_ylabel("projected ms per step")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(color=_COLORS[k], label=t) for k, t in enumerate(("compute", "gradient all-reduce",
                                                                        "BN collectives"))]
    handles += [Line2D([], [], color="black", ls=("--", ":")[k % 2], label=f"published: {label}")
                for k, label in enumerate(published_steps_s or {})]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle("one input at a time (bars per value: ring, 2-D, bidirectional 2-D)", fontsize=10)
    return Plot(fig, "pod projection sensitivity")


def comm_fraction(rows: Sequence[dict]) -> Plot:
    """Grouped bars: communication share of the projected step against chip count, one bar per algorithm
    (``labkit.collectives.project.comm_fraction``). The legend sits outside the axes."""
    fig, ax = _figure(width=7.0, height=3.6)
    chips = list(dict.fromkeys(r["chips"] for r in rows))
    algs = list(dict.fromkeys(r["algorithm"] for r in rows))
    width = 0.8 / len(algs)
    for j, alg in enumerate(algs):
        vals = [100 * next(r["comm_fraction"] for r in rows if r["chips"] == n and r["algorithm"] == alg)
                for n in chips]
        xs = [i + (j - (len(algs) - 1) / 2) * width for i in range(len(chips))]
        ax.bar(xs, vals, width * 0.92, color=_COLORS[j + 1], label=alg)
        for x, v in zip(xs, vals):
            ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(chips)), [str(n) for n in chips])
    ax.set_xlabel("TPU v3 chips (32 images a chip)"), ax.set_ylabel("communication, % of the step")
    ax.set_ylim(0, max(100 * r["comm_fraction"] for r in rows) * 1.2)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("gradient all-reduce + BN collectives against pod size (projection)", fontsize=10)
    return Plot(fig, "communication fraction")


def step_breakdown(breakdown: dict, *, label: str = "") -> Plot:
    """One horizontal stacked bar: a step's mean seconds by category (``labkit.profile.step_breakdown``)."""
    fig, ax = _figure(width=8.0, height=1.9)
    left = 0.0
    for k, (cat, sec) in enumerate(breakdown["seconds"].items()):
        if sec <= 0:
            continue
        color = _STEP_COLORS.get(cat, _COLORS[k % len(_COLORS)])  # a category keeps its colour across figures
        ax.barh([0], [sec * 1e3], left=left, color=color,
                label=f"{cat} {breakdown['fractions'][cat]:.0%}")
        left += sec * 1e3
    ax.set_yticks([]), ax.set_xlabel("ms per step (mean over the traced steps)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.45))
    ax.set_title(f"where a step's time goes (jax.profiler){(' · ' + label) if label else ''}", fontsize=9)
    return Plot(fig, "step breakdown")

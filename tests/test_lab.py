"""labkit.lab.setup: the device plan as a notebook meets it (one printed line, an Env that labels numbers)."""
import jax
import pytest

from labkit import lab


def test_setup_cpu_only_prints_one_plan_line(capsys, monkeypatch):
    monkeypatch.delenv("LABKIT_COMPUTE_DEVICES", raising=False)
    env = lab.setup()
    out = capsys.readouterr().out
    assert out.splitlines() == [env.line]
    assert env.line == ("device plan: CPU only: single-device work and mesh lessons on 8 simulated CPU devices "
                        "(simulation)")
    assert (env.backend, env.devices, env.plan, env.simulated) == ("cpu", 8, "cpu", True)
    assert list(env.compute_devices) == list(env.mesh_devices) == jax.devices()
    assert env.compute_label == env.mesh_label == "8 simulated CPU devices (simulation)"


def test_setup_rehearses_the_one_chip_plan(capsys, monkeypatch):
    monkeypatch.setenv("LABKIT_COMPUTE_DEVICES", "1")
    env = lab.setup()
    assert capsys.readouterr().out.splitlines() == [env.line]
    assert env.line.startswith("device plan: one accelerator (rehearsal: LABKIT_COMPUTE_DEVICES=1): single-device "
                               "work on 1 CPU device (simulation); mesh lessons (grouped BN, all-reduce "
                               "algorithms, 8-replica training) on 8 simulated CPU devices")
    assert env.plan == "one-accelerator" and env.simulated
    assert list(env.compute_devices) == jax.devices()[:1] and list(env.mesh_devices) == jax.devices()
    assert env.compute_label == "1 CPU device (simulation)"
    assert "single-device work: 1 CPU device" in str(env)


def test_pod_projection_is_the_projection_of_a_published_run():
    """lab.pod_projection: one row per algorithm, each project.compare at the stated inputs; a misspelt input is an
    error naming the allowed ones (it would otherwise fall back to a default silently)."""
    import pytest
    from labkit.collectives import project
    rows = lab.pod_projection("mlperf_v06", alpha_s=2e-6)
    assert [r["algorithm"] for r in rows] == ["ring", "torus2d", "torus2d_bidir"]
    assert rows[2] == project.compare("mlperf_v06", project.Inputs(alpha_s=2e-6), "torus2d_bidir")
    assert rows[2]["bn_s"] > lab.pod_projection("mlperf_v06")[2]["bn_s"]
    with pytest.raises(ValueError, match=r"unknown inputs \['alpha'\]; allowed values: \['chip_images_per_s'"):
        lab.pod_projection(alpha=2e-6)


# --- lab.collective_steps: the pictures of the collectives, checked against a textbook model in numpy ----------

def _ring_phase(kind, vecs, rings, d):
    """One ring phase of the textbook algorithm on pieces (element, frozenset of replicas summed in).

    'rs': each ring's buffers are cut into k chunks; chunk c ends, summed over the ring, at member c: it starts
    at member c + d and moves d each step, and every member it reaches adds its own copy. 'ag': member c holds
    chunk c; it moves d each step and every member stores it. Returns ([{replica: pieces that arrived}, ...
    per step], {replica: its vector after the phase}).
    """
    chunks = {}
    for ring in rings:
        k = len(ring)
        for p, r in enumerate(ring):
            v = vecs[r]
            chunks[r] = [v[c * len(v) // k:(c + 1) * len(v) // k] for c in range(k)] if kind == "rs" else \
                {p: v}
    steps = []
    for s in range(len(rings[0]) - 1):
        arrived = {}
        for ring in rings:
            k = len(ring)
            for p, r in enumerate(ring):
                src = ring[(p - d) % k]
                if kind == "rs":
                    c = (p - d * (s + 2)) % k
                    arrived[r] = (c, [(e, a | b) for (e, a), (_, b) in zip(chunks[src][c], chunks[r][c])])
                else:
                    c = (p - d * (s + 1)) % k
                    arrived[r] = (c, chunks[src][c])
        for r, (c, pieces) in arrived.items():
            chunks[r][c] = pieces
        steps.append({r: pieces for r, (_, pieces) in arrived.items()})
    out = {}
    for ring in rings:
        for p, r in enumerate(ring):
            out[r] = chunks[r][p] if kind == "rs" else [x for c in range(len(ring)) for x in chunks[r][c]]
    return steps, out


def _together(phases):
    """Phases that run side by side, step by step: ([{replica: all arrivals}, ...], [result of each phase])."""
    runs = [_ring_phase(*ph) for ph in phases]
    rounds = max(len(st) for st, _ in runs)  # a phase round a shorter ring is done early and waits
    steps = [{r: [x for st, _ in runs if s < len(st) for x in st[s].get(r, [])] for r in runs[0][1]}
             for s in range(rounds)]
    return steps, [out for _, out in runs]


def _model(algorithm, shape, length):
    """The textbook algorithms: ring (a snake through the rows), 2-D (columns X, then rows Y), and the paper's
    bidirectional halves (A: Y then X, B: X then Y, each phase half one way round, half the other)."""
    x, y = shape
    n = x * y
    rows = [[i * y + j for j in range(y)] for i in range(x)]
    cols = [[i * y + j for i in range(x)] for j in range(y)]
    vec = {r: [(e, frozenset([r])) for e in range(length)] for r in range(n)}
    steps = []
    if algorithm == "ring":
        snake = [r for i, row in enumerate(rows) for r in (row if i % 2 == 0 else row[::-1])]
        for kind in ("rs", "ag"):
            st, (vec,) = _together([(kind, vec, [snake], +1)])
            steps += st
    elif algorithm == "torus2d_links":
        for kind, rings in (("rs", cols), ("rs", rows), ("ag", rows), ("ag", cols)):
            st, (vec,) = _together([(kind, vec, rings, +1)])
            steps += st
    else:
        half = lambda v, k: {r: p[k * len(p) // 2:(k + 1) * len(p) // 2] for r, p in v.items()}  # noqa: E731
        a, b = half(vec, 0), half(vec, 1)
        for kind, (ra, rb) in (("rs", (rows, cols)), ("rs", (cols, rows)), ("ag", (cols, rows)), ("ag", (rows, cols))):
            st, (a1, a2, b1, b2) = _together([(kind, half(a, 0), ra, +1), (kind, half(a, 1), ra, -1),
                                              (kind, half(b, 0), rb, +1), (kind, half(b, 1), rb, -1)])
            steps += st
            a = {r: a1[r] + a2[r] for r in a1}
            b = {r: b1[r] + b2[r] for r in b1}
        vec = {r: a[r] + b[r] for r in a}
    return steps, vec


def _as_sets(pieces):
    return {(int(e), sum(1 << r for r in who) if isinstance(who, frozenset) else int(who)) for e, who in pieces}


def _check_against_model(result, algorithm, shape):
    steps, final = _model(algorithm, shape, result["elements"])
    n = shape[0] * shape[1]
    assert len(result["steps"]) == len(steps)
    for s, (got, want) in enumerate(zip(result["steps"], steps)):
        for r in range(n):
            assert _as_sets(got["held"][r]) == _as_sets(want[r]), (algorithm, "step", s + 1, "replica", r)
    full = 2 ** n - 1
    for r in range(n):
        assert _as_sets(result["result"][r]) == _as_sets(final[r]) == {(e, full) for e in range(result["elements"])}
    assert all(c == n for row in result["steps"][-1]["counts"] for c in row)


def _neighbours(a, b, shape):
    (ia, ja), (ib, jb) = divmod(a, shape[1]), divmod(b, shape[1])
    return (ia == ib and (ja - jb) % shape[1] in (1, shape[1] - 1)) or \
        (ja == jb and (ia - ib) % shape[0] in (1, shape[0] - 1))


def test_collective_steps_on_2x4_match_the_model_and_the_traced_ppermutes():
    """In this 8-device process: every step's arrivals equal the numpy model's, every hop is a torus neighbour
    link, and the hops are the traced program's ppermutes (count and pairs, from labkit.traced) in order."""
    from labkit import traced
    from labkit.collectives import all_reduce
    from labkit.mesh import Topology
    import numpy as np
    topo = Topology.build(shape=(2, 4))
    algs = ("ring", "torus2d_links", "torus2d_bidir_links")
    got = lab.collectives._collective_steps_here(algs, (2, 4))
    for alg in algs:
        _check_against_model(got[alg], alg, (2, 4))
        x = topo.shard_batch(np.zeros((8, got[alg]["elements"]), np.float32))
        hops = [c for c in traced.collectives(lambda x=x, alg=alg: all_reduce(x, topo, alg))
                if c["primitive"] == "ppermute"]
        drawn = [h for st in got[alg]["steps"] for h in st["hops"]]
        assert len(drawn) == len(hops) == got[alg]["ppermutes"]
        assert [len(h["perm"]) for h in drawn] == [h["pairs"] for h in hops]
        assert all(_neighbours(a, b, (2, 4)) for h in drawn for a, b in h["perm"])
    # 2(N-1); 2(X-1) + 2(Y-1); bidirectional: every phase as long as its longer ring, 4 (Y-1)
    assert [len(got[a]["steps"]) for a in algs] == [14, 8, 12]


@pytest.mark.slow
def test_collective_steps_on_4x4_match_the_model():
    """The notebook's picture: 16 replicas in a subprocess (both torus axes real rings of 4)."""
    got = lab.collective_steps(shape=(4, 4))
    for alg in ("ring", "torus2d_links", "torus2d_bidir_links"):
        _check_against_model(got[alg], alg, (4, 4))
        assert all(_neighbours(a, b, (4, 4)) for st in got[alg]["steps"] for h in st["hops"] for a, b in h["perm"])
    assert [len(got[a]["steps"]) for a in got] == [30, 12, 12]
    assert [len(st["hops"]) for st in got["torus2d_bidir_links"]["steps"]] == [4] * 12


def test_collective_steps_names_the_allowed_algorithms():
    with pytest.raises(ValueError, match=r"'torus2d'.*allowed values: \['ring', 'torus2d_links'"):
        lab.collective_steps(("torus2d",))


# --- lab.bn_group_sweep: the noise constants against the textbook variance of a sample variance ------------------

@pytest.mark.parametrize("draw, var_of_sample_var", [
    (lambda rng, m: rng.normal(3.0, 2.0, m), 2.0),      # normal: Var(s^2) = 2 sigma^4 / m (excess kurtosis 0)
    (lambda rng, m: rng.uniform(-1.0, 5.0, m), 0.8),    # uniform: (mu_4 / sigma^4 - 1) = 9/5 - 1
])
def test_noise_constants_are_the_textbook_sample_variance_constants(draw, var_of_sample_var):
    """One independent value per image: c = 1 (an image's mean is its value) and c_var^2 = the published
    large-m variance of a sample variance over sigma^4, (mu_4 - sigma^4) / sigma^4 (= 2 + excess kurtosis)."""
    import numpy as np
    feats = np.stack([draw(np.random.default_rng(k), 200_000) for k in range(2)], -1).reshape(-1, 1, 1, 2)
    c, c_var = lab.bn._noise_constants(feats.astype(np.float32))
    assert c == pytest.approx(1.0, abs=1e-9)
    assert c_var ** 2 == pytest.approx(var_of_sample_var, rel=0.03)


def test_noise_constants_predict_a_simulated_group_variance():
    """Images of 4 correlated pixels drawn at random: the RMS relative error of the variance of m images, over
    many draws (numpy, float64), equals c_var / sqrt(m) (sampling with replacement: no 1 - g/R factor)."""
    import numpy as np
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.0, (20_000, 1, 1, 1))
    feats = base + rng.normal(0, 0.5, (20_000, 2, 2, 1))      # pixels of an image share its base value
    _, c_var = lab.bn._noise_constants(feats)
    x = feats.reshape(len(feats), -1)
    var = x.var()
    m = 32
    picks = rng.integers(0, len(x), (4000, m))
    rel = x[picks].reshape(4000, -1).var(1) / var - 1
    assert np.sqrt(np.mean(rel ** 2)) == pytest.approx(c_var / np.sqrt(m), rel=0.06)


# --- lab.input_reference, lab.check_input_chain, lab.input_switches (notebook 02) ---

from tests.data.conftest import tiny  # noqa: E402,F401 - the data tests' session fixture (ImageNet-schema shards)


def _reference_run(**changes) -> dict:
    run = {"rungs": [{"name": "naive", "img_s": 600.0, "rounds": [600.0, 550.0, 575.0]},
                     {"name": "+ parallel_map", "img_s": 1300.0, "rounds": [1300.0, 1250.0, 1275.0]}],
           "ceiling": {"name": "ceiling", "img_s": 1400.0, "rounds": [1400.0, 1380.0, 1390.0]},
           "rounds": 3, "seconds": 2.0, "batch_size": 64, "cores": 2, "load": [0.3, 0.4, 0.5, 0.6],
           "provenance": {"machine": {"cpu": "AMD EPYC", "cores": 2}, "command": "labkit bench input --rounds 3"}}
    run.update(changes)
    return run


def test_input_reference_loads_a_run_and_recomputes_its_summary(tmp_path):
    import json
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(_reference_run(summary={"text": "stale text from elsewhere"})))
    ref = lab.input_reference(str(path))
    assert ref["provenance"]["command"] == "labkit bench input --rounds 3"
    # from the rounds, not the stored text: upper halves naive 575-600, + parallel_map 1275-1300, ceiling 1390-1400
    assert ref["summary"]["within_noise"] == [] and ref["summary"]["ceiling_clear_of"] == ["naive", "+ parallel_map"]
    assert ref["summary"]["full_x_naive"] == pytest.approx(1300 / 600)
    from labkit import figures
    assert figures.input_ladder(ref, reference=ref)._repr_png_().startswith(b"\x89PNG")


def test_input_reference_names_what_is_missing(tmp_path):
    import json
    with pytest.raises(FileNotFoundError, match="no file at .*nowhere.json"):
        lab.input_reference(str(tmp_path / "nowhere.json"))
    assert lab.input_reference(str(tmp_path / "nowhere.json"), missing_ok=True) is None  # Colab: no repository
    bad = _reference_run()
    del bad["provenance"], bad["load"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"missing \['load', 'provenance'\]"):
        lab.input_reference(str(tmp_path / "bad.json"))


def test_the_committed_input_reference_is_a_full_ladder_with_provenance():
    from labkit.data import pipeline
    ref = lab.input_reference()
    assert [r["name"] for r in ref["rungs"]] == [n for n, _ in pipeline.LADDER]
    assert all(len(r["rounds"]) == ref["rounds"] and r["img_s"] == max(r["rounds"]) for r in ref["rungs"])
    prov = ref["provenance"]
    assert prov["command"].startswith("labkit bench input") and prov["machine"]["cores"] == ref["cores"]
    assert len(prov["labkit_commit"]) == 40 and prov["date_utc"].endswith("Z")


def _plain_chain(wrong: str = ""):
    """A from-scratch tf.data chain in plain TensorFlow (no labkit): the ImageNet eval preprocessing (centre crop
    224/256 of the short side, fused decode, bicubic resize, 1-based labels to 0-based), or one mistake."""
    import tensorflow as tf
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/class/label": tf.io.FixedLenFeature([], tf.int64)}

    def make(files, batch_size, size, epochs=None):
        def decode(record):
            f = tf.io.parse_single_example(record, features)
            h, w = tf.unstack(tf.io.extract_jpeg_shape(f["image/encoded"])[:2])
            s = tf.cast((1.0 if wrong == "crop" else 0.875) * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
            image = tf.io.decode_and_crop_jpeg(f["image/encoded"], [(h - s + 1) // 2, (w - s + 1) // 2, s, s],
                                               channels=3)
            label = f["image/class/label"] - (0 if wrong == "label" else 1)
            return tf.image.resize(image, [size, size], method="bicubic"), tf.cast(label, tf.int32)
        ds = tf.data.Dataset.from_tensor_slices(files[1:] if wrong == "files" else files).repeat(epochs)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=2, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        if wrong == "repeat":
            ds = ds.repeat(2)
        return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return make


def test_check_input_chain_passes_a_correct_plain_chain(tiny):
    result = lab.check_input_chain(_plain_chain(), str(tiny), batch_size=5, image_size=16)
    assert (result["spec_ok"], result["same"], result["images"], result["missing"], result["extra"]) == \
        (True, True, 15, 0, 0)


@pytest.mark.parametrize("wrong, missing, extra", [("label", 15, 15), ("crop", 15, 15), ("files", 10, 0),
                                                   ("repeat", 0, 15)])
def test_check_input_chain_fails_a_wrong_chain(tiny, wrong, missing, extra):
    """Off-by-one labels, an uncropped image, a file left out (its 7 images, and 3 of the other 8 that no
    longer fill a last batch of 5), every image twice: each is caught and counted."""
    result = lab.check_input_chain(_plain_chain(wrong), str(tiny), batch_size=5, image_size=16)
    assert result["spec_ok"] and not result["same"]
    assert (result["missing"], result["extra"]) == (missing, extra)


def test_input_switches_names_the_allowed_switches():
    with pytest.raises(ValueError, match=r"\['shard' \]|\['shard'\] unknown; allowed: \['cache', 'interleave'"):
        lab.input_switches({"shard": True, "interleave": True})


def test_input_switches_figure_draws_the_three_modes():
    from labkit import figures
    result = {"switches": ["parallel_map"], "rounds": 2, "seconds": 0.8, "cores": 2, "load": [1.0, 1.2],
              "modes": [{"name": "naive", "img_s": 600.0, "rounds": [600.0, 550.0]},
                        {"name": "your switches: parallel_map", "img_s": 1100.0, "rounds": [1100.0, 900.0]},
                        {"name": "+ private_threadpool", "img_s": 1400.0, "rounds": [1400.0, 1300.0]}]}
    plot = figures.input_switches(result, ladder=_reference_run())
    ax = plot.figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [m["name"] for m in result["modes"]]
    assert [round(p.get_width()) for p in ax.patches] == [600, 1100, 1400]
    assert "1.83x naive" in " ".join(t.get_text() for t in ax.texts)  # 1100 / 600
    assert plot._repr_png_().startswith(b"\x89PNG")


def test_pair_ratios_divide_best_of_rounds_at_each_shared_size():
    rows = [{"algorithm": a, "bytes": b, "min_time_s": t} for a, b, t in [
        ("ring", 1024, 3.0), ("ring", 4096, 5.0), ("torus2d_links", 1024, 2.0), ("torus2d_links", 4096, 4.0),
        ("torus2d_bidir", 1024, 1.5), ("torus2d", 1024, 1.0), ("torus2d", 4096, 9.0)]]  # bidir lacks 4096
    got = lab.pair_ratios(rows)
    assert got == {"ring/torus2d_links": {"bytes": [1024, 4096], "ratio": [1.5, 1.25]},
                   "torus2d_bidir/torus2d": {"bytes": [1024], "ratio": [1.5]}}


def test_the_committed_collective_reference_has_both_pairs_and_provenance(tmp_path):
    ref = lab.collective_reference()
    sizes = [4 ** k * 1024 for k in range(7)]  # what 03 sweeps: 1 KB .. 4 MB per replica
    for pair in ("ring/torus2d_links", "torus2d_bidir/torus2d"):
        assert ref["ratios"][pair]["bytes"] == sizes and all(q > 0 for q in ref["ratios"][pair]["ratio"])
    prov = ref["provenance"]
    assert prov["command"].startswith("labkit bench collectives") and "simulation" in prov["timings"]
    assert len(prov["labkit_commit"]) == 40 and prov["date_utc"].endswith("Z") and ref["replicas"] == 8
    assert lab.collective_reference(str(tmp_path / "none.json"), missing_ok=True) is None
    with pytest.raises(FileNotFoundError, match="none.json"):
        lab.collective_reference(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text('{"results": []}')
    with pytest.raises(ValueError, match=r"missing \['machine', 'load', 'provenance'\]"):
        lab.collective_reference(str(tmp_path / "bad.json"))


def test_collective_pairs_figure_draws_this_run_beside_the_reference():
    from labkit import figures
    mine = {"ring/torus2d_links": {"bytes": [1024, 4096], "ratio": [1.6, 1.2]}}
    ref = {"ring/torus2d_links": {"bytes": [1024, 4096], "ratio": [1.7, 1.1]}}
    plot = figures.collective_pairs(mine, reference=ref, label="8 simulated devices")
    lines = plot.figure.axes[0].get_lines()
    assert [list(ln.get_ydata()) for ln in lines[:2]] == [[1.6, 1.2], [1.7, 1.1]]
    assert plot._repr_png_().startswith(b"\x89PNG")

"""labkit.lab.setup: the device plan as a notebook meets it (one printed line, an Env that labels numbers)."""
import jax

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

"""labkit.train.measure: MFU arithmetic against published peaks, and FLOPs from the compiled program."""
import jax
import jax.numpy as jnp
import pytest

from labkit.train.measure import mfu, peak_flops_per_device, step_flops


def test_peak_follows_the_dtype_in_use():
    assert peak_flops_per_device("NVIDIA H100 80GB HBM3", "bfloat16") == (989.4e12, "NVIDIA H100 bfloat16 dense peak")
    assert peak_flops_per_device("NVIDIA H100 80GB HBM3", "float32")[0] == 494.7e12  # TF32 tensor cores
    assert peak_flops_per_device("NVIDIA A100-SXM4-40GB", "float32")[0] == 156e12
    assert peak_flops_per_device("TPU v3", "bfloat16")[0] == 61.5e12  # one core, half a chip's 123 TFLOP/s
    peak, reason = peak_flops_per_device("TPU v3", "float32")
    assert peak is None and "float32" in reason
    peak, reason = peak_flops_per_device("cpu", "float32")
    assert peak is None and "cpu" in reason


def test_mfu_is_achieved_flops_over_peak():
    # 2.5 GFLOP per step per device, 4,000 images/s at global batch 128 = 31.25 steps/s -> 78.125 GFLOP/s
    assert mfu(2.5e9, 4000.0, 128, 989.4e12) == pytest.approx(2.5e9 * 31.25 / 989.4e12, rel=1e-12)
    assert mfu(None, 4000.0, 128, 989.4e12) is None and mfu(2.5e9, 4000.0, 128, None) is None


def test_flops_come_from_the_compiled_program():
    a, b = jnp.ones((64, 128)), jnp.ones((128, 32))
    compiled = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
    assert step_flops(compiled.cost_analysis()) == pytest.approx(2 * 64 * 128 * 32, rel=0.01)
    assert step_flops(None) is None and step_flops({"flops": 0.0}) is None


@pytest.mark.parametrize("algorithm", ["xla", "ring", "torus2d_bidir_links"])
def test_allreduce_timer_runs_every_algorithm(algorithm):
    """The in-training timer compiles and runs link-level reducers too (their sums are typed per-replica, which
    an out_specs=P() timer rejected); payload and bus bandwidth follow nccl-tests' definitions."""
    import numpy as np
    from labkit.collectives import make_reducer
    from labkit.mesh import Topology
    from labkit.train.measure import make_allreduce_timer
    topo = Topology.build(shape=(2, 4), bn_group=2)
    params = {"w": np.zeros((3, 5), np.float32), "b": np.zeros((7,), np.float32)}
    got = make_allreduce_timer(make_reducer(topo, algorithm), params, topo, repeats=2)()
    assert got["bytes"] == 4 * (15 + 7) and got["time_s"] > 0
    assert got["algbw"] == pytest.approx(got["bytes"] / got["time_s"])
    assert got["busbw"] == pytest.approx(got["algbw"] * 2 * 7 / 8)

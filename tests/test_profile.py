"""labkit.profile: the per-step breakdown adds up, and the step's collectives land in their categories."""
import math

import numpy as np
import pytest

from labkit import profile


def _op(name, ts, dur, device, module="jit_body", tid=None):
    return {"ph": "X", "pid": 1, "tid": tid or 100 + device, "ts": ts, "dur": dur, "name": name,
            "args": {"hlo_op": name, "hlo_module": module, "device_ordinal": str(device)}}


def test_breakdown_arithmetic_on_a_hand_made_trace():
    host = {"ph": "X", "pid": 1, "tid": 1}
    events = [dict(host, name=profile.STEP_EVENT, ts=0, dur=1000), dict(host, name=profile.INPUT_EVENT, ts=0, dur=100),
              dict(host, name=profile.STEP_EVENT, ts=2000, dur=600),
              # step 0: device 0 = 300 compute + 100 BN + 200 gradient; device 1 = 200 + 200 + 100 (microseconds)
              _op("fusion.1", 100, 300, 0), _op("bn.1", 400, 100, 0), _op("grad.2", 500, 200, 0),
              _op("fusion.1", 100, 200, 1), _op("bn.1", 300, 200, 1), _op("grad.2", 500, 100, 1),
              _op("inner", 150, 50, 0, tid=100),        # nested in fusion.1 on the same thread: not counted twice
              _op("eval.7", 100, 500, 0, module="jit_eval"),  # another program: ignored
              # step 1: only compute, 400 on both devices, no input wait
              _op("fusion.1", 2100, 400, 0), _op("fusion.1", 2100, 400, 1)]
    got = profile.step_breakdown({"traceEvents": events}, {"bn.1": "bn_collectives", "grad.2": "gradient_allreduce"},
                                 modules={"jit_body"})
    us = 1e-6
    expected = {"compute": (250 + 400) / 2 * us, "bn_collectives": 150 / 2 * us, "gradient_allreduce": 150 / 2 * us,
                "other_collectives": 0.0, "unattributed": 0.0, "input_wait": 100 / 2 * us,
                "host": (350 + 200) / 2 * us}
    assert set(expected) == set(profile.CATEGORIES)
    assert got["steps"] == 2 and got["devices"] == 2 and got["overlap_s"] == 0.0
    assert got["step_s"] == pytest.approx(800 * us)
    for k, v in expected.items():
        assert got["seconds"][k] == pytest.approx(v, abs=1e-15), k
        assert got["fractions"][k] == pytest.approx(v / (800 * us)), k
    assert math.fsum(got["fractions"].values()) == pytest.approx(1.0, abs=1e-12)
    assert got["collective_ops"] == {"bn_collectives": 1, "gradient_allreduce": 1, "other_collectives": 0}


def _meta(pid, name, tid=None):
    """A trace-viewer metadata event naming a process (or, with ``tid``, a thread)."""
    if tid is None:
        return {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}
    return {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}


def _kernel(name, ts, dur, pid, tid=13, **args):
    """A device kernel event as the profiler's trace viewer shows a CUPTI kernel on a GPU stream line: named after
    the kernel, with the correlation id and no XLA op metadata (no ``hlo_op``/``hlo_module``)."""
    return {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name,
            "args": {"correlation_id": ts, "device_id": pid - 10, **args}}


def test_device_time_without_op_metadata_is_unattributed_not_compute():
    """A GPU-shaped trace (modelled on the TensorBoard/XProf trace viewer's JSON for a GPU run: one process per
    device named ``/device:GPU:<n>``, one thread per CUDA stream, kernel events named after the kernel): some
    kernels carry XLA's ``hlo_op``/``hlo_module`` annotation, others do not (as when kernels are launched from a
    CUDA graph, where per-op annotations are absent). The unannotated time must land in ``unattributed``."""
    host = {"ph": "X", "pid": 1, "tid": 1}
    us = 1e-6
    events = [_meta(1, "/host:CPU"), _meta(11, "/device:GPU:0"), _meta(12, "/device:GPU:1"),
              _meta(11, "Stream #13(Compute)", tid=13), _meta(12, "Stream #13(Compute)", tid=13),
              dict(host, name=profile.STEP_EVENT, ts=0, dur=1000),
              # GPU 0: 200 us annotated compute, 100 us annotated gradient all-reduce, 300 us with no metadata
              _kernel("loop_add_fusion", 100, 200, 11, hlo_op="add_fusion.3", hlo_module="jit_body"),
              _kernel("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 300, 100, 11, hlo_op="all-reduce.2",
                      hlo_module="jit_body"),
              _kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 400, 300, 11),
              # GPU 1: 100 us annotated compute, 100 us unattributed, 100 us of an op of no instruction of the step
              _kernel("loop_add_fusion", 100, 100, 12, hlo_op="add_fusion.3", hlo_module="jit_body"),
              _kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 200, 100, 12),
              _kernel("cutlass_kernel", 300, 100, 12, hlo_op="custom-call.99", hlo_module="jit_body"),
              # a whole-module span on the device line: not an op, not counted
              _kernel("jit_body", 50, 900, 12, tid=2, hlo_module="jit_body")]
    got = profile.step_breakdown({"traceEvents": events}, {"all-reduce.2": "gradient_allreduce"},
                                 modules={"jit_body"}, instructions={"add_fusion.3", "all-reduce.2"})
    assert got["devices"] == 2 and got["unattributed_events"] == 3
    assert got["seconds"]["compute"] == pytest.approx((200 + 100) / 2 * us, abs=1e-15)
    assert got["seconds"]["gradient_allreduce"] == pytest.approx(100 / 2 * us, abs=1e-15)
    assert got["seconds"]["unattributed"] == pytest.approx((300 + 200) / 2 * us, abs=1e-15)
    assert got["seconds"]["host"] == pytest.approx((1000 - 150 - 50 - 250) * us, abs=1e-15)
    assert math.fsum(got["fractions"].values()) == pytest.approx(1.0, abs=1e-12)
    # Without the instruction table every annotated op is trusted; the unannotated kernels are still unattributed.
    trusting = profile.step_breakdown({"traceEvents": events}, {"all-reduce.2": "gradient_allreduce"},
                                      modules={"jit_body"})
    assert trusting["seconds"]["compute"] == pytest.approx((200 + 200) / 2 * us, abs=1e-15)
    assert trusting["seconds"]["unattributed"] == pytest.approx((300 + 100) / 2 * us, abs=1e-15)


def test_derived_device_lines_are_not_counted_twice():
    """A TPU-shaped device plane: one process ``/device:TPU:0`` whose lines are named by
    xla/tsl/profiler/utils/xplane_schema.cc (kStepLineName "Steps", kXlaModuleLineName "XLA Modules", kXlaOpLineName
    "XLA Ops", kTensorFlowNameScopeLineName "Framework Name Scope", kTensorFlowOpLineName "Framework Ops"). The op
    events are as xprof's synthetic TPU plane builds them (xprof convert/ test code, CreateSyntheticTpuPlane): named
    after the op, with program_id / symbol_id / group_id stats and no ``hlo_op`` or ``hlo_module``. Only the
    "XLA Ops" line counts (the others repeat its time); its events are known by name against the step's
    instructions, and a name that is no instruction of the step is unattributed. (Not yet checked against a trace
    from a real TPU: none was lent.)"""
    host = {"ph": "X", "pid": 1, "tid": 1}
    us = 1e-6
    lines = {1: "Steps", 2: "XLA Modules", 3: "XLA Ops", 4: "Framework Name Scope", 5: "Framework Ops"}

    def tpu_op(name, ts, dur, symbol):
        return _kernel(name, ts, dur, 21, tid=3, program_id=1, symbol_id=symbol, group_id=0)
    events = [_meta(1, "/host:CPU"), _meta(21, "/device:TPU:0"),
              *(_meta(21, name, tid=tid) for tid, name in lines.items()),
              dict(host, name=profile.STEP_EVENT, ts=0, dur=1000),
              _kernel("0", 100, 700, 21, tid=1),                                     # Steps: the step number
              _kernel("jit_body(123)", 100, 700, 21, tid=2, hlo_module="jit_body"),  # XLA Modules
              tpu_op("fusion.4", 100, 400, 4), tpu_op("all-reduce.2", 500, 200, 2), tpu_op("copy.9", 700, 100, 9),
              _kernel("train/conv", 100, 400, 21, tid=4), _kernel("train/psum", 500, 200, 21, tid=4),
              _kernel("Conv2D", 100, 400, 21, tid=5), _kernel("AllReduce", 500, 200, 21, tid=5)]
    got = profile.step_breakdown({"traceEvents": events}, {"all-reduce.2": "gradient_allreduce"},
                                 modules={"jit_body"}, instructions={"fusion.4", "all-reduce.2"})
    assert got["unattributed_events"] == 1 and got["seconds"]["unattributed"] == pytest.approx(100 * us)
    assert got["seconds"]["compute"] == pytest.approx(400 * us) and got["overlap_s"] == 0
    assert got["seconds"]["gradient_allreduce"] == pytest.approx(200 * us)
    assert got["seconds"]["host"] == pytest.approx(300 * us)
    assert got["collective_ops"]["gradient_allreduce"] == 1


def test_a_trace_without_steps_is_an_error():
    with pytest.raises(ValueError, match="no 'labkit_step' events"):
        profile.step_breakdown({"traceEvents": []}, {})


def _tiny_step(bn_group):
    import flax.linen as nn
    import jax
    from labkit.bn import DistributedBatchNorm
    from labkit.collectives import make_reducer
    from labkit.mesh import Topology
    from labkit.train.step import create_train_state, make_train_step
    import optax

    class Tiny(nn.Module):
        axis_name: tuple

        @nn.compact
        def __call__(self, x, train=True):
            x = nn.Conv(4, (3, 3), use_bias=False)(x)
            x = nn.relu(DistributedBatchNorm(use_running_average=not train, axis_name=self.axis_name)(x))
            return nn.Dense(10)(x.mean((1, 2)))

    topo = Topology.build(shape="2x4", bn_group=bn_group)
    model = Tiny(topo.bn_axes)
    state = jax.device_put(create_train_state(model, optax.sgd(0.1), (8, 8, 3)), topo.replicated)
    step = make_train_step(model, topo, reduce_gradients=make_reducer(topo, "torus2d"), donate=False)
    rng = np.random.default_rng(0)

    def batches():
        while True:
            yield {"image": topo.shard_batch(rng.normal(size=(16, 8, 8, 3)).astype(np.float32)),
                   "label": topo.shard_batch(rng.integers(0, 10, 16).astype(np.int32))}
    return step, state, batches()


@pytest.mark.parametrize("bn_group", [2, 1])
def test_profiled_step_adds_up_and_shows_its_collectives(bn_group):
    step, state, batches = _tiny_step(bn_group)
    got = profile.profile_step(step, state, batches, steps=2, warmup=1)
    assert got["steps"] == 2 and got["devices"] == 8
    assert math.fsum(got["fractions"].values()) == pytest.approx(1.0, abs=1e-12)
    assert math.fsum(got["seconds"].values()) == pytest.approx(got["step_s"] + got["overlap_s"], rel=1e-9)
    assert got["collective_ops"]["gradient_allreduce"] >= 1 and got["seconds"]["gradient_allreduce"] > 0
    assert got["seconds"]["compute"] > 0
    # A real CPU trace carries the op metadata on every op: nothing is unattributed.
    assert got["seconds"]["unattributed"] == 0 and got["unattributed_events"] == 0
    if bn_group > 1:  # the BN group sum, forward and backward, runs every step
        assert got["collective_ops"]["bn_collectives"] >= 1 and got["seconds"]["bn_collectives"] > 0
    else:  # BN over one replica: no collective at all
        assert got["collective_ops"]["bn_collectives"] == 0 and got["seconds"]["bn_collectives"] == 0


def test_breakdown_is_a_telemetry_kind():
    from labkit import telemetry
    stream = telemetry.EventStream()
    event = profile.emit_breakdown({"step_s": 0.1, "fractions": {"host": 1.0}}, stream, step=5)
    assert event["kind"] == "step_breakdown" and event["step"] == 5 and event["fractions"] == {"host": 1.0}

"""labkit.mesh: torus shapes, BN groups as contiguous tiles, and that the mesh axes realize those groups."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.conftest import GROUPS, SHAPES
from jax.sharding import PartitionSpec as P

from labkit.mesh import Topology, _device_grid, allowed_bn_groups, device_plan, plan_devices, simulate_devices


def _expected_groups(shape, g):
    """Independent reference: row-major replica ids cut into contiguous runs of g (tiles of the torus)."""
    ids = list(range(shape[0] * shape[1]))
    return [ids[i:i + g] for i in range(0, len(ids), g)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("g", GROUPS)
def test_groups_are_contiguous_tiles(shape, g):
    topo = Topology.build(shape=shape, bn_group=g)
    assert topo.num_replicas == 8 and topo.shape == shape
    assert topo.bn_groups() == _expected_groups(shape, g)
    x, y = shape
    for group in topo.bn_groups():
        rows = {r // y for r in group}
        if g <= y:  # part of one row
            assert len(rows) == 1
        else:       # whole rows
            assert len(rows) == g // y and all(set(range(r * y, (r + 1) * y)) <= set(group) for r in rows)
    sizes = dict(topo.mesh.shape)
    assert np.prod([sizes[a] for a in topo.torus_axes.x]) == x
    assert np.prod([sizes[a] for a in topo.torus_axes.y]) == y
    assert np.prod([sizes[a] for a in topo.bn_axes], dtype=int) == g


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("g", GROUPS)
def test_mesh_axes_realize_the_groups(shape, g):
    """A psum over bn_axes of one-hot replica ids must give each replica exactly its group's members."""
    topo = Topology.build(shape=shape, bn_group=g)
    onehot = topo.shard_batch(np.eye(8, dtype=np.float32))
    axes = topo.replica_axes

    def body(v):
        return jax.lax.psum(v, topo.bn_axes) if topo.bn_axes else v

    seen = jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(axes), out_specs=P(axes)))(onehot)
    seen = np.asarray(seen)
    for group in topo.bn_groups():
        for r in group:
            assert sorted(np.flatnonzero(seen[r]).tolist()) == group


def test_replica_id_is_row_major_position():
    topo = Topology.build(shape=(2, 4), bn_group=2)
    ids = topo.shard_batch(np.arange(8, dtype=np.int32))
    # The device holding row r must sit at torus position divmod(r, Y) of the mesh.
    grid = topo.mesh.devices.reshape(2, 4)
    for shard in ids.addressable_shards:
        r = int(np.asarray(shard.data)[0])
        i, j = topo.replica_coords(r)
        assert grid[i, j] == shard.device


def test_default_shape_is_most_square():
    assert Topology.build().shape == (2, 4)
    assert Topology.build(devices=jax.devices()[:4]).shape == (2, 2)
    assert Topology.build(shape="4x2").shape == (4, 2)


@pytest.mark.parametrize("bad", [3, 0, 16, -2, 2.0, "2", True])
def test_invalid_bn_group_names_parameter_and_allowed_values(bad):
    with pytest.raises(ValueError, match=r"bn_group: .*allowed values: \[1, 2, 4, 8\]"):
        Topology.build(shape=(2, 4), bn_group=bad)


def test_invalid_shapes():
    with pytest.raises(ValueError, match=r"shape: 3x3 needs 9 devices .* allowed shapes: 1x8, 2x4, 4x2, 8x1"):
        Topology.build(shape=(3, 3))
    with pytest.raises(ValueError, match="shape: expected"):
        Topology.build(shape="2by4")
    with pytest.raises(ValueError, match="shape: expected two positive ints"):
        Topology.build(shape=(2, 2, 2))


def test_allowed_bn_groups_on_non_square_torus():
    # 2x6: parts of a row divide 6; whole rows are 6 or 12.
    assert allowed_bn_groups((2, 6)) == [1, 2, 3, 6, 12]
    assert allowed_bn_groups((4, 2)) == [1, 2, 4, 8]


def test_shard_batch_rejects_indivisible_batch():
    topo = Topology.build(bn_group=1)
    with pytest.raises(ValueError, match="divisible by the 8 replicas"):
        topo.shard_batch(np.zeros((12, 3)))


def test_shard_batch_places_rows_in_order():
    topo = Topology.build(bn_group=4)
    host = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    arr = topo.shard_batch(host)
    assert arr.shape == (16, 3) and arr.sharding == topo.batch_sharding
    np.testing.assert_array_equal(np.asarray(arr), host)
    np.testing.assert_array_equal(np.asarray(jnp.sum(arr)), host.sum())


def test_describe_draws_torus_and_groups():
    text = Topology.build(shape=(2, 4), bn_group=2).describe()
    assert "2x4 torus" in text and "simulated" in text
    rows = [line.split() for line in text.splitlines() if line.strip().startswith(("x0", "x1"))]
    assert rows == [["x0", "0A", "1A", "2B", "3B"], ["x1", "4C", "5C", "6D", "7D"]]
    assert "groups: A=[0, 1]  B=[2, 3]  C=[4, 5]  D=[6, 7]" in text


def test_simulate_devices_after_start():
    assert simulate_devices(8) == 8  # already 8: fine
    with pytest.raises(RuntimeError, match="already started with 8 devices"):
        simulate_devices(4)


# ---------------------------------------------------------------------------------------------------------
# The device plan. Stand-in devices carry only what the plan and the layout read.

class _Dev:
    def __init__(self, id, platform="tpu", kind="TPU v5 lite", coords=None, process_index=0):
        self.id, self.platform, self.device_kind, self.process_index = id, platform, kind, process_index
        if coords is not None:
            self.coords, self.core_on_chip = coords, 0

    def __repr__(self):
        return f"_Dev({self.id}, {self.platform})"


_CPUS = tuple(_Dev(i, "cpu", "cpu") for i in range(8))


def test_plan_cpu_only():
    plan = plan_devices(_CPUS, _CPUS)
    assert (plan.case, plan.compute, plan.mesh, plan.rehearsal) == ("cpu", _CPUS, _CPUS, False)
    assert plan.mesh_simulated
    assert plan.line() == ("device plan: CPU only: single-device work and mesh lessons on 8 simulated CPU "
                           "devices (simulation)")


def test_plan_one_accelerator_puts_the_mesh_lessons_on_cpu_devices():
    tpu = (_Dev(0),)
    plan = plan_devices(tpu, _CPUS)
    assert (plan.case, plan.compute, plan.mesh, plan.rehearsal) == ("one-accelerator", tpu, _CPUS, False)
    assert plan.compute_label == "1 TPU v5 lite" and plan.mesh_label == "8 simulated CPU devices (simulation)"
    assert plan.line() == ("device plan: one accelerator: single-device work on 1 TPU v5 lite; mesh lessons "
                           "(grouped BN, all-reduce algorithms, 8-replica training) on 8 simulated CPU devices "
                           "(simulation)")
    gpu = (_Dev(0, "gpu", "NVIDIA H100 80GB HBM3"),)
    assert plan_devices(gpu, _CPUS).compute_label == "1 NVIDIA H100 80GB HBM3"


def test_plan_one_accelerator_without_a_cpu_backend_says_the_mesh_lessons_cannot_run():
    gpu = (_Dev(0, "gpu", "Tesla T4"),)
    plan = plan_devices(gpu, ())
    assert plan.mesh == gpu and "mesh lessons unavailable" in plan.line()


def test_plan_several_accelerators_run_everything_on_them():
    tpus = tuple(_Dev(i, coords=(i % 4, i // 4, 0)) for i in range(8))
    plan = plan_devices(tpus, _CPUS)
    assert (plan.case, plan.compute, plan.mesh) == ("accelerators", tpus, tpus)
    assert not plan.mesh_simulated
    assert plan.line() == ("device plan: 8 accelerator devices: single-device work and mesh lessons on 8 TPU "
                           "v5 lite, laid out by physical coordinates")


def test_plan_compute_limit_rehearses_one_chip_on_cpu():
    plan = plan_devices(_CPUS, _CPUS, compute_limit=1)
    assert (plan.case, plan.compute, plan.mesh, plan.rehearsal) == ("one-accelerator", _CPUS[:1], _CPUS, True)
    assert plan.line().startswith("device plan: one accelerator (rehearsal: LABKIT_COMPUTE_DEVICES=1): "
                                  "single-device work on 1 CPU device (simulation); mesh lessons")
    tpus = tuple(_Dev(i) for i in range(4))
    assert plan_devices(tpus, _CPUS, compute_limit=1).compute == tpus[:1]
    with pytest.raises(ValueError, match="LABKIT_COMPUTE_DEVICES: expected a positive int, got 0"):
        plan_devices(_CPUS, _CPUS, compute_limit=0)


def test_layout_follows_physical_coordinates():
    """Shuffled ids on a physical 4x2 chip grid: torus neighbours must be wired (Manhattan distance 1)."""
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    devs = [_Dev(i, coords=(k % 4, k // 4, 0)) for i, k in enumerate(order)]
    grid = _device_grid(devs, (2, 4))
    assert sorted(d.id for d in grid.flat) == list(range(8))

    def hop(a, b):
        return sum(abs(p - q) for p, q in zip(a.coords, b.coords))

    for i in range(2):
        for j in range(4):
            if j + 1 < 4:
                assert hop(grid[i, j], grid[i, j + 1]) == 1
            if i + 1 < 2:
                assert hop(grid[i, j], grid[i + 1, j]) == 1
    # id order (what devices without coordinates get) would break that: the test can fail
    by_id = np.asarray(sorted(devs, key=lambda d: d.id), dtype=object).reshape(2, 4)
    assert any(hop(by_id[0, j], by_id[0, j + 1]) != 1 for j in range(3))


def test_topology_follows_the_plan(monkeypatch):
    cpus = jax.devices()
    monkeypatch.delenv("LABKIT_COMPUTE_DEVICES", raising=False)
    assert device_plan().case == "cpu"
    assert list(Topology.build(devices="compute").mesh.devices.flat) == cpus
    monkeypatch.setenv("LABKIT_COMPUTE_DEVICES", "1")
    plan = device_plan()
    assert (plan.case, list(plan.compute), list(plan.mesh)) == ("one-accelerator", cpus[:1], cpus)
    assert Topology.build(bn_group=2).num_replicas == 8          # mesh lessons: the 8 CPU devices
    one = Topology.build(shape="1x1")                             # single-device work: the accelerator
    assert list(one.mesh.devices.flat) == cpus[:1] and one.label == "1 CPU device (simulation)"
    assert list(Topology.build(devices="compute").mesh.devices.flat) == cpus[:1]
    monkeypatch.setenv("LABKIT_COMPUTE_DEVICES", "one")
    with pytest.raises(ValueError, match="LABKIT_COMPUTE_DEVICES: expected a positive int .* got 'one'"):
        device_plan()


def test_topology_rejects_unknown_device_role():
    with pytest.raises(ValueError, match=r"devices: 'gpu' is not .* allowed values: 'mesh', 'compute'"):
        Topology.build(devices="gpu")


def test_one_device_bn_group_error_explains_the_mesh_lessons():
    with pytest.raises(ValueError, match=r"bn_group: 2 does not tile a 1x1 torus \(one device: the mesh lessons need several; .*allowed values: \[1\]"):
        Topology.build(bn_group=2, devices=jax.devices()[:1])


def test_single_host_tpu_vm_joins_no_cluster(monkeypatch):
    import labkit.mesh as mesh
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for key in ("LABKIT_COORDINATOR", "LABKIT_NUM_PROCESSES", "LABKIT_PROCESS_ID", "SLURM_JOB_ID",
                "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")   # a Colab TPU runtime / one-host slice
    assert mesh.initialize_multihost() == 1 and calls == []
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")  # a pod slice: auto-detected init
    mesh.initialize_multihost()
    assert calls == [((), {})]

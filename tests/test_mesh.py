"""labkit.mesh: torus shapes, BN groups as contiguous tiles, and that the mesh axes realize those groups."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.conftest import GROUPS, SHAPES
from jax.sharding import PartitionSpec as P

from labkit.mesh import Topology, allowed_bn_groups, device_plan, plan_devices, simulate_devices


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
    def __init__(self, id, platform="tpu", kind="TPU v5 lite", process_index=0):
        self.id, self.platform, self.device_kind, self.process_index = id, platform, kind, process_index

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
    tpus = tuple(_tpu_slice("TPU v5 lite", (2, 4, 1)))
    plan = plan_devices(tpus, _CPUS)
    assert (plan.case, plan.compute, plan.mesh) == ("accelerators", tpus, tpus)
    assert not plan.mesh_simulated
    assert plan.line() == ("device plan: 8 accelerator devices: single-device work and mesh lessons on 8 TPU "
                           "v5 lite, laid out by physical coordinates")
    gpus = tuple(_gpu_hosts(1, 8))
    assert plan_devices(gpus, _CPUS).line() == (
        "device plan: 8 accelerator devices: single-device work and mesh lessons on 8 NVIDIA H100 80GB HBM3, "
        "laid out by process, then local id")


def test_plan_compute_limit_rehearses_one_chip_on_cpu():
    plan = plan_devices(_CPUS, _CPUS, compute_limit=1)
    assert (plan.case, plan.compute, plan.mesh, plan.rehearsal) == ("one-accelerator", _CPUS[:1], _CPUS, True)
    assert plan.line().startswith("device plan: one accelerator (rehearsal: LABKIT_COMPUTE_DEVICES=1): "
                                  "single-device work on 1 CPU device (simulation); mesh lessons")
    tpus = tuple(_Dev(i) for i in range(4))
    assert plan_devices(tpus, _CPUS, compute_limit=1).compute == tpus[:1]
    with pytest.raises(ValueError, match="LABKIT_COMPUTE_DEVICES: expected a positive int, got 0"):
        plan_devices(_CPUS, _CPUS, compute_limit=0)


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


# ---------------------------------------------------------------------------------------------------------
# Layouts from real attributes. The stand-ins carry exactly the attributes XLA's PJRT clients give jax devices
# (/work/shared/reference/real-stacks.md, section 2; sources: XLA's xla/pjrt/gpu/se_gpu_pjrt_client.cc, the
# StreamExecutor GPU client, and the TPU PJRT device of libtpu as jax exposes it):
#   GPU: coords = [local_device_id] (ONE element), core_on_chip = 0, slice_index, compute_capability,
#        core_count, device_vendor, process_index, id, device_kind;
#   TPU: coords = [x, y, z] (z = 0 on v5e's 2-D slices, varying on v4/v5p 3-D slices), core_on_chip (0, or 0/1
#        on v2/v3 where each of a chip's two cores is a jax device), slice_index, process_index, id.
# Host trays follow Cloud TPU's documented hosts: 4 chips (2x2) a host on v5e multi-host slices (and v3),
# 4 chips (2x2x1) a host on v4 / v5p.

class _GpuDevice:
    platform = "gpu"
    device_kind = "NVIDIA H100 80GB HBM3"
    compute_capability, core_count, device_vendor = "9.0", 132, "NVIDIA"

    def __init__(self, process_index, local_id, per_host):
        self.id = process_index * per_host + local_id
        self.process_index, self.coords, self.core_on_chip = process_index, [local_id], 0
        self.slice_index = process_index  # the layout does not read it

    def __repr__(self):
        return f"gpu(p{self.process_index}, local {self.coords[0]})"


class _TpuDevice:
    platform = "tpu"

    def __init__(self, id, kind, coords, core_on_chip, process_index):
        self.id, self.device_kind, self.coords = id, kind, list(coords)
        self.core_on_chip, self.process_index, self.slice_index = core_on_chip, process_index, 0

    def __repr__(self):
        return f"tpu(p{self.process_index}, {self.coords}, core {self.core_on_chip})"


def _gpu_hosts(hosts, per_host):
    return [_GpuDevice(p, i, per_host) for p in range(hosts) for i in range(per_host)]


def _tpu_slice(kind, chips, host_tray=None, cores=1):
    """Devices of a TPU slice with a chip grid ``chips`` = (X, Y, Z); ``host_tray`` = each host's block of
    chips (the whole slice: one host); ``cores`` devices per chip. Listed in a shuffled order, as a layout
    must not rely on the order jax lists them in."""
    tray = host_tray or chips
    per_axis = [c // t for c, t in zip(chips, tray)]
    devs = []
    for x in range(chips[0]):
        for y in range(chips[1]):
            for z in range(chips[2]):
                hx, hy, hz = x // tray[0], y // tray[1], z // tray[2]
                host = (hz * per_axis[1] + hy) * per_axis[0] + hx
                for core in range(cores):
                    devs.append(_TpuDevice(len(devs), kind, (x, y, z), core, host))
    order = np.random.default_rng(len(devs)).permutation(len(devs))
    devs = [devs[i] for i in order]
    for new_id, d in enumerate(devs):  # ids need not follow the coordinates either
        d.id = new_id
    return devs


def _wired(a, b):
    """Chips one ICI hop apart, or the two cores of one chip (independent of labkit: from the coordinates)."""
    hops = sum(abs(p - q) for p, q in zip(a.coords, b.coords))
    return hops == 1 or (hops == 0 and a.core_on_chip != b.core_on_chip)


def _assert_hosts_together(grid):
    """Each host's devices fill one rectangle of the torus (one row or a run of rows for a GPU box)."""
    for p in {d.process_index for d in grid.flat}:
        cells = [(i, j) for (i, j), d in np.ndenumerate(grid) if d.process_index == p]
        rows, cols = {c[0] for c in cells}, {c[1] for c in cells}
        assert len(rows) * len(cols) == len(cells), f"host {p} is scattered over the torus: {cells}"


def _assert_wired(grid):
    x, y = grid.shape
    for i in range(x):
        for j in range(y):
            if j + 1 < y:
                assert _wired(grid[i, j], grid[i, j + 1]), (grid[i, j], grid[i, j + 1])
            if i + 1 < x:
                assert _wired(grid[i, j], grid[i + 1, j]), (grid[i, j], grid[i + 1, j])


@pytest.mark.parametrize("hosts,per_host,shapes", [
    (1, 1, [(1, 1)]), (1, 2, [(1, 2), (2, 1)]), (1, 4, [(2, 2), (1, 4)]), (1, 8, [(2, 4), (4, 2), (1, 8)]),
    (2, 8, [(4, 4), (2, 8), (8, 2)])])
def test_gpu_boxes_lay_out_by_process_then_local_id(hosts, per_host, shapes):
    devs = _gpu_hosts(hosts, per_host)
    shuffled = [devs[i] for i in np.random.default_rng(0).permutation(len(devs))]
    for shape in shapes:
        topo = Topology.build(shape=shape, bn_group=1, devices=shuffled)
        grid = topo.mesh.devices.reshape(shape)
        # reference: replica r is GPU r % per_host of host r // per_host
        assert [(d.process_index, d.coords[0]) for d in grid.flat] == [divmod(r, per_host) for r in range(len(devs))]
        _assert_hosts_together(grid)
    if len(devs) > 1:
        assert Topology.build(bn_group=len(devs), devices=shuffled).num_replicas == len(devs)


_TPU_SLICES = {
    # name: (device kind, chip grid, host tray, cores per chip, shapes that must follow the wiring)
    "v5e 2x4 (v5litepod-8, 1 host)": ("TPU v5 lite", (2, 4, 1), None, 1, [(2, 4), (4, 2), (1, 8)]),
    "v5e 4x4 (v5litepod-16, 4 hosts)": ("TPU v5 lite", (4, 4, 1), (2, 2, 1), 1, [(4, 4)]),
    "v4 2x2x1 (v4-8, 1 host)": ("TPU v4", (2, 2, 1), None, 1, [(2, 2), (1, 4)]),
    "v5p 2x2x1 (v5p-8, 1 host)": ("TPU v5", (2, 2, 1), None, 1, [(2, 2)]),
    "v5p 2x2x2 (v5p-16, 2 hosts)": ("TPU v5", (2, 2, 2), (2, 2, 1), 1, [(2, 4), (4, 2)]),
    "v5p 2x2x4 (v5p-32, 4 hosts)": ("TPU v5", (2, 2, 4), (2, 2, 1), 1, [(4, 4), (2, 8)]),
    "v3 2x2 x 2 cores (v3-8, 1 host)": ("TPU v3", (2, 2, 1), None, 2, [(2, 4), (4, 2)]),
    "v3 4x4 x 2 cores (v3-32, 4 hosts)": ("TPU v3", (4, 4, 1), (2, 2, 1), 2, [(4, 8)]),
}


@pytest.mark.parametrize("name", list(_TPU_SLICES))
def test_tpu_slices_lay_out_on_the_wiring_with_hosts_together(name):
    kind, chips, tray, cores, shapes = _TPU_SLICES[name]
    devs = _tpu_slice(kind, chips, tray, cores)
    n = len(devs)
    assert Topology.build(devices=devs).shape in shapes  # the default (most square) shape follows the wiring
    for shape in shapes:
        topo = Topology.build(shape=shape, bn_group=shape[1], devices=devs)
        grid = topo.mesh.devices.reshape(shape)
        assert sorted(d.id for d in grid.flat) == list(range(n))
        _assert_wired(grid)
        _assert_hosts_together(grid)
    for x, y in [(a, n // a) for a in range(1, n + 1) if n % a == 0]:  # every shape lays out, hosts together
        _assert_hosts_together(Topology.build(shape=(x, y), devices=devs).mesh.devices.reshape(x, y))


def test_v5e_2x4_torus_is_the_chip_grid():
    """On a one-host v5e-8 the 2x4 torus is the chip grid itself: replica (i, j) is the chip at x=i, y=j."""
    grid = Topology.build(shape="2x4", devices=_tpu_slice("TPU v5 lite", (2, 4, 1))).mesh.devices.reshape(2, 4)
    assert [[d.coords for d in row] for row in grid] == [[[i, j, 0] for j in range(4)] for i in range(2)]
    # id order (what a layout blind to the coordinates gives) breaks the wiring: this test can fail
    by_id = np.asarray(sorted(grid.flat, key=lambda d: d.id), dtype=object).reshape(2, 4)
    with pytest.raises(AssertionError):
        _assert_wired(by_id)


def test_multislice_keeps_each_slice_a_tile_on_its_wiring():
    """Two v5e-8 slices (multislice, joined over DCN): each repeats the coordinates of a 2x4 chip grid with its
    own slice_index. Each slice is one tile of the torus (half of it), laid out on its own wiring."""
    devs = []
    for sl in range(2):
        for d in _tpu_slice("TPU v5 lite", (2, 4, 1)):
            d.id, d.slice_index, d.process_index = sl * 8 + d.id, sl, sl
            devs.append(d)
    grid = Topology.build(shape="4x4", devices=devs).mesh.devices.reshape(4, 4)
    _assert_hosts_together(grid)
    for sl in range(2):
        rows = sorted({i for (i, j), d in np.ndenumerate(grid) if d.slice_index == sl})
        _assert_wired(grid[rows])


def test_v3_cores_of_a_chip_sit_side_by_side():
    grid = Topology.build(shape="2x4", devices=_tpu_slice("TPU v3", (2, 2, 1), cores=2)).mesh.devices.reshape(2, 4)
    for row in grid:
        assert row[0].coords == row[1].coords and {row[0].core_on_chip, row[1].core_on_chip} == {0, 1}
        assert row[2].coords == row[3].coords and {row[2].core_on_chip, row[3].core_on_chip} == {0, 1}

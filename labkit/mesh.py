"""mesh: the device plan, simulated CPU devices, the 2-D torus mesh, BN-group layout.

Owns where work runs (``device_plan``: single-device work on the compute devices, mesh lessons and multi-replica
training on the mesh devices; one accelerator gets 8 simulated CPU devices beside it for the mesh lessons), the
mapping from physical devices to replicas and from replicas to BN groups. A BN group is a
contiguous tile of the torus, expressed as *mesh axes* (an axis split into outer/inner) so that every
collective stays a plain ``shard_map`` axis collective (``axis_index_groups`` is not supported there).
Devices are laid out by what XLA gives them: TPU chip coordinates (torus neighbours are wired neighbours),
GPUs by process then local id; each host's devices stay together. Joining a multi-host job before any of this
is ``labkit.multihost``'s.
Must not: build models, run training, or compute anything on device beyond placing data.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["simulate_devices", "DevicePlan", "device_plan", "plan_devices",
           "describe_devices", "Topology", "allowed_bn_groups", "allowed_shapes"]


def simulate_devices(n: int = 8) -> int:
    """Make the CPU backend expose ``n`` devices; call before any JAX computation.

    On a TPU/GPU host this only sets the (unused) CPU device count, so it is safe to call everywhere. It does
    not start the backend itself (``jax.distributed.initialize`` may still follow). Returns ``n``. Raises
    ``RuntimeError`` if the CPU backend already started with a different count (JAX fixes it at start).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"simulate_devices: n must be a positive int, got {n!r}")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        # The backend is already up: fine if it already has n CPU devices, or if the mesh lessons do not need
        # the CPU devices (two or more accelerators).
        cpu = _cpu_devices()
        needs_cpu = jax.default_backend() == "cpu" or jax.device_count() == 1 or _compute_limit() == 1
        if needs_cpu and len(cpu) != n:
            raise RuntimeError(
                f"simulate_devices({n}): the JAX CPU backend already started with {len(cpu)} "
                "devices; call labkit.mesh.simulate_devices (or labkit.lab.setup) before any JAX computation "
                "(restart the kernel in a notebook)") from None
    return n


# ---------------------------------------------------------------------------------------------------------
# The device plan: where each kind of work runs.

_CASES = ("cpu", "one-accelerator", "accelerators")


@dataclasses.dataclass(frozen=True)
class DevicePlan:
    """Where each kind of work runs, and the labels that go next to the numbers it produces.

    ``case``: ``"cpu"`` (CPU only: everything on the simulated CPU devices), ``"one-accelerator"`` (single-device
    work on the accelerator, mesh lessons on simulated CPU devices beside it) or ``"accelerators"`` (everything
    on two or more accelerator devices, laid out by physical coordinates where they have them).
    ``compute``: the devices for real work (a one-replica topology takes the first).
    ``mesh``: the devices for the mesh lessons (grouped BN, all-reduce algorithms, multi-replica training).
    ``rehearsal``: ``LABKIT_COMPUTE_DEVICES`` limited the default backend (e.g. the one-chip plan on a CPU).
    """
    case: str
    compute: tuple
    mesh: tuple
    rehearsal: bool = False

    @property
    def compute_label(self) -> str:
        """e.g. ``"1 TPU v5 lite"`` or ``"8 simulated CPU devices (simulation)"``: put it next to compute numbers."""
        return describe_devices(self.compute)

    @property
    def mesh_label(self) -> str:
        """The label for numbers measured on the mesh devices."""
        return describe_devices(self.mesh)

    @property
    def mesh_simulated(self) -> bool:
        """The mesh lessons run on CPU devices: their timings are simulation."""
        return self.mesh[0].platform == "cpu"

    def line(self) -> str:
        """The plan in one line (what ``lab.setup`` prints)."""
        how = f" (rehearsal: LABKIT_COMPUTE_DEVICES={len(self.compute)})" if self.rehearsal else ""
        if self.case == "cpu":
            return (f"device plan: CPU only: single-device work and mesh lessons on {self.mesh_label}")
        if self.case == "accelerators":
            layout = (", laid out by physical coordinates" if len(getattr(self.mesh[0], "coords", ())) >= 2
                      else ", laid out by process, then local id")
            return (f"device plan: {len(self.compute)} accelerator devices{how}: single-device work and mesh "
                    f"lessons on {self.mesh_label}{layout}")
        lessons = (f"mesh lessons (grouped BN, all-reduce algorithms, {len(self.mesh)}-replica training) on "
                   f"{self.mesh_label}")
        if len(self.mesh) < 2:
            lessons = (f"mesh lessons unavailable: only {self.mesh_label} beside it (start JAX through "
                       "labkit.lab.setup so that 8 CPU devices are simulated)")
        return f"device plan: one accelerator{how}: single-device work on {self.compute_label}; {lessons}"


def describe_devices(devices) -> str:
    """A short label for numbers measured on ``devices``: ``"8 simulated CPU devices (simulation)"``,
    ``"1 CPU device (simulation)"``, ``"1 TPU v5 lite"``, ``"8 NVIDIA H100 80GB HBM3"``."""
    devices = list(devices)
    n = len(devices)
    if not n:
        return "no devices"
    if devices[0].platform == "cpu":
        return ("1 CPU device (simulation)" if n == 1 else f"{n} simulated CPU devices (simulation)")
    kinds = sorted({d.device_kind for d in devices})
    return f"{n} {' + '.join(kinds)}"


def plan_devices(default_devices, cpu_devices, compute_limit: int | None = None) -> DevicePlan:
    """The plan for these devices (pure: no JAX calls, so it is testable with stand-in device objects).

    ``default_devices``: the default backend's devices (``jax.devices()``); ``cpu_devices``: the CPU backend's
    (``jax.devices("cpu")``, empty if it is absent); ``compute_limit``: use only the first N default devices
    as the accelerators (``LABKIT_COMPUTE_DEVICES``; rehearses the one-chip plan on a CPU).
    """
    default_devices, cpu_devices = tuple(default_devices), tuple(cpu_devices)
    if not default_devices:
        raise ValueError("device plan: JAX reports no devices")
    rehearsal = False
    if compute_limit is not None:
        if not isinstance(compute_limit, int) or isinstance(compute_limit, bool) or compute_limit < 1:
            raise ValueError(f"LABKIT_COMPUTE_DEVICES: expected a positive int, got {compute_limit!r}")
        rehearsal = compute_limit < len(default_devices)
        default_devices = default_devices[:compute_limit]
    if default_devices[0].platform == "cpu" and not rehearsal:
        return DevicePlan("cpu", default_devices, default_devices)
    if len(default_devices) >= 2:
        return DevicePlan("accelerators", default_devices, default_devices, rehearsal)
    mesh = cpu_devices or default_devices  # no CPU backend (JAX_PLATFORMS without cpu): the one device
    return DevicePlan("one-accelerator", default_devices, mesh, rehearsal)


def device_plan() -> DevicePlan:
    """The plan for this process (starts the JAX backend: call ``simulate_devices`` or ``lab.setup`` first)."""
    return plan_devices(jax.devices(), _cpu_devices(), _compute_limit())


def _compute_limit() -> int | None:
    raw = os.environ.get("LABKIT_COMPUTE_DEVICES", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise ValueError(f"LABKIT_COMPUTE_DEVICES: expected a positive int (e.g. 1 to rehearse the one-chip "
                         f"plan), got {raw!r}")
    return value


def _cpu_devices() -> list:
    try:
        return jax.devices("cpu")
    except RuntimeError:  # JAX_PLATFORMS excludes the CPU backend
        return []


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def allowed_shapes(num_replicas: int) -> list[tuple[int, int]]:
    """Every (X, Y) torus shape with X * Y == num_replicas."""
    return [(d, num_replicas // d) for d in _divisors(num_replicas)]


def allowed_bn_groups(shape: tuple[int, int]) -> list[int]:
    """BN group sizes that tile an (X, Y) torus: divisors of Y (part of a row) or k*Y with k | X (whole rows)."""
    x, y = shape
    return sorted(set(_divisors(y)) | {k * y for k in _divisors(x)})


def _most_square(n: int) -> tuple[int, int]:
    x = max(d for d in _divisors(n) if d <= math.isqrt(n))
    return (x, n // x)


def _parse_shape(shape) -> tuple[int, int] | None:
    if shape is None or shape == "":  # '' is config.shape's "automatic"
        return None
    if isinstance(shape, str):
        parts = shape.lower().replace(",", "x").split("x")
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"shape: expected 'XxY' such as '2x4', got {shape!r}") from None
    shape = tuple(shape)
    if len(shape) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shape):
        raise ValueError(f"shape: expected two positive ints (X, Y), got {shape!r}")
    return (int(shape[0]), int(shape[1]))


@dataclasses.dataclass(frozen=True)
class TorusAxes:
    """Mesh axis names that together make up the torus X dimension and the Y dimension."""
    x: tuple[str, ...]
    y: tuple[str, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """Replicas laid out on an (X, Y) torus, with BN groups as contiguous tiles expressed as mesh axes.

    Replica id = row-major position on the torus (r = i * Y + j). Mesh axes, outer to inner:
      g == 1            -> ('x', 'y'),              bn_axes = ()
      1 < g < Y, g | Y  -> ('x', 'yo', 'yi'),       bn_axes = ('yi',)       g consecutive replicas of a row
      g == Y            -> ('x', 'y'),              bn_axes = ('y',)        one whole row
      g == k*Y, 1<k<X   -> ('xo', 'xi', 'y'),       bn_axes = ('xi', 'y')   k whole rows
      g == X*Y          -> ('x', 'y'),              bn_axes = ('x', 'y')    every replica
    """
    mesh: Mesh
    shape: tuple[int, int]
    bn_group: int
    bn_axes: tuple[str, ...]
    torus_axes: TorusAxes

    @classmethod
    def build(cls, shape=None, bn_group: int = 1, devices: Sequence[jax.Device] | str | None = None) -> "Topology":
        """Lay ``devices`` out as an (X, Y) torus with BN groups of ``bn_group``.

        ``devices`` defaults to the device plan (``device_plan()``): its mesh devices, except that a one-replica
        ``shape`` (``"1x1"``) is single-device work and takes the first compute device (the accelerator).
        ``"mesh"`` / ``"compute"`` pick the plan's mesh or compute devices; a sequence is used as given.
        ``shape`` defaults to the most square factorization (8 -> 2x4); strings like ``"2x4"`` are accepted.
        Devices with physical coordinates (TPU) are laid out by them, so torus neighbours are wired neighbours.
        """
        shape = _parse_shape(shape)
        devices = _pick_devices(devices, shape)
        n = len(devices)
        shape = shape or _most_square(n)
        if shape[0] * shape[1] != n:
            raise ValueError(f"shape: {shape[0]}x{shape[1]} needs {shape[0] * shape[1]} devices but there are "
                             f"{n}; allowed shapes: {', '.join(f'{a}x{b}' for a, b in allowed_shapes(n))}")
        allowed = allowed_bn_groups(shape)
        if not isinstance(bn_group, (int, np.integer)) or isinstance(bn_group, bool) or bn_group not in allowed:
            hint = (" (one device: the mesh lessons need several; labkit.lab.setup starts JAX with "
                    "LABKIT_CPU_DEVICES, default 8, simulated CPU devices for them)") if n == 1 else ""
            raise ValueError(f"bn_group: {bn_group!r} does not tile a {shape[0]}x{shape[1]} torus{hint}; "
                             f"allowed values: {allowed}")
        bn_group = int(bn_group)
        grid = _device_grid(devices, shape)
        x, y = shape
        if bn_group in (1, y, n):
            names, dims = ("x", "y"), (x, y)
            bn_axes = () if bn_group == 1 else ("y",) if bn_group == y else ("x", "y")
            torus = TorusAxes(("x",), ("y",))
        elif bn_group < y:
            names, dims = ("x", "yo", "yi"), (x, y // bn_group, bn_group)
            bn_axes, torus = ("yi",), TorusAxes(("x",), ("yo", "yi"))
        else:
            k = bn_group // y
            names, dims = ("xo", "xi", "y"), (x // k, k, y)
            bn_axes, torus = ("xi", "y"), TorusAxes(("xo", "xi"), ("y",))
        mesh = Mesh(grid.reshape(dims), names)
        return cls(mesh=mesh, shape=shape, bn_group=bn_group, bn_axes=bn_axes, torus_axes=torus)

    @property
    def label(self) -> str:
        """What produced numbers measured on this topology, e.g. ``"8 simulated CPU devices (simulation)"``."""
        return describe_devices(self.mesh.devices.flat)

    @property
    def simulated(self) -> bool:
        """The replicas are CPU devices: timings are simulation, not hardware."""
        return self.mesh.devices.flat[0].platform == "cpu"

    @property
    def num_replicas(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def replica_axes(self) -> tuple[str, ...]:
        """All mesh axes, outer to inner; a batch is split over them in this (row-major) order."""
        return tuple(self.mesh.axis_names)

    @property
    def num_bn_groups(self) -> int:
        return self.num_replicas // self.bn_group

    def bn_groups(self) -> list[list[int]]:
        """Replica ids of each BN group, in group order (groups are contiguous torus tiles)."""
        x, y = self.shape
        if self.bn_group <= y:
            return [[r * y + c0 + j for j in range(self.bn_group)]
                    for r in range(x) for c0 in range(0, y, self.bn_group)]
        k = self.bn_group // y
        return [list(range(r0 * y, (r0 + k) * y)) for r0 in range(0, x, k)]

    def replica_coords(self, replica: int) -> tuple[int, int]:
        """(row, column) of a replica on the torus."""
        return divmod(replica, self.shape[1])

    @property
    def batch_sharding(self) -> NamedSharding:
        """Sharding of a global batch: leading dim split over all replicas."""
        return NamedSharding(self.mesh, P(self.replica_axes))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def shard_batch(self, array) -> jax.Array:
        """Host array (this process's rows, leading batch dim) -> global ``jax.Array`` sharded over replicas.

        Multi-process aware: each process passes only its local rows (``make_array_from_process_local_data``).
        """
        array = np.asarray(array)
        local_replicas = len(self.mesh.local_devices)
        if array.ndim == 0 or array.shape[0] % local_replicas:
            raise ValueError(f"shard_batch: leading dimension {array.shape[:1]} must be divisible by the "
                             f"{local_replicas} replicas on this process")
        return jax.make_array_from_process_local_data(self.batch_sharding, array)

    def describe(self) -> str:
        """The torus drawn as text: replica ids with their BN-group letter, plus axes and groups."""
        x, y = self.shape
        group_of = {r: gi for gi, grp in enumerate(self.bn_groups()) for r in grp}
        label = lambda gi: _group_label(gi)  # noqa: E731
        width = max(len(f"{self.num_replicas - 1}{label(self.num_bn_groups - 1)}"), 3)
        dev = self.mesh.devices.reshape(x, y)
        kind = dev[0, 0].platform
        simulated = " (simulated CPU devices: timings are simulation, not hardware)" if kind == "cpu" else ""
        lines = [f"{self.num_replicas} replicas on a {x}x{y} torus, {kind}{simulated}",
                 f"mesh axes: {', '.join(f'{a}={s}' for a, s in self.mesh.shape.items())}   "
                 f"torus X = {'*'.join(self.torus_axes.x)}, Y = {'*'.join(self.torus_axes.y)}",
                 f"BN group size {self.bn_group}: {self.num_bn_groups} groups over axes "
                 f"{self.bn_axes or '() (per-replica BN)'}",
                 "      " + " ".join(f"y{j}".rjust(width) for j in range(y))]
        for i in range(x):
            cells = " ".join(f"{i * y + j}{label(group_of[i * y + j])}".rjust(width) for j in range(y))
            lines.append(f"  x{i}  {cells}")
        lines.append("groups: " + "  ".join(f"{label(g)}={grp}" for g, grp in enumerate(self.bn_groups())))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Topology(shape={self.shape}, bn_group={self.bn_group}, axes={dict(self.mesh.shape)}, "
                f"bn_axes={self.bn_axes})")


def _group_label(i: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[i] if i < 26 else f"G{i}"


def _pick_devices(devices, shape) -> list:
    if devices is not None and not isinstance(devices, str):
        return list(devices)
    if devices not in (None, "mesh", "compute"):
        raise ValueError(f"devices: {devices!r} is not a device list or a plan role; allowed values: "
                         "'mesh', 'compute', None (the plan's default), or a sequence of devices")
    plan = device_plan()
    if devices == "compute" or (devices is None and shape is not None and shape[0] * shape[1] == 1):
        return list(plan.compute[:1] if devices is None else plan.compute)
    return list(plan.mesh)


def _device_grid(devices: list, shape: tuple[int, int]) -> np.ndarray:
    """Devices as an (X, Y) array, each host's devices together.

    TPU chips (``coords = [x, y, z]``, plus ``core_on_chip`` where a chip is two devices) follow their
    coordinates, so torus neighbours are wired neighbours (``_grid_by_coords``). GPUs (XLA gives each only
    ``coords = [local_device_id]``: no wiring to follow, NVLink is no torus) and CPUs are laid out by process,
    then local id: each host's devices are consecutive replicas. A TPU slice whose chip grid cannot take
    ``shape`` falls back to that order too.
    """
    if len(devices) > 1 and all(len(getattr(d, "coords", ())) >= 2 for d in devices):
        grid = _grid_by_coords(devices, shape)
        if grid is not None:
            return grid
    return np.asarray(sorted(devices, key=_host_order), dtype=object).reshape(shape)


def _host_order(d) -> tuple:
    coords = getattr(d, "coords", None)
    local = coords[0] if coords is not None and len(coords) == 1 else -1  # a GPU's local_device_id
    return (getattr(d, "process_index", 0), local, d.id)


def _snake(sizes: list[int]) -> list[tuple[int, ...]]:
    """Every index of a box of ``sizes``, each one step along one axis from the one before (boustrophedon)."""
    if not sizes:
        return [()]
    rest = _snake(sizes[1:])
    return [(i, *r) for i in range(sizes[0]) for r in (rest if i % 2 == 0 else rest[::-1])]


def _hosts_are_tiles(grid: np.ndarray) -> bool:
    """Each process's devices fill one rectangle of the torus grid."""
    for p in {getattr(d, "process_index", 0) for d in grid.flat}:
        rows, cols = np.nonzero(np.vectorize(lambda d: getattr(d, "process_index", 0) == p)(grid))
        r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
        if (r1 - r0 + 1) * (c1 - c0 + 1) != len(rows):
            return False
    return True


def _grid_by_coords(devices: list, shape: tuple[int, int]) -> np.ndarray | None:
    """Lay a full box of TPU devices (chip coordinates x, y, z and the core on the chip) out as ``shape``.

    The physical axes that vary (slice, x, y, z, core; size-1 axes dropped) are split between the torus X and Y, each
    side walked as a snake, so every torus neighbour (wrap-around aside) is one hop on the chip grid or the
    other core of the same chip. Of the splits that fit ``shape``, the first (physical order, cores innermost)
    that keeps each host's devices as one tile of the torus wins. None when the devices are not a full box
    or no split fits ``shape``.
    """
    import itertools
    # slice_index first: in a multislice job the slices repeat the same chip coordinates (DCN joins them)
    pos = [(getattr(d, "slice_index", 0) or 0, *tuple(d.coords), getattr(d, "core_on_chip", 0) or 0)
           for d in devices]
    if len(set(pos)) != len(pos):
        return None
    values = [sorted({p[a] for p in pos}) for a in range(len(pos[0]))]
    axes = [a for a, v in enumerate(values) if len(v) > 1]
    sizes = [len(values[a]) for a in axes]
    if math.prod(sizes) != len(devices):
        return None
    index = [tuple(values[a].index(p[a]) for a in axes) for p in pos]
    fallback = None
    for order in itertools.permutations(range(len(axes))):
        for cut in range(len(order) + 1):
            xa, ya = order[:cut], order[cut:]
            if (math.prod(sizes[i] for i in xa), math.prod(sizes[i] for i in ya)) != shape:
                continue
            xs = {v: k for k, v in enumerate(_snake([sizes[i] for i in xa]))}
            ys = {v: k for k, v in enumerate(_snake([sizes[i] for i in ya]))}
            grid = np.empty(shape, dtype=object)
            for d, ix in zip(devices, index):
                grid[xs[tuple(ix[i] for i in xa)], ys[tuple(ix[i] for i in ya)]] = d
            if _hosts_are_tiles(grid):
                return grid
            fallback = grid if fallback is None else fallback
    return fallback

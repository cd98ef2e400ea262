"""multihost: joining a multi-process JAX job (``jax.distributed``) before any device is touched.

Owns ``initialize_multihost``: a manual start from arguments or ``LABKIT_*`` variables, otherwise JAX's own cluster
detection (``jax._src.clusters``: Cloud TPU VMs, GKE, SLURM, Open MPI), and which GPUs each launched process
drives (``LABKIT_LOCAL_DEVICES``). Split from ``labkit.mesh`` because it runs before a backend exists and reads
only the environment; the mesh is built after it, from the devices it leaves.
Must not: lay out devices, build meshes, or start a backend before ``jax.distributed.initialize``.
"""
from __future__ import annotations

import os

import jax

__all__ = ["initialize_multihost"]


_LOCAL_DEVICES = ("auto", "all", "one")


def initialize_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None, *, local_devices: str | None = None) -> int:
    """Join JAX's multi-process runtime (``jax.distributed``) when this process is one of several; call it
    before any JAX computation (``jax.devices()`` included). Returns the process count.

    A manual start: ``coordinator_address`` (host:port), ``num_processes``, ``process_id``, or the environment
    ``LABKIT_COORDINATOR``, ``LABKIT_NUM_PROCESSES``, ``LABKIT_PROCESS_ID``. Otherwise JAX's own cluster
    detection (``jax._src.clusters``: Cloud TPU VMs through the metadata server, GKE TPU, SLURM, Open MPI, ...)
    finds the job; a job of one process (a one-host TPU VM, Jupyter inside ``salloc``) joins nothing.

    ``local_devices`` (env ``LABKIT_LOCAL_DEVICES``, default ``"auto"``): the GPUs each process drives when a
    launcher starts it. ``"all"``: one process per host with every local GPU (JAX's detection alone would pin
    one GPU per process and leave the rest idle); ``"one"``: one process per GPU (``srun --ntasks-per-node=8``);
    ``"auto"``: ``"all"`` when the launcher started one process on this host, else ``"one"``. TPUs: JAX's own.
    A ``JAX_LOCAL_DEVICE_IDS`` set by the user is left to JAX, which reads it.
    """
    mode = (local_devices or os.environ.get("LABKIT_LOCAL_DEVICES", "").strip() or "auto").lower()
    if mode not in _LOCAL_DEVICES:
        raise ValueError(f"LABKIT_LOCAL_DEVICES: {mode!r} is not a choice; allowed values: {list(_LOCAL_DEVICES)} "
                         "('all': one process per host with every GPU, 'one': one process per GPU)")
    coordinator_address = coordinator_address or os.environ.get("LABKIT_COORDINATOR")
    num_processes = num_processes if num_processes is not None else _env_int("LABKIT_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("LABKIT_PROCESS_ID")
    if num_processes == 1:
        return 1
    if jax.distributed.is_initialized():  # e.g. a second run in the same notebook kernel
        return jax.process_count()
    if coordinator_address is not None or num_processes is not None:
        # A manual start is one process per host unless told otherwise (JAX would still pin one GPU if it saw
        # a SLURM / Open MPI environment). On CPU, cross-process collectives use gloo (jax's default).
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id,
                                   local_device_ids=_local_device_ids("all" if mode == "auto" else mode, None))
        return jax.process_count()
    cluster = _detect_cluster()
    if cluster is None:
        return 1
    if cluster is _UNKNOWN:  # a jax without the detection classes labkit reads: ask jax itself
        try:
            jax.distributed.initialize()
        except ValueError:  # "coordinator_address should be defined": no cluster
            return 1
        return jax.process_count()
    count = _process_count(cluster)
    if count <= 1:
        return 1
    # num_processes: the step's own count (a SLURM step may be smaller than its allocation's SLURM_NTASKS).
    jax.distributed.initialize(num_processes=count, local_device_ids=_local_device_ids(mode, cluster))
    return jax.process_count()


_UNKNOWN = object()


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an int, got {raw!r}") from None


def _detect_cluster():
    """The cluster JAX's ``jax.distributed.initialize()`` would detect (the same classes, in the same order),
    None when there is none, ``_UNKNOWN`` when this jax does not expose them."""
    try:
        from jax._src import clusters
        kinds = list(clusters.ClusterEnv._cluster_types)
    except (ImportError, AttributeError):
        return _UNKNOWN
    for kind in kinds:
        if getattr(kind, "opt_in_only_method", False):
            continue
        if kind.__name__ == "K8sCluster":
            # Every Kubernetes pod has KUBERNETES_SERVICE_HOST (a Binder or JupyterHub notebook too): without
            # the `kubernetes` package JAX warns and says no, and with it a pod that may not read its own
            # namespace raises. Neither is a job to join; a JAX job on Kubernetes says so (see README).
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    present = kind.is_env_present()
                except Exception:  # noqa: BLE001 (the in-cluster configuration is missing or unreadable)
                    present = False
        else:
            present = kind.is_env_present()
        if present:
            return kind
    return None


def _process_count(cluster) -> int:
    if getattr(cluster, "name", "") == "slurm" and os.environ.get("SLURM_STEP_NUM_TASKS", "").strip():
        # srun sets the step's count; SLURM_NTASKS (what JAX reads) may be the whole allocation's, e.g. for
        # Jupyter started in salloc's interactive step of an `salloc -n 16` allocation.
        return int(os.environ["SLURM_STEP_NUM_TASKS"])
    return int(cluster.get_process_count())


def _visible_gpus() -> int:
    """NVIDIA GPUs this process may use, counted without starting a backend: ``CUDA_VISIBLE_DEVICES`` (which
    SLURM sets for a GPU allocation), else the driver's ``/dev/nvidiaN`` files."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        ids = [s for s in raw.split(",") if s.strip()]
        return 0 if ids[:1] in (["-1"], ["NoDevFiles"]) else len(ids)
    import glob
    return len(glob.glob("/dev/nvidia[0-9]*"))


def _local_process_count() -> int | None:
    """Processes the launcher started on this host: Open MPI's ``OMPI_COMM_WORLD_LOCAL_SIZE``, or SLURM's
    ``SLURM_STEP_TASKS_PER_NODE`` (e.g. ``"8(x2)"`` or ``"2,1"``) at ``SLURM_NODEID``; None if neither says."""
    if os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "").strip():
        return int(os.environ["OMPI_COMM_WORLD_LOCAL_SIZE"])
    raw = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE")
    if not raw:
        return None
    per_node = []
    for part in raw.split(","):
        count, _, times = part.partition("(x")
        per_node += [int(count)] * (int(times.rstrip(")")) if times else 1)
    node = int(os.environ.get("SLURM_NODEID", "0") or 0)
    return per_node[node] if node < len(per_node) else None


def _local_device_ids(mode: str, cluster) -> list[int] | None:
    """``local_device_ids`` for ``jax.distributed.initialize``; None leaves JAX's own choice (TPUs, CPUs, or the
    user's own ``JAX_LOCAL_DEVICE_IDS``)."""
    gpus = _visible_gpus()
    if not gpus or os.environ.get("JAX_LOCAL_DEVICE_IDS", "").strip():
        return None
    if mode == "auto":
        local = _local_process_count()
        if local is None:
            return None  # the launcher does not say: JAX's own choice (one GPU per process under SLURM/MPI)
        mode = "all" if local == 1 else "one"
    if mode == "all":
        return list(range(gpus))
    if gpus == 1:  # the launcher gave this process its own GPU (srun --gpus-per-task=1): it is ordinal 0
        return [0]
    rank = cluster.get_local_process_id() if cluster is not None else None
    if rank is None:
        raise ValueError("LABKIT_LOCAL_DEVICES: 'one' (one process per GPU) needs a launcher that numbers the "
                         "processes of a host (SLURM, Open MPI), and none does here; allowed values here: 'all', "
                         "'auto' (or give each process its GPU with JAX_LOCAL_DEVICE_IDS)")
    if rank >= gpus:
        raise ValueError(f"LABKIT_LOCAL_DEVICES: 'one' gives each process one GPU, but this is local process "
                         f"{rank} and {gpus} GPUs are visible; start at most {gpus} processes per host, or "
                         "use 'all' with one process per host")
    return [rank]

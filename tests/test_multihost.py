"""labkit.multihost: joining a multi-process job. JAX's own cluster detection decides; labkit only chooses the
GPUs of each process. Stand-ins are the launchers' documented environments (sources at each test)."""
import jax
import pytest

# Multi-host start-up: JAX's own cluster detection decides; labkit only chooses the GPUs of each process.
# SLURM variables as srun / salloc set them (Slurm's srun(1) and salloc(1) man pages, "OUTPUT ENVIRONMENT
# VARIABLES"); JAX reads SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID
# (jax/_src/clusters/slurm_cluster.py).

_CLUSTER_VARS = ("LABKIT_COORDINATOR", "LABKIT_NUM_PROCESSES", "LABKIT_PROCESS_ID", "LABKIT_LOCAL_DEVICES",
                 "JAX_COORDINATOR_ADDRESS", "JAX_LOCAL_DEVICE_IDS", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID",
                 "KUBERNETES_SERVICE_HOST", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                 "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "CUDA_VISIBLE_DEVICES")


def _srun_env(ntasks, procid, tasks_per_node, nodes=1, job_id="4242"):
    local = procid % tasks_per_node
    return {"SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": "node[001-002]" if nodes > 1 else "node001",
            "SLURM_STEP_NODELIST": "node[001-002]" if nodes > 1 else "node001", "SLURM_NTASKS": str(ntasks),
            "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(local),
            "SLURM_NODEID": str(procid // tasks_per_node), "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_STEP_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})" if nodes > 1 else str(tasks_per_node),
            "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})" if nodes > 1 else str(tasks_per_node)}


@pytest.fixture
def init_calls(monkeypatch):
    """Record what labkit asks of jax.distributed.initialize (a real call would wait for the peers)."""
    import os
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for key in [k for k in os.environ if k.startswith("SLURM_")] + list(_CLUSTER_VARS):
        monkeypatch.delenv(key, raising=False)
    return calls


def _set(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_no_cluster_joins_nothing(init_calls):
    from labkit.multihost import initialize_multihost
    assert initialize_multihost() == 1 and init_calls == []


def test_jupyter_inside_salloc_joins_nothing(init_calls, monkeypatch):
    """`salloc -N2 -n16` then `jupyter lab`: the job variables exist, no step ones (no srun): no cluster, no
    error. Then the same Jupyter run as salloc's interactive step (`srun --pty`, one task of the allocation)."""
    from labkit.multihost import initialize_multihost
    _set(monkeypatch, {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[001-002]", "SLURM_NODELIST":
                       "node[001-002]", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "16",
                       "SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_SUBMIT_DIR": "/home/u"})
    assert initialize_multihost() == 1 and init_calls == []
    _set(monkeypatch, {"SLURM_STEP_NODELIST": "node001", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_STEP_TASKS_PER_NODE": "1"})
    assert initialize_multihost() == 1 and init_calls == []


@pytest.mark.parametrize("tasks_per_node,gpus,mode,expected", [
    (1, "0,1,2,3,4,5,6,7", None, list(range(8))),        # one process per host: every GPU (auto)
    (8, "0,1,2,3,4,5,6,7", None, [3]),                   # one process per GPU: its local rank (auto)
    (8, "3", None, [0]),                                 # --gpus-per-task=1: its only visible GPU
    (1, "0,1,2,3,4,5,6,7", "one", [0]),                  # told: one per GPU (local rank 0)
    (8, "0,1,2,3,4,5,6,7", "all", list(range(8))),       # told: all (the user's own placement)
    (1, "", None, None),                                 # no GPUs (a CPU cluster): JAX's own choice
])
def test_slurm_gpus_per_process(init_calls, monkeypatch, tasks_per_node, gpus, mode, expected):
    from labkit.multihost import initialize_multihost
    procid = 3 if tasks_per_node == 8 else 1
    _set(monkeypatch, _srun_env(2 * tasks_per_node, procid, tasks_per_node, nodes=2))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus)
    initialize_multihost(local_devices=mode)
    assert init_calls == [{"num_processes": 2 * tasks_per_node, "local_device_ids": expected}]


def test_one_process_per_gpu_refuses_more_processes_than_gpus(init_calls, monkeypatch):
    from labkit.multihost import initialize_multihost
    _set(monkeypatch, _srun_env(16, 9, 8, nodes=2) | {"CUDA_VISIBLE_DEVICES": "0,1,2,3"})  # local rank 1
    initialize_multihost()
    assert init_calls == [{"num_processes": 16, "local_device_ids": [1]}]
    _set(monkeypatch, _srun_env(16, 13, 8, nodes=2))  # local rank 5 of 4 visible GPUs
    with pytest.raises(ValueError, match="local process 5 and 4 GPUs are visible"):
        initialize_multihost()
    monkeypatch.setenv("LABKIT_LOCAL_DEVICES", "every")
    with pytest.raises(ValueError, match=r"LABKIT_LOCAL_DEVICES: 'every' .* allowed values: \['auto', 'all', 'one'\]"):
        initialize_multihost()


def test_open_mpi_one_process_per_host(init_calls, monkeypatch):
    """`mpirun -np 2 --map-by ppr:1:node` (Open MPI 4, mpirun(1): OMPI_COMM_WORLD_* and the ORTE URI)."""
    from labkit.multihost import initialize_multihost
    _set(monkeypatch, {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911", "OMPI_COMM_WORLD_SIZE": "2",
                       "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                       "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    initialize_multihost()
    assert init_calls == [{"num_processes": 2, "local_device_ids": [0, 1, 2, 3]}]


def test_tpu_vm_slices(init_calls, monkeypatch):
    """A one-host TPU VM (a v5e-8, a Colab TPU) joins nothing; a GKE multi-host slice (GKE sets TPU_WORKER_ID
    and TPU_WORKER_HOSTNAMES) and a GCE TPU VM slice (found through the metadata server, no variable: the
    stand-in answers as the metadata server would) join, and JAX keeps every chip (no local_device_ids)."""
    from jax._src.clusters import cloud_tpu_cluster
    from labkit.multihost import initialize_multihost
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)  # jax's cloud_tpu_init on a TPU VM
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")  # GKE: no GCE metadata
    monkeypatch.setattr(cloud_tpu_cluster, "get_tpu_env_value", lambda key: None)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    assert initialize_multihost() == 1 and init_calls == []
    _set(monkeypatch, {"TPU_WORKER_HOSTNAMES": "job-0-0.svc,job-0-1.svc,job-0-2.svc,job-0-3.svc",
                       "TPU_WORKER_ID": "2", "KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    initialize_multihost()
    assert init_calls == [{"num_processes": 4, "local_device_ids": None}]
    init_calls.clear()
    for key in ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "KUBERNETES_SERVICE_HOST", "TPU_SKIP_MDS_QUERY"):
        monkeypatch.delenv(key)
    metadata = {"agent-worker-number": "1", "worker-network-endpoints": "10.0.0.2,10.0.0.3"}
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", lambda key: (metadata[key], 200))
    initialize_multihost()
    assert init_calls == [{"num_processes": 2, "local_device_ids": None}]
    init_calls.clear()
    metadata["worker-network-endpoints"] = "10.0.0.2"  # a one-host slice on GCE
    assert initialize_multihost() == 1 and init_calls == []


def test_manual_start_keeps_every_gpu(init_calls, monkeypatch):
    from labkit.multihost import initialize_multihost
    _set(monkeypatch, {"LABKIT_COORDINATOR": "10.0.0.2:1234", "LABKIT_NUM_PROCESSES": "2",
                       "LABKIT_PROCESS_ID": "1", "CUDA_VISIBLE_DEVICES": "0,1"})
    initialize_multihost()
    manual = {"coordinator_address": "10.0.0.2:1234", "num_processes": 2, "process_id": 1}
    assert init_calls == [manual | {"local_device_ids": [0, 1]}]
    with pytest.raises(ValueError, match="'one' .* needs a launcher .* JAX_LOCAL_DEVICE_IDS"):
        initialize_multihost(local_devices="one")
    monkeypatch.setenv("JAX_LOCAL_DEVICE_IDS", "1")  # the user's own choice, which JAX reads: left to it
    initialize_multihost(local_devices="one")
    assert init_calls[1:] == [manual | {"local_device_ids": None}]


def test_a_notebook_pod_on_kubernetes_joins_nothing_quietly(init_calls, monkeypatch):
    """Binder / JupyterHub pods have KUBERNETES_SERVICE_HOST like every pod; without the `kubernetes` package
    JAX's K8s detection warns and declines. A one-process notebook is no job: no join, no warning."""
    import warnings
    from labkit.multihost import initialize_multihost
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setitem(__import__("sys").modules, "kubernetes", None)  # not installed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert initialize_multihost() == 1
    assert init_calls == []

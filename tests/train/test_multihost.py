"""Multi-host on JAX's own runtime: 2 processes x 4 CPU devices give the losses of 1 process x 8 devices, and
they join the job under SLURM, GKE and GCE TPU VM environments through JAX's own cluster detection."""
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from labkit.config import Config
from labkit.telemetry import read_events
from labkit.train.loop import train_and_evaluate

CONFIG = Config(model="resnet_tiny", dataset="synthetic", num_classes=10, image_size=16, train_images=640,
                global_batch=64, epochs=1, warmup_epochs=0.2, target_accuracy=0.0, bn_stats_every_steps=4,
                collective_every_steps=0, shape="2x4", bn_group=4, allreduce="torus2d")

_WORKER = """
import json, sys
from labkit.config import Config
from labkit.train.loop import train_and_evaluate
cfg = Config.from_dict(json.loads(sys.argv[1]))
train_and_evaluate(cfg, sys.argv[2], log=None)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir, name="telemetry.jsonl"):
    events, _ = read_events(run_dir / name)
    return [e["loss"] for e in events if e["kind"] == "step"]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = train_and_evaluate(CONFIG, tmp_path / "one", log=None)
    assert single["steps"] == 10
    port = _free_port()
    config = json.dumps(CONFIG.replace(cpu_devices=4).to_dict())
    procs = []
    for pid in range(2):
        env = dict(os.environ, LABKIT_COORDINATOR=f"127.0.0.1:{port}", LABKIT_NUM_PROCESSES="2",
                   LABKIT_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, config, str(tmp_path / "two")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    one, two_host0, two_host1 = (_losses(tmp_path / "one"), _losses(tmp_path / "two"),
                                 _losses(tmp_path / "two", "telemetry.host1.jsonl"))
    assert len(one) == len(two_host0) == len(two_host1) == 10
    assert two_host0 == pytest.approx(one, rel=2e-5) and two_host1 == pytest.approx(two_host0, rel=1e-6)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["images_per_s_per_device"] == pytest.approx(
        summary["images_per_s"] / 8)


# ---------------------------------------------------------------------------------------------------------
# Joining a job the way JAX intends: two local processes under the environment each launcher really sets,
# found by JAX's own cluster detection (jax/_src/clusters) through labkit.multihost.initialize_multihost().
# Each worker then builds the 2x4 torus over both processes and sums over it.

_JOIN = """
import json, os, sys
import jax
import numpy as np
from jax._src import xla_bridge  # jax_cuda_visible_devices: the GPUs jax.distributed gave this process
from jax.sharding import PartitionSpec as P
if os.environ.get("TEST_UNMARK_TPU_VM"):
    # jax's import found no TPU chips on this machine and marked it "not a GCE TPU VM" (TPU_SKIP_MDS_QUERY=1);
    # a real TPU VM has chips and no such mark. Everything else comes from the metadata server stand-in.
    os.environ.pop("TPU_SKIP_MDS_QUERY", None)
from labkit import mesh
mesh.simulate_devices(4)
from labkit import multihost
n = multihost.initialize_multihost()
topo = mesh.Topology.build(shape="2x4", bn_group=4)
rows = [[d.process_index for d in row] for row in topo.mesh.devices.reshape(2, 4)]
mine = topo.shard_batch(np.full((4, 1), jax.process_index() + 1, np.float32))
total = jax.jit(jax.shard_map(lambda b: jax.lax.psum(b, topo.replica_axes), mesh=topo.mesh,
                              in_specs=P(topo.replica_axes), out_specs=P()))(mine)
print("RESULT " + json.dumps({"processes": n, "index": jax.process_index(), "rows": rows,
                              "sum": float(np.asarray(total.addressable_data(0)).ravel()[0]),
                              "gpus": xla_bridge.CUDA_VISIBLE_DEVICES.value}), flush=True)
jax.distributed.shutdown()
"""


def _clean_env() -> dict:
    drop = ("SLURM_", "OMPI_", "TPU_", "LABKIT_COORDINATOR", "LABKIT_NUM_PROCESSES", "LABKIT_PROCESS_ID",
            "LABKIT_LOCAL_DEVICES", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE_IDS", "KUBERNETES_", "CUDA_VISIBLE")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop) and "_proxy" not in k.lower()}


def _join(envs: list[dict]) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", _JOIN], env=_clean_env() | env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for env in envs]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    return [json.loads(next(line[7:] for line in o.splitlines() if line.startswith("RESULT "))) for o in outputs]


def _slurm_port_job_id() -> str:
    """A SLURM_JOB_ID whose coordinator port (JAX: job id % 4096 + 61440) is free here."""
    for port in range(61440 + os.getpid() % 4000, 65536):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return str(4096 * 97 + port - 61440)
    raise RuntimeError("no free port in 61440-65535")


def _srun(job_id, ntasks, procid, tasks_per_node, nodelist) -> dict:
    """What srun sets in each task (Slurm srun(1), OUTPUT ENVIRONMENT VARIABLES), for `srun -N{nodes}
    --ntasks-per-node={tasks_per_node}`; the "nodes" are all this machine here."""
    nodes = ntasks // tasks_per_node
    per_node = f"{tasks_per_node}(x{nodes})" if nodes > 1 else str(tasks_per_node)
    return {"SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_JOB_NODELIST": nodelist,
            "SLURM_NODELIST": nodelist, "SLURM_STEP_NODELIST": nodelist, "SLURM_NTASKS": str(ntasks),
            "SLURM_NPROCS": str(ntasks), "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_NNODES": str(nodes), "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid % tasks_per_node),
            "SLURM_NODEID": str(procid // tasks_per_node), "SLURM_STEP_TASKS_PER_NODE": per_node,
            "SLURM_TASKS_PER_NODE": per_node, "SLURM_STEP_ID": "0"}


def _check_joined(results, gpus):
    assert [r["index"] for r in results] == [0, 1]
    for r in results:
        assert r["processes"] == 2 and r["rows"] == [[0, 0, 0, 0], [1, 1, 1, 1]]  # each host one torus row
        assert r["sum"] == 4 * 1 + 4 * 2  # every replica of both processes took part
    assert [r["gpus"] for r in results] == gpus


def test_slurm_one_process_per_host_keeps_every_gpu():
    """`srun -N2 --ntasks-per-node=1 --gpus-per-node=4` (SLURM sets CUDA_VISIBLE_DEVICES=0,1,2,3): JAX alone
    would give each process GPU 0 only (SLURM_LOCALID); labkit passes all four."""
    job = _slurm_port_job_id()
    envs = [_srun(job, 2, i, 1, "localhost,localhost") | {"CUDA_VISIBLE_DEVICES": "0,1,2,3"} for i in range(2)]
    _check_joined(_join(envs), ["0,1,2,3", "0,1,2,3"])


def test_slurm_one_process_per_gpu():
    """`srun -N1 --ntasks-per-node=2 --gpus-per-node=2`: one process per GPU, each its local rank's."""
    job = _slurm_port_job_id()
    envs = [_srun(job, 2, i, 2, "localhost") | {"CUDA_VISIBLE_DEVICES": "0,1"} for i in range(2)]
    _check_joined(_join(envs), ["0", "1"])


class _MetadataServer(http.server.ThreadingHTTPServer):
    """The GCE metadata server's instance attributes (GET /computeMetadata/v1/instance/attributes/KEY with
    the header Metadata-Flavor: Google; 404 for a missing key), which JAX reads at GCE_METADATA_IP."""

    def __init__(self, attributes: dict):
        self.attributes = attributes
        super().__init__(("127.0.0.1", 0), _MetadataHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        prefix = "/computeMetadata/v1/instance/attributes/"
        key = self.path[len(prefix):] if self.path.startswith(prefix) else None
        ok = self.headers.get("Metadata-Flavor") == "Google" and key in self.server.attributes
        body = (self.server.attributes[key] if ok else "not found").encode()
        self.send_response(200 if ok else 404)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


# tpu-env as a v5e slice's metadata holds it (key: 'value' lines; JAX's cloud_tpu_cluster.py parses
# "MEGASCALE_NUM_SLICES: '2'"-style lines): one slice, so no MEGASCALE_* keys.
_TPU_ENV = "ACCELERATOR_TYPE: 'v5litepod-16'\nTYPE: 'V5LITE_POD'\nTOPOLOGY: '4x4'\n"


def test_gke_tpu_slice_joins():
    """A GKE multi-host TPU slice: GKE sets TPU_WORKER_ID and TPU_WORKER_HOSTNAMES in each pod (and
    KUBERNETES_SERVICE_HOST in every pod); JAX's coordinator port (8482) moved by its JAX_COORDINATOR_PORT."""
    server = _MetadataServer({"tpu-env": _TPU_ENV})
    try:
        port = str(_free_port())
        envs = [{"TPU_WORKER_HOSTNAMES": "localhost,localhost", "TPU_WORKER_ID": str(i), "JAX_PLATFORMS": "cpu",
                 "KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443",
                 "JAX_FORCE_TPU_INIT": "1", "GCE_METADATA_IP": server.address, "JAX_COORDINATOR_PORT": port}
                for i in range(2)]
        _check_joined(_join(envs), ["all", "all"])
    finally:
        server.shutdown()


def test_gce_tpu_vm_slice_joins_with_no_environment_variable():
    """A Cloud TPU VM slice made with `gcloud compute tpus tpu-vm create`: no variable says it is one of
    several hosts; JAX asks each VM's metadata server (agent-worker-number, worker-network-endpoints)."""
    servers = [_MetadataServer({"agent-worker-number": str(i), "worker-network-endpoints": "127.0.0.1,127.0.0.1",
                                "tpu-env": _TPU_ENV}) for i in range(2)]
    try:
        port = str(_free_port())
        envs = [{"GCE_METADATA_IP": s.address, "JAX_FORCE_TPU_INIT": "1", "JAX_PLATFORMS": "cpu",
                 "TEST_UNMARK_TPU_VM": "1", "JAX_COORDINATOR_PORT": port} for s in servers]
        _check_joined(_join(envs), ["all", "all"])
    finally:
        for s in servers:
            s.shutdown()

"""lab: the notebooks' front door: where am I running, set the devices up, and the lab's measurements.

Owns ``setup`` (Colab TPU / Cloud TPU VM / GPU / CPU with simulated devices, defaults that adapt to the
backend) and ``show_live``; the lessons' measurements live in ``lab.bn`` (01), ``lab.inputs`` (02) and
``lab.collectives`` (03, 05) and are re-exported here, so a notebook calls ``lab.<name>``. Each returns plain
numbers (some also write telemetry).
Must not: render (the dashboards do), or hold logic the library modules own (it composes them).
"""
from __future__ import annotations

import dataclasses
import os

from labkit.lab.bn import bn_collectives, bn_exactness, bn_group_sweep
from labkit.lab.collectives import (allreduce_collectives, collective_reference, collective_steps, pair_ratios,
                                    pod_projection, resnet50_bn_layers, torus_phases)
from labkit.lab.inputs import check_input_chain, feed_demo, input_ladder, input_reference, input_switches

__all__ = ["Env", "setup", "bn_exactness", "bn_group_sweep", "bn_collectives", "feed_demo", "input_ladder",
           "input_reference", "input_switches", "check_input_chain",
           "torus_phases", "collective_steps", "pair_ratios", "collective_reference", "allreduce_collectives",
           "resnet50_bn_layers", "pod_projection", "show_live"]


@dataclasses.dataclass(frozen=True)
class Env:
    """Where this kernel runs and where each kind of work goes (``plan``; see ``labkit.mesh.DevicePlan``).

    Put ``compute_label`` next to numbers from single-device work (a one-replica step, the input pipeline
    feeding a device, profiles) and ``mesh_label`` next to numbers from the mesh lessons (grouped BN,
    all-reduce algorithms, multi-replica training). ``simulated``: the mesh lessons run on simulated CPU
    devices, so their timings are simulation.
    """
    backend: str          # default backend: 'tpu' | 'gpu' | 'cpu'
    devices: int          # devices of the default backend
    device_kind: str
    processes: int
    in_colab: bool
    simulated: bool       # the mesh devices are simulated CPU devices: their timings are simulation
    plan: str = "cpu"     # 'cpu' | 'one-accelerator' | 'accelerators'
    compute_devices: tuple = ()
    mesh_devices: tuple = ()
    compute_label: str = ""
    mesh_label: str = ""
    line: str = ""        # the one line setup() printed

    def __str__(self) -> str:
        where = "Colab" if self.in_colab else "this machine"
        return (f"{where}: {self.devices} {self.backend} devices ({self.device_kind}), {self.processes} "
                f"process(es); single-device work: {self.compute_label}; mesh lessons: {self.mesh_label}")


def setup(cpu_devices: int | None = None) -> Env:
    """Detect the backend, decide the device plan, print it in one line, and return it as an ``Env``.

    CPU only: everything on ``cpu_devices`` (default 8, env ``LABKIT_CPU_DEVICES``) simulated devices. One
    accelerator: single-device work on it, mesh lessons on that many simulated CPU devices beside it. Two or
    more: everything on them. ``LABKIT_COMPUTE_DEVICES=1`` rehearses the one-accelerator plan on any machine.
    Call it first in a notebook, before any JAX computation. Safe to call again (a re-run cell).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from labkit.mesh import device_plan, simulate_devices
    from labkit.multihost import initialize_multihost
    from labkit.train.overlap import enable_latency_hiding
    simulate_devices(cpu_devices or int(os.environ.get("LABKIT_CPU_DEVICES", 8)))
    enable_latency_hiding()  # XLA reads its flags when the GPU client starts: before any backend use
    initialize_multihost()
    import jax
    try:
        import google.colab  # noqa: F401
        in_colab = True
    except ImportError:
        in_colab = False
    plan = device_plan()
    line = ("Colab " if in_colab else "") + plan.line()
    print(line)
    return Env(backend=jax.default_backend(), devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
               processes=jax.process_count(), in_colab=in_colab, simulated=plan.mesh_simulated, plan=plan.case,
               compute_devices=plan.compute, mesh_devices=plan.mesh, compute_label=plan.compute_label,
               mesh_label=plan.mesh_label, line=line)


def show_live(run, *, label: str = ""):
    """Show a training run live in this notebook's front end: labkit's Panel dashboard in JupyterLab / Jupyter /
    VS Code, a self-updating figure in Colab (``labkit.live``). ``summary = await live.follow()`` then waits for
    the run without blocking the kernel's event loop (so the view stays live under "Run all") and replaces the
    live view by the run's static figure, which is what a saved notebook stores."""
    from labkit import live
    return live.show(run, label=label)

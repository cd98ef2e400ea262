"""labkit.train.checkpoint: Orbax round trip of a sharded train state; keep-last-k; the workdir config guard."""
import jax
import numpy as np
import optax
import pytest

from labkit.config import Config, ConfigError
from labkit.mesh import Topology
from labkit.models import create_model
from labkit.train.checkpoint import Checkpointer, check_workdir_config
from labkit.train.step import create_train_state


def test_round_trip_and_keep_last(tmp_path):
    topo = Topology.build(bn_group=2)
    model = create_model("resnet_tiny", num_classes=10, bn_axis_name=topo.bn_axes)
    state = jax.device_put(create_train_state(model, optax.sgd(0.1, momentum=0.9), (16, 16, 3), rng=3),
                           topo.replicated)
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        bumped = state.replace(step=step, params=jax.tree_util.tree_map(lambda p: p + step, state.params))
        ckpt.save(step, bumped, {"step": step, "images_seen": 100 * step})
    ckpt.wait()
    assert ckpt.latest_step() == 3
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 3]
    fresh = jax.device_put(create_train_state(model, optax.sgd(0.1, momentum=0.9), (16, 16, 3), rng=9),
                           topo.replicated)
    restored, meta = ckpt.restore(fresh)
    ckpt.close()
    assert meta == {"step": 3, "images_seen": 300} and int(restored.step) == 3
    for a, b in zip(jax.tree_util.tree_leaves(restored.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b) + 3)
        assert a.sharding == topo.replicated


def test_workdir_config_guard(tmp_path):
    cfg = Config(bn_group=2)
    check_workdir_config(tmp_path, cfg)
    check_workdir_config(tmp_path, cfg.replace(log_every_steps=5, target_accuracy=0.5))  # observational: fine
    with pytest.raises(ConfigError, match=r"different config \(bn_group: 2 -> 4\).*force"):
        check_workdir_config(tmp_path, cfg.replace(bn_group=4))
    check_workdir_config(tmp_path, cfg.replace(bn_group=4), force=True)


def test_gs_workdir_without_google_cloud_storage_names_the_package(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_google_cloud(name, *args, **kwargs):  # as in an environment without google-cloud-storage
        if name.startswith("google.cloud"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_google_cloud)
    with pytest.raises(RuntimeError, match=r"gs://b/run.*google-cloud-storage.*pip install"):
        Checkpointer("gs://b/run")


def test_google_cloud_storage_is_a_declared_dependency():
    # Orbax imports it for gs:// checkpoints; a fresh install must have it (the gs:// e2e test found it missing).
    import re
    import tomllib
    from pathlib import Path
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[;\s]", r, maxsplit=1)[0] for r in project["dependencies"]}
    assert "google-cloud-storage" in names


class _FakeHosts:
    """Two processes' view of the few collectives ``check_workdir_config`` uses, run one process at a time in
    this one process: process 0's broadcast token is remembered for process 1; ``blind`` says which processes'
    file checks the gather reports as failed (besides the caller's own)."""

    def __init__(self, monkeypatch, blind=()):
        from labkit.train import checkpoint
        self.token, self.blind, self.me = None, set(blind), 0
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda: self.me)
        monkeypatch.setattr(checkpoint, "_SHARED_WAIT_S", 0.0)
        monkeypatch.setattr(checkpoint, "_barrier", lambda name: None)
        monkeypatch.setattr(checkpoint, "_broadcast_token", self._broadcast)
        monkeypatch.setattr(checkpoint, "_gather_flags",
                            lambda flag: [flag if i == self.me else i not in self.blind for i in range(2)])

    def _broadcast(self, token):
        if self.me == 0:
            self.token = token
        return self.token

    def run(self, process, workdir, config):
        self.me = process
        check_workdir_config(workdir, config)


def test_multi_process_local_workdir_that_hosts_do_not_share_is_refused_on_every_process(tmp_path, monkeypatch):
    """Each host has its own disk: process 0 writes config.json into ITS /x, process 1 finds nothing in its own.
    Both must raise the same clear error (process 1 exiting alone would leave process 0 hanging in a collective)."""
    config = Config(shape="2x4", bn_group=2)
    host0_disk, host1_disk = tmp_path / "host0" / "run", tmp_path / "host1" / "run"
    hosts = _FakeHosts(monkeypatch, blind={1})
    with pytest.raises(ConfigError, match=r"workdir '.*host0/run': a local path, and process\(es\) \[1\] of 2 "
                                          r"cannot see the files process 0 writes there .* allowed: a gs:// URL"):
        hosts.run(0, str(host0_disk), config)
    assert (host0_disk / "config.json").exists()
    hosts.blind = set()
    with pytest.raises(ConfigError, match=r"process\(es\) \[1\] of 2 cannot see .* shared by all hosts"):
        hosts.run(1, str(host1_disk), config)  # process 1's own check fails the same way


def test_multi_process_local_workdir_on_a_shared_filesystem_is_accepted(tmp_path, monkeypatch):
    config = Config(shape="2x4", bn_group=2)
    hosts = _FakeHosts(monkeypatch)
    shared = str(tmp_path / "nfs" / "run")
    hosts.run(0, shared, config)
    hosts.run(1, shared, config)  # sees process 0's token and config.json: no error
    with pytest.raises(ConfigError, match="process 1's config differs from process 0's"):
        hosts.run(1, shared, config.replace(bn_group=4))

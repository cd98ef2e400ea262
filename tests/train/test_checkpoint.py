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

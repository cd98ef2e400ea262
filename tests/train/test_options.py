"""Every option ``labkit config keys`` offers trains: each all-reduce algorithm, the BN groups a 2x4 torus allows,
steps_per_loop > 1, bfloat16 and LARS, with the in-training all-reduce timing and BN statistics capture on.

Not the full Cartesian product (7 x 4 x 2 x 2 x 2 runs): every algorithm trains once, and the other factors are
spread over those rows so each value of each factor appears, link-level algorithms included.
The ``ring`` row is the combination the issue measured failing (``bn_group=4, dtype=bfloat16, optimizer=lars``).
Six rows go through ``train_and_evaluate`` on a tiny model and synthetic data (5 steps); the last one goes through
the real ``labkit train`` command (``labkit.cli.main``) with the ``cpu8-digits`` preset and ``--set`` overrides,
as a user would type it. (Cost: every run compiles its own step, capture-step and timer programs; steps_per_loop
> 1 adds a K-step program, so two rows carry it.)
What each run must show, checked against values computed here, not by the code under test: every step finite,
the timed all-reduce moved the model's float32 gradient bytes with the configured algorithm, BN statistics came
from the configured groups, and steps_per_loop > 1 really ran K steps per device call.
"""
import json
import math

import jax
import numpy as np
import pytest

from labkit.config import ALLOWED, Config
from labkit.mesh import allowed_bn_groups
from labkit.models import count_params, create_model
from labkit.telemetry import read_events
from labkit.train.loop import train_and_evaluate

# (allreduce, bn_group, steps_per_loop, dtype, optimizer): each algorithm once; each other value at least twice.
ROWS = [
    ("xla", 1, 2, "float32", "sgd"),
    ("ring", 4, 1, "bfloat16", "lars"),                 # the failing combination
    ("torus2d", 8, 1, "float32", "lars"),
    ("torus2d_bidir", 2, 1, "bfloat16", "sgd"),
    ("hierarchical", 4, 1, "float32", "sgd"),
    ("torus2d_links", 1, 2, "float32", "sgd"),
    ("torus2d_bidir_links", 8, 1, "bfloat16", "lars"),  # through the labkit train command
]
# 5 steps of 16 images; host points at steps 0 and 4 (log, BN capture, all-reduce timing), so steps 1-3 run
# between them: with steps_per_loop=2, one 2-step device call and one single step before the capturing step 4.
BASE = Config(model="resnet_tiny", dataset="synthetic", num_classes=10, image_size=16, train_images=80,
              global_batch=16, epochs=1, warmup_epochs=0.5, target_accuracy=0.0, shape="2x4",
              log_every_steps=4, bn_stats_every_steps=4, collective_every_steps=4, checkpoint_every_steps=0)
# Replica r sits at (r // 4, r % 4) of the 2x4 torus; a BN group of g takes g neighbours of a row (g <= 4) or
# the whole torus (g = 8): what labkit.mesh documents, written out here.
GROUPS = {1: [[r] for r in range(8)], 2: [[0, 1], [2, 3], [4, 5], [6, 7]], 4: [[0, 1, 2, 3], [4, 5, 6, 7]],
          8: [list(range(8))]}


def test_the_rows_cover_every_offered_value():
    """The matrix below is only as good as its coverage: every algorithm, dtype, optimizer and BN group that the
    config offers for a 2x4 torus appears, and steps_per_loop both 1 and > 1."""
    columns = list(zip(*ROWS))
    assert sorted(columns[0]) == sorted(ALLOWED["allreduce"])
    assert set(columns[1]) == set(allowed_bn_groups((2, 4))) == set(GROUPS)
    assert set(columns[2]) == {1, 2}
    assert set(columns[3]) == set(ALLOWED["dtype"]) and set(columns[4]) == set(ALLOWED["optimizer"])
    link_level = [row for row in ROWS if row[0] in ("ring", "torus2d_links", "torus2d_bidir_links")]
    assert {row[2] for row in link_level} == {1, 2} and {row[3] for row in link_level} == set(ALLOWED["dtype"])
    assert ("ring", 4, 1, "bfloat16", "lars") in ROWS
    assert {row[1] for row in ROWS if row[0] in ("hierarchical", "torus2d", "torus2d_bidir")} >= {2, 4, 8}


def _check_run(config: Config, workdir, summary: dict, steps: int) -> None:
    assert summary["stopped"] in ("epochs", "max_steps") and summary["steps"] == steps
    events, skipped = read_events(workdir)
    assert skipped == 0
    step_events = [e for e in events if e["kind"] == "step"]
    assert step_events and all(math.isfinite(e["loss"]) for e in step_events)
    # The timed all-reduce: the configured algorithm on the model's float32 gradients (parameters stay float32).
    model = create_model(config.model, num_classes=config.num_classes or 10, width=config.width)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, config.image_size,
                                                                              config.image_size, 3)), train=False))
    timed = [e for e in events if e["kind"] == "collective"]
    assert timed and all(e["algorithm"] == config.allreduce and e["replicas"] == 8 for e in timed)
    assert all(e["bytes"] == 4 * count_params(params["params"]) and e["time_s"] > 0 for e in timed)
    # BN statistics from every BN layer, per replica, grouped as configured.
    layers = len([p for p, _ in jax.tree_util.tree_leaves_with_path(params["batch_stats"]) if "mean" in str(p[-1])])
    bn = [e for e in events if e["kind"] == "bn_stats"]
    captured = sorted({e["step"] for e in bn})
    assert captured and len(bn) == layers * len(captured)
    assert all(e["groups"] == GROUPS[config.bn_group] and len(e["group_mean"]) == 8 for e in bn)
    assert all(np.isfinite(e["group_var"]).all() for e in bn)
    for e in bn:  # one BN group shares its statistics: every member reports the group's mean
        for group in e["groups"]:
            assert len({round(e["group_mean"][r], 5) for r in group}) == 1, (config.allreduce, e["layer"])


def _check_windows(workdir, steps_per_loop: int, dtype: str) -> None:
    events, _ = read_events(workdir)
    windows = [e["steps"] for e in events if e["kind"] == "step"]
    assert windows == [1, 4]  # host points at steps 0 and 4 only: nothing copied back in between
    start = next(e for e in events if e["kind"] == "run" and e.get("phase") == "start")
    assert start["config"]["steps_per_loop"] == steps_per_loop and start["config"]["dtype"] == dtype


@pytest.mark.parametrize("allreduce, bn_group, steps_per_loop, dtype, optimizer", ROWS[:-1],
                         ids=[r[0] for r in ROWS[:-1]])
def test_every_option_trains(tmp_path, allreduce, bn_group, steps_per_loop, dtype, optimizer):
    config = BASE.replace(allreduce=allreduce, bn_group=bn_group, steps_per_loop=steps_per_loop, dtype=dtype,
                          optimizer=optimizer)
    summary = train_and_evaluate(config, tmp_path, log=None)
    _check_run(config, tmp_path, summary, 5)
    _check_windows(tmp_path, steps_per_loop, dtype)


@pytest.mark.slow
def test_labkit_train_command_trains_the_last_row(tmp_path, capsys):
    """The command the issue ran, ``labkit train --config cpu8-digits --set allreduce=...``, with the last row's
    options (a link-level algorithm, BN over the whole torus, bfloat16, LARS), a small model and BASE's cadences."""
    from labkit import cli
    allreduce, bn_group, steps_per_loop, dtype, optimizer = ROWS[-1]
    sets = [f"allreduce={allreduce}", f"bn_group={bn_group}", f"steps_per_loop={steps_per_loop}", f"dtype={dtype}",
            f"optimizer={optimizer}", "model=resnet_tiny", "image_size=16", "global_batch=16",
            "log_every_steps=4", "collective_every_steps=4", "bn_stats_every_steps=4"]
    argv = ["train", "--config", "cpu8-digits", "--workdir", str(tmp_path), "--max-steps", "5"]
    assert cli.main(argv + [a for s in sets for a in ("--set", s)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    config = Config.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert (config.allreduce, config.bn_group, config.dtype, config.optimizer) == ROWS[-1][:2] + ROWS[-1][3:]
    assert config.dataset == "digits"
    _check_run(config, tmp_path, summary, 5)
    _check_windows(tmp_path, steps_per_loop, dtype)
    assert "summary:" in capsys.readouterr().out

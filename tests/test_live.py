"""labkit.live: which view each front end gets, and the figure view updating in a real kernel during a run.

The kernel test runs notebook 04's own cells (parameters, install, setup, config, the live view and the awaited
``follow``) through nbclient, with a short run, and counts the ``update_display_data`` messages the kernel sends
while the run trains: that is what any front end (Colab's included) receives to redraw a display handle.
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import live

ROOT = Path(__file__).resolve().parent.parent


def test_front_end_override_and_its_error(monkeypatch):
    monkeypatch.setenv("LABKIT_LIVE", "figure")
    assert live.front_end() == "figure"
    monkeypatch.setenv("LABKIT_LIVE", "Panel")
    assert live.front_end() == "panel"
    monkeypatch.setenv("LABKIT_LIVE", "bokeh")
    with pytest.raises(ValueError, match=r"LABKIT_LIVE: 'bokeh' is not a live view; allowed: \['panel', 'figure'\]"):
        live.front_end()


def test_colab_gets_the_figure_view(tmp_path):
    # Colab's runtime ships the `google.colab` package (pip-freeze.*.txt: google-colab @ file:///colabtools/...),
    # beside google-cloud-storage's `google` namespace; labkit detects Colab by that package, as lab.setup does.
    (tmp_path / "google" / "colab").mkdir(parents=True)
    (tmp_path / "google" / "colab" / "__init__.py").write_text("")
    code = "from labkit import live; print(live.front_end())"
    env = {k: v for k, v in os.environ.items() if k != "LABKIT_LIVE"}
    here = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    assert here.stdout.strip() == "panel"  # this venv has Panel and is not Colab
    colab = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**env, "PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert colab.stdout.strip() == "figure"


def _cells_of_04() -> list[dict]:
    """04's cells up to the awaited run (the profile and snapshot cells are not this test's subject)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "notebooks" / "04_train.ipynb", as_version=4)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    end = next(i for i, c in enumerate(code) if "await live.follow()" in c.source)
    return nb, code[:end + 1]


_SHORT = {"model": "resnet_tiny", "image_size": 16, "global_batch": 64, "epochs": 3, "warmup_epochs": 0.1,
          "target_accuracy": 0, "collective_every_steps": 0, "bn_stats_every_steps": 0, "log_every_steps": 1}


@pytest.mark.slow
def test_figure_view_redraws_during_the_run_in_a_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb, cells = _cells_of_04()
    params = "\n".join(f"{k} = {v!r}" for k, v in {**_SHORT, "workdir": str(tmp_path / "run")}.items())
    nb["cells"] = cells + []
    nb["cells"].insert(1, nbformat.v4.new_code_cell(params))
    notebook = nb
    messages: list[dict] = []

    class Counting(nbclient.NotebookClient):
        def process_message(self, msg, cell, cell_index):
            if msg["msg_type"] in ("display_data", "update_display_data", "comm_msg"):
                messages.append(msg)
            return super().process_message(msg, cell, cell_index)

    env_before = os.environ.get("LABKIT_LIVE")
    os.environ["LABKIT_LIVE"] = "figure"  # the view Colab gets (the kernel inherits this environment)
    try:
        Counting(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.pop("LABKIT_LIVE") if env_before is None else os.environ.__setitem__("LABKIT_LIVE", env_before)
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    frames = [m["content"]["data"].get("image/png") for m in updates]
    assert len(updates) >= 4, f"{len(updates)} update_display_data messages"  # >= 3 redraws + the final figure
    assert all(frames) and len(set(frames)) >= 4, "the redraws did not change the picture"
    handle = {m["content"]["transient"]["display_id"] for m in updates}
    assert len(handle) == 1  # every update went to the one live display
    first = next(m for m in messages if m["msg_type"] == "display_data"
                 and m["content"].get("transient", {}).get("display_id") in handle)
    assert "image/png" in first["content"]["data"]
    # The stored notebook holds the final static figure where the live view was, and the run's outcome after it.
    live_cell = next(c for c in notebook.cells if "lab.show_live(" in c.source)
    pngs = [o for o in live_cell.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1 and base64.b64decode(pngs[0]["data"]["image/png"])[:4] == b"\x89PNG"
    assert pngs[0]["data"]["image/png"] == updates[-1]["content"]["data"]["image/png"]
    follow = notebook.cells[-1]
    assert "stopped: epochs after" in "".join(o.get("text", "") for o in follow.outputs)
    # The buttons' status line follows the run: ipywidgets sends each change (only a change) as a comm_msg.
    statuses = [m["content"]["data"]["state"]["value"] for m in messages if m["msg_type"] == "comm_msg"
                and "run: <b>" in str(m["content"].get("data", {}).get("state", {}).get("value", ""))]
    assert statuses and statuses[-1] == "run: <b>finished</b>", statuses  # was left at "running" before

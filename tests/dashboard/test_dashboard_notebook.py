"""The dashboard inside a Jupyter kernel: it updates while a training thread emits (no server involved)."""
import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

CELLS = [
    """
import asyncio, threading, time
import panel as pn
pn.extension()
from labkit import telemetry
from labkit.dashboard import MemorySource, overview
stream = telemetry.EventStream(host=0)
page = overview(MemorySource(stream), period_ms=100)
page
""",
    """
stop = threading.Event()
def train():  # a training loop on a background thread: it only emits
    stream.emit("run", phase="start", replicas=8, torus=[2, 4], bn_group=2, simulated=True)
    for i in range(100_000):
        if stop.is_set():
            return
        stream.emit("step", step=i, loss=1.0 / (1 + i), accuracy=0.5, lr=0.1, images_per_s=100.0)
        time.sleep(0.005)
threading.Thread(target=train, daemon=True).start()
seen = []
for _ in range(30):  # the cell awaits, as a notebook cell does while a run trains: the kernel's loop polls
    await asyncio.sleep(0.1)
    seen.append(len(page.views["training"].steps.source.data["step"]))
stop.set()
print("SEEN", seen)
""",
]


def test_overview_updates_in_a_kernel_while_a_training_thread_emits(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src.strip()) for src in CELLS]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    display = nb.cells[0].outputs
    assert any("application/vnd.holoviews_exec.v0+json" in o.get("data", {}) for o in display), display
    text = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    seen = [int(v) for v in text.split("SEEN [", 1)[1].split("]", 1)[0].split(",")]
    # The plot's source grew step by step during the cell (not only once at the end).
    assert seen[-1] > 0 and len(set(seen)) >= 3, seen
    assert seen == sorted(seen)

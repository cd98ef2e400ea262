"""Colab's three runtime images (TPU, GPU, CPU), stood in for by venvs built from Colab's own package lists.

Source: ``tests/colab_images/pip-freeze.{tpu,gpu,cpu}.txt``, copied unchanged from googlecolab/backend-info
(SOURCE.md there). Each stand-in is a Python 3.13 venv (Colab's Python) holding the listed version of every
package that matters to labkit's install (jax, jaxlib, libtpu or the CUDA 12 plugin and Colab's NVIDIA
libraries, flax, optax, orbax, numpy, protobuf, TensorFlow and keras where listed, the kernel and widget
machinery, Panel/Bokeh where listed, tensorstore, grain, and the scientific stack), with the whole list as pip
constraints, so every other dependency is at its listed version too.
What cannot be faithful here: there is no TPU or GPU, so jax tries libtpu or the CUDA plugin, fails to find the
chip and runs on the CPU (libtpu says so on stderr); Colab's front end is absent (the live view's Colab path is
tested in tests/test_live.py).
Each test runs the committed install cell exactly as "Run all" does: papermill executes notebook 00 in a kernel
of the stand-in. It counts the restarts the cell asks for, checks that no later cell ran before a restart, then
runs 01 in a new kernel (as after the restart) and checks what was kept and what was upgraded.
Skipped where no Python 3.13 exists.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LISTS = Path(__file__).resolve().parent / "colab_images"
# What matters to labkit's install cell and to notebooks 00 and 01 (each taken only where the image lists it).
_MATTERS = ("jax jaxlib libtpu jax-cuda12-plugin jax-cuda12-pjrt flax optax orbax-checkpoint numpy protobuf "
            "ml-dtypes tensorflow keras ipykernel ipython ipywidgets widgetsnbextension jupyterlab-widgets tornado "
            "notebook jupyter-server jupyter-client jupyter-core pyzmq panel bokeh param holoviews tensorstore grain "
            "matplotlib scikit-learn scikit-image google-cloud-storage nbformat nbclient tqdm chex scipy "
            "pandas").split()


def _python313() -> str | None:
    for candidate in [shutil.which("python3.13"), *sorted(Path.home().glob(".pyenv/versions/3.13*/bin/python3.13"))]:
        if candidate and subprocess.run([str(candidate), "-c", "import sys; assert sys.version_info[:2] == (3, 13)"],
                                        capture_output=True).returncode == 0:
            return str(candidate)
    return None


PY313 = _python313()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(PY313 is None, reason="no Python 3.13 here (Colab's Python) to build a stand-in"),
              pytest.mark.skipif(shutil.which("uv", path=str(Path(sys.executable).parent)) is None
                                 and shutil.which("uv") is None, reason="uv (a test requirement) is not installed")]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _listed(image: str) -> dict[str, str]:
    pins = {}
    for line in (LISTS / f"pip-freeze.{image}.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$", line.strip())
        if m:
            pins[_canon(m.group(1))] = m.group(2)
    return pins


def _build(image: str, where: Path) -> Path:
    """The stand-in venv of ``image``; returns its python."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    venv = where / f"colab-{image}"
    subprocess.run([uv, "venv", "-q", "--seed", "--python", PY313, str(venv)], check=True)
    pins = _listed(image)
    constraints = where / f"{image}-constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    wanted = [n for n in _MATTERS if n in pins] + sorted(n for n in pins if re.match(r"^nvidia-.+-cu12$", n))
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-c", str(constraints),
                    *[f"{n}=={pins[n]}" for n in wanted]], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "ipykernel", "install", "--prefix", str(venv), "--name", f"colab-{image}"],
                   check=True, capture_output=True)
    return python


def _versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
    return {_canon(k): v for k, v in json.loads(out).items()}


def _source(where: Path) -> Path:
    """labkit's source as the cell's pip sees it: a copy of this checkout's package files."""
    src = where / "labkit-src"
    shutil.copytree(ROOT / "labkit", src / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    return src


def _papermill(notebook: Path, out: Path, image: str, venv: Path, env: dict) -> subprocess.CompletedProcess:
    env = {**env, "JUPYTER_PATH": str(venv / "share" / "jupyter")}
    return subprocess.run([sys.executable, "-m", "papermill", "-k", f"colab-{image}", "--cwd", str(out.parent),
                           "--no-progress-bar", str(notebook), str(out)], env=env, capture_output=True, text=True,
                          timeout=900)


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _text(path: Path) -> str:
    return "".join("".join(o.get("text", "")) for c in _code_cells(path) for o in c.get("outputs", []))


def _install_index(cells: list[dict]) -> int:
    return next(i for i, c in enumerate(cells) if "labkit-install" in c.get("metadata", {}).get("tags", []))


def _with_first_cell(src: Path, dst: Path, code: str) -> Path:
    nb = json.loads(src.read_text())
    first = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
    nb["cells"].insert(first, {"cell_type": "code", "id": "learner-first", "metadata": {}, "execution_count": None,
                               "outputs": [], "source": [code]})
    dst.write_text(json.dumps(nb))
    return dst


# image -> (a cell the learner ran before the install cell, or None; restarts expected)
CASES = {"tpu": (None, 0), "gpu": (None, 0),
         # a learner who imported jax before running the install cell: jax changes under it, one restart
         "cpu": ("import jax  # the learner ran a jax cell first", 1)}


@pytest.mark.parametrize("image", list(CASES))
def test_install_cell_then_notebooks_00_and_01_on_colabs_image(image, tmp_path):
    python = _build(image, tmp_path)
    venv = python.parent.parent
    listed, before = _listed(image), _versions(python)
    assert before["jax"] == listed["jax"] == "0.7.2" and before["flax"] == listed["flax"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "LABKIT_"))}
    env.update(LABKIT_SOURCE=str(_source(tmp_path)), PIP_NO_COMPILE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    first_cell, expected_restarts = CASES[image]
    notebook = ROOT / "notebooks" / "00_setup.ipynb"
    if first_cell:
        notebook = _with_first_cell(notebook, tmp_path / "00_learner.ipynb", first_cell)

    # "Run all" on a fresh runtime: the install cell runs first; a restart request must stop everything after it.
    restarts, t0 = 0, time.perf_counter()
    out = tmp_path / "00-first.ipynb"
    done = _papermill(notebook, out, image, venv, env)
    install_s = time.perf_counter() - t0
    cells = _code_cells(out)
    k = _install_index(cells)
    install_text = "".join("".join(o.get("text", "")) for o in cells[k].get("outputs", []))
    if done.returncode:
        assert "RestartRuntime" in done.stderr + done.stdout, done.stderr[-3000:]
        restarts += 1
        assert all(c.get("execution_count") is None and not c.get("outputs") for c in cells[k + 1:]), \
            "a cell ran after the install cell asked for a restart"
        error = next(o for o in cells[k]["outputs"] if o["output_type"] == "error")
        assert error["ename"] == "RestartRuntime" and "Restart the runtime" in error["evalue"]
        assert "jax" in error["evalue"]  # it names what was imported at the old version
        # After the restart, Run all again: the install cell finds everything and does nothing.
        again = _papermill(notebook, tmp_path / "00-again.ipynb", image, venv, env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert not _code_cells(tmp_path / "00-again.ipynb")[k].get("outputs")
    else:
        assert "no restart needed" in install_text, install_text
    assert restarts == expected_restarts, (restarts, install_text)
    print(f"\n{image}: install cell and 00 in {install_s:.0f} s, {restarts} restart(s)\n{install_text}")

    # 00 ran to its end (after the restart where there was one), then 01 in a new kernel, on Python 3.13 with what
    # the cell installed (a second run of 00 in a new kernel would repeat the first: it was already one).
    finished = tmp_path / ("00-again.ipynb" if restarts else "00-first.ipynb")
    assert "device plan:" in _text(finished)
    ran = _papermill(ROOT / "notebooks" / "01_distributed_bn.ipynb", tmp_path / "01-after.ipynb", image, venv, env)
    assert ran.returncode == 0, f"01_distributed_bn: {ran.stderr[-3000:]}"
    assert "device plan:" in _text(tmp_path / "01-after.ipynb")
    assert "equal to single-device BN: True" in _text(tmp_path / "01-after.ipynb")

    after = _versions(python)
    # jax moved as one unit with its accelerator package, into labkit's range
    assert (0, 10, 2) <= tuple(int(p) for p in after["jax"].split(".")[:3]) < (0, 13)
    assert after["jaxlib"] == after["jax"] and after["flax"] != listed["flax"]
    if image == "tpu":
        assert after["libtpu"] != listed["libtpu"]
    if image == "gpu":
        assert after["jax-cuda12-plugin"] == after["jax-cuda12-pjrt"] == after["jaxlib"]
        kept_nvidia = {n: after.get(n) for n in before if n.startswith("nvidia-")}
        assert kept_nvidia and kept_nvidia == {n: listed[n] for n in kept_nvidia}  # torch's CUDA libraries kept
    # the runtime's own packages are untouched: its kernel, its widgets, numpy, protobuf, and its TensorFlow
    for kept in ("ipykernel", "ipython", "ipywidgets", "tornado", "numpy", "protobuf", "jupyter-server", "notebook"):
        assert after[kept] == listed[kept], kept
    if "tensorflow" in listed:
        assert after["tensorflow"] == listed["tensorflow"] and "tensorflow-cpu" not in after
    else:  # TPU image: no TensorFlow; a tf.data that imports beside its protobuf 7 was added
        assert "tensorflow-cpu" in after and after["protobuf"] == listed["protobuf"]
        tf = subprocess.run([str(python), "-c", "import tensorflow as tf; "
                             "print(sum(tf.data.Dataset.range(3).map(lambda x: x + 1).as_numpy_iterator()))"],
                            capture_output=True, text=True, env=env)
        assert tf.stdout.strip() == "6", tf.stderr[-2000:]
    version = subprocess.run([str(python), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version == "(3, 13)"

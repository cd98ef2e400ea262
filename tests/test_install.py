"""labkit.install: the Colab install step keeps the runtime's jax/TensorFlow; the stamped cell and badges.

The slow test builds a fresh venv holding stand-in jax, jaxlib, tensorflow, numpy, ... wheels (distinct
versions, built here: Colab's preinstalled set), runs the real install cell against this checkout, and checks
that every stand-in is still there afterwards while labkit's other requirements were installed from PyPI.
"""
import base64
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from labkit import install

ROOT = Path(__file__).resolve().parent.parent
REPO = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def test_labkit_package_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", "import sys, labkit, labkit.install; "
                          "print(sorted(m for m in ('jax', 'tensorflow', 'numpy', 'flax') if m in sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    source = (ROOT / "labkit" / "install.py").read_text()
    imported = set(re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", source, re.M))
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported - set(sys.stdlib_module_names)


def test_plan_keeps_the_runtime_stack_and_skips_tensorflow_cpu_when_tf_imports():
    installed = {"jax": "0.10.2", "jaxlib": "0.10.2", "libtpu": "0.0.42", "tensorflow": "2.19.0", "numpy": "2.0.2",
                 "jax-cuda12-plugin": "0.10.2", "nvidia-cudnn-cu12": "9.1", "bokeh": "3.7.0"}
    reqs, constraints, notes = install._plan(installed, tf_importable=True)
    names = [install._name(r) for r in reqs]
    assert not {"jax", "jaxlib", "numpy", "tensorflow-cpu"} & set(names)
    assert {"flax", "optax", "panel", "bokeh", "jupyter-bokeh"} <= set(names)
    assert sorted(constraints) == sorted(["jax-cuda12-plugin==0.10.2", "jax==0.10.2", "jaxlib==0.10.2", "libtpu==0.0.42",
                           "numpy==2.0.2", "nvidia-cudnn-cu12==9.1", "tensorflow==2.19.0"])
    assert "TensorFlow is importable: tensorflow-cpu not installed" in notes


def test_plan_installs_tensorflow_cpu_only_without_tensorflow_and_flags_an_old_jax():
    reqs, constraints, notes = install._plan({"jax": "0.7.2", "jaxlib": "0.7.2"}, tf_importable=False)
    assert "tensorflow-cpu" in [install._name(r) for r in reqs]
    assert constraints == ["jax==0.7.2", "jaxlib==0.7.2"]
    assert any(n.startswith("keeping the runtime's jax 0.7.2, outside labkit's tested range") for n in notes)


def test_cell_and_badges_come_from_the_one_repository_url():
    assert install.repository() == REPO.rstrip("/")
    owner_name = REPO.removeprefix("https://github.com/")
    assert f'os.environ.get("LABKIT_SOURCE", "git+{REPO}@main")' in install.CELL_SOURCE
    assert '"--no-deps", source]' in install.CELL_SOURCE and '"-m", "labkit.install"]' in install.CELL_SOURCE
    assert "tensorflow-cpu" not in install.CELL_SOURCE
    assert install.badge_markdown("00_setup.ipynb") == (
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/00_setup.ipynb)")
    fork = install.cell_source("https://github.com/me/labkit", branch="dev")
    assert '"git+https://github.com/me/labkit@dev"' in fork
    with pytest.raises(ValueError, match="need a GitHub URL .* got 'https://example.org/x'"):
        install.badge_markdown("a.ipynb", "https://example.org/x")


def _code(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


_OLD_CELL = ['import importlib.util, os, subprocess, sys\n', 'if importlib.util.find_spec("labkit") is None:\n',
             '    source = os.environ.get("LABKIT_SOURCE", "git+https://github.com/OWNER/labkit")\n',
             '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source, "tensorflow-cpu"], check=True)']


def _unstamped(nb):
    """The notebook as it was before stamping: no badge, the old install cell (which replaced Colab's jax)."""
    cells = [c for c in nb["cells"] if "labkit-colab-badge" not in c["metadata"].get("tags", [])]
    for c in cells:
        if "labkit-install" in c["metadata"].get("tags", []):
            c["metadata"]["tags"].remove("labkit-install")
            c["source"] = list(_OLD_CELL)
    return {**nb, "cells": cells}


def test_committed_notebooks_are_stamped_and_stamping_old_ones_on_copies(tmp_path):
    sources = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert sources
    for src in sources:
        committed = json.loads(src.read_text())  # carries the current stamp (else: run --stamp-notebooks)
        assert "".join(committed["cells"][0]["source"]) == install.badge_markdown(src.name), src.name
        stamped = [c for c in _code(committed) if "labkit-install" in c["metadata"].get("tags", [])]
        assert len(stamped) == 1 and "".join(stamped[0]["source"]) == install.CELL_SOURCE, src.name
        dst = tmp_path / src.name
        before = _unstamped(json.loads(src.read_text()))
        dst.write_text(json.dumps(before, indent=1))
        assert install.stamp_notebook(dst) is True
        nb = json.loads(dst.read_text())
        assert nb["cells"][0]["cell_type"] == "markdown"
        assert "".join(nb["cells"][0]["source"]) == install.badge_markdown(src.name)
        cells = [c for c in _code(nb) if "labkit-install" in c["metadata"].get("tags", [])]
        assert len(cells) == 1 and "".join(cells[0]["source"]) == install.CELL_SOURCE
        # every other cell is untouched, in order; a papermill parameters cell stays the first code cell
        rest = [c for c in nb["cells"][1:] if c is not cells[0]]
        old = [c for c in before["cells"] if not ('find_spec("labkit")' in "".join(c["source"]))]
        assert [c["source"] for c in rest] == [c["source"] for c in old]
        if any("parameters" in c["metadata"].get("tags", []) for c in before["cells"]):
            assert "parameters" in _code(nb)[0]["metadata"]["tags"]
        assert install.stamp_notebook(dst) is False  # idempotent
    bare = tmp_path / "bare.ipynb"
    bare.write_text(json.dumps({"cells": [{"cell_type": "markdown", "id": "t", "metadata": {}, "source": ["# t"]},
                                          {"cell_type": "code", "id": "c", "metadata": {}, "execution_count": None,
                                           "outputs": [], "source": ["x = 1"]}],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1))
    install.stamp_notebook(bare, "https://github.com/me/labkit")
    nb = json.loads(bare.read_text())
    assert [c["id"] for c in nb["cells"]] == ["labkit-colab-badge", "t", "labkit-install", "c"]
    assert "github/me/labkit/blob/main/notebooks/bare.ipynb" in "".join(nb["cells"][0]["source"])


def test_stamp_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- labkit:colab-badges -->\nold\n<!-- /labkit:colab-badges -->\nend\n")
    assert install.stamp_readme(readme, ["00_setup.ipynb", "04_train.ipynb"]) is True
    lines = readme.read_text().splitlines()
    assert lines[0] == "intro" and lines[-1] == "end" and "old" not in lines
    assert lines[2] == "- " + install.badge_markdown("00_setup.ipynb") + " `00_setup`"
    assert install.stamp_readme(readme, ["00_setup.ipynb", "04_train.ipynb"]) is False
    assert "<!-- labkit:colab-badges -->" in (ROOT / "README.md").read_text()  # the real README has the block


# ---------------------------------------------------------------------------------------------------------
# End to end: a fresh venv standing in for Colab's preinstalled stack.

# distribution, version, top-level module (versions differ from what labkit would pick on its own)
_STANDINS = [("jax", "0.10.2+colab", "jax"), ("jaxlib", "0.10.2+colab", "jaxlib"),
             ("tensorflow", "2.19.0+colab", "tensorflow"), ("numpy", "2.3.5+colab", "numpy"),
             ("scipy", "1.16.3+colab", "scipy"), ("pandas", "2.2.2+colab", "pandas"),
             ("scikit-learn", "1.6.1+colab", "sklearn"), ("scikit-image", "0.25.2+colab", "skimage"),
             ("ipykernel", "6.17.1+colab", "ipykernel"), ("ipython", "7.34.0+colab", "IPython"),
             ("tornado", "6.4.2+colab", "tornado")]


def _wheel(folder: Path, dist: str, version: str, module: str) -> Path:
    """A minimal pure-Python wheel named ``dist`` whose module only records its version."""
    stem = f"{dist.replace('-', '_')}-{version}"
    files = {f"{module}/__init__.py": f'__version__ = "{version}"\nSTANDIN = True\n',
             f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
             f"{stem}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: labkit-test\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{stem}.dist-info/RECORD"] = "\n".join(record + [f"{stem}.dist-info/RECORD,,"]) + "\n"
    path = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def _versions(python: Path) -> dict:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))")
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.slow
def test_install_cell_keeps_a_preinstalled_jax_and_tensorflow(tmp_path):
    venv = tmp_path / "colab"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    paths = [_wheel(wheels, *standin) for standin in _STANDINS]
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                    *map(str, paths)], check=True)
    before = _versions(python)
    assert {d: before[d] for d, _, _ in _STANDINS} == {d: v for d, v, _ in _STANDINS}
    # labkit's source: a copy of this checkout's package files (pip must not write build files into it)
    source = tmp_path / "labkit-src"
    shutil.copytree(ROOT / "labkit", source / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # PIP_NO_COMPILE: pip skips writing .pyc files for ~100 packages (CI time; the install logic is the same)
    env.update(LABKIT_SOURCE=str(source), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", PIP_NO_COMPILE="1")
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([str(python), "-c", install.CELL_SOURCE], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    seconds, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = _versions(python)
    # Colab's stand-ins are all still there, untouched; tensorflow-cpu was not added next to tensorflow
    assert {d: after[d] for d, _, _ in _STANDINS} == {d: v for d, v, _ in _STANDINS}
    assert "tensorflow-cpu" not in after
    # labkit and its other requirements (plus Panel's Colab renderer) came in
    assert {"labkit", "flax", "optax", "orbax-checkpoint", "panel", "bokeh", "papermill", "jupyter_bokeh"} <= \
        {n.replace("-", "_") if n == "jupyter-bokeh" else n for n in after}
    assert "no restart needed" in done.stdout, done.stdout
    assert "keeping the runtime's ipykernel 6.17.1+colab" in done.stdout
    print(f"install cell in a fresh venv: {seconds:.0f} s wall, {cpu:.0f} s CPU")  # shown with -s

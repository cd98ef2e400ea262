"""labkit.install: the plan for Colab's real package lists, restarts only for what the kernel imported, the
placeholder URL's message, the stamped cell and badges. The install cell run end to end in stand-ins of Colab's
three images: tests/test_colab_images.py.
"""
import json
import os
import re
import subprocess
import sys
import tomllib
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


def _colab(image: str) -> dict[str, str]:
    """Colab's installed distributions, from its own list (tests/colab_images/SOURCE.md)."""
    pins = {}
    for line in (ROOT / "tests" / "colab_images" / f"pip-freeze.{image}.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$", line.strip())
        if m:
            pins[install._canonical(m.group(1))] = m.group(2)
    return pins


@pytest.mark.parametrize("image, extra", [("tpu", "tpu"), ("gpu", "cuda12"), ("cpu", None)])
def test_plan_upgrades_colabs_old_jax_with_its_accelerator_package_and_keeps_the_rest(image, extra):
    installed = _colab(image)
    assert installed["jax"] == "0.7.2"  # below labkit's range: the plan must move it
    reqs, constraints, notes = install._plan(installed, tf_importable="tensorflow" in installed)
    jax_reqs = [r for r in reqs if install._name(r) == "jax"]
    assert len(jax_reqs) == 1 and jax_reqs[0].startswith(f"jax[{extra}]" if extra else "jax<")
    pinned = {install._name(c): c.split("==")[1] for c in constraints}
    # the jax stack is free to move together; nothing of it is pinned at Colab's version
    assert not {"jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "jax-cuda12-pjrt"} & set(pinned)
    # the runtime's own packages are pinned at Colab's versions: kernel, widgets, numpy, protobuf, TF, NVIDIA libs
    for name in ("ipykernel", "ipython", "ipywidgets", "tornado", "numpy", "protobuf", "jupyter-server", "notebook"):
        assert pinned[name] == installed[name], name
    assert {n for n in pinned if n.startswith("nvidia-")} == {n for n in installed if n.startswith("nvidia-")}
    assert ("tensorflow-cpu" in [install._name(r) for r in reqs]) == (image == "tpu")
    if image != "tpu":
        assert pinned["tensorflow"] == installed["tensorflow"]
    assert any(n.startswith("upgrading the runtime's jax 0.7.2") for n in notes)
    assert "flax" in [install._name(r) for r in reqs]  # 0.11.2 is below labkit's range: upgraded with jax


def test_plan_keeps_a_jax_inside_labkits_range_with_its_accelerator_package():
    installed = {"jax": "0.10.2", "jaxlib": "0.10.2", "libtpu": "0.0.42", "tensorflow": "2.19.0", "numpy": "2.0.2",
                 "jax-cuda12-plugin": "0.10.2", "nvidia-cudnn-cu12": "9.1", "bokeh": "3.7.0"}
    reqs, constraints, notes = install._plan(installed, tf_importable=True)
    names = [install._name(r) for r in reqs]
    assert not {"jax", "jaxlib", "numpy", "tensorflow-cpu"} & set(names)
    assert {"flax", "optax", "panel", "bokeh"} <= set(names)
    assert sorted(constraints) == sorted(["jax-cuda12-plugin==0.10.2", "jax==0.10.2", "jaxlib==0.10.2",
                                          "libtpu==0.0.42", "numpy==2.0.2", "nvidia-cudnn-cu12==9.1",
                                          "tensorflow==2.19.0"])
    assert "TensorFlow is importable: tensorflow-cpu not installed" in notes


def test_restart_only_for_what_the_kernel_imported():
    changed = {"jax": ("0.7.2", "0.12.0.1"), "flax": ("0.11.2", "0.12.12"), "scikit-learn": ("1.5", "1.6")}
    modules = install._modules_of({"flax", "scikit-learn", "jax"})  # from the real RECORD files of this venv
    assert modules["scikit-learn"] >= {"sklearn"} and modules["flax"] >= {"flax"}
    assert install._stale(changed, modules, loaded={"IPython", "sys", "os"}) == []
    assert install._stale(changed, modules, loaded={"IPython", "sklearn", "jax", "jax._src.api"}) == [
        "jax", "scikit-learn"]
    assert install._stale(changed, modules, loaded=None) == ["flax", "jax", "scikit-learn"]  # a shell: all


def test_a_shared_namespace_package_is_not_a_reason_to_restart():
    # Colab's kernel always holds ``google`` (google.colab); google-auth, protobuf and google-cloud-storage each
    # install modules under that namespace (their real RECORD files here). Only what was imported counts.
    changed = {"google-auth": ("2.38", "2.40"), "protobuf": ("5.29", "6.31"), "google-cloud-storage": ("2", "3")}
    modules = install._modules_of(set(changed))
    assert "google.auth" in modules["google-auth"] and "google.protobuf" in modules["protobuf"]
    assert "google" not in modules["google-auth"]  # a namespace package has no __init__ of its own
    kernel = {"google", "google.colab", "google.protobuf", "google.protobuf.message", "IPython"}
    assert install._stale(changed, modules, loaded=kernel) == ["protobuf"]
    assert install._stale(changed, modules, loaded=kernel | {"google.cloud.storage"}) == [
        "google-cloud-storage", "protobuf"]


def test_ensure_does_nothing_where_labkit_has_everything(monkeypatch):
    # This venv satisfies labkit (the nbval kernels run the install cell here): no pip, no output, no restart.
    monkeypatch.setattr(install.subprocess, "run", lambda *a, **k: pytest.fail(f"pip was run: {a}"))
    assert install._missing() == []
    assert install.ensure() is None


def test_placeholder_repository_gets_a_clear_message_instead_of_gits_error(tmp_path):
    cell = install.cell_source(install._PLACEHOLDER)
    # -S: no site-packages, as in a kernel where labkit is not installed yet
    done = subprocess.run([sys.executable, "-S", "-c", cell], capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k not in ("LABKIT_SOURCE", "PYTHONPATH")})
    assert done.returncode == 1
    assert "RuntimeError: This copy of labkit has no repository URL yet: set LABKIT_SOURCE" in done.stderr
    assert "git" not in done.stderr.split("RuntimeError:")[0].lower().replace("github", "")  # pip/git never ran
    assert "github.com/OWNER/" not in install.cell_source("https://github.com/me/labkit")  # a real URL: no guard


def test_cell_and_badges_come_from_the_one_repository_url():
    assert install.repository() == REPO.rstrip("/")
    owner_name = REPO.removeprefix("https://github.com/")
    assert f'os.environ.get("LABKIT_SOURCE", "git+{REPO}@main")' in install.CELL_SOURCE
    assert '"--no-deps", source]' in install.CELL_SOURCE and "labkit.install.ensure()" in install.CELL_SOURCE
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


def test_a_distribution_without_record_counts_by_its_top_level_names(tmp_path, monkeypatch):
    # An egg-info distribution (setup.py develop, some distro packages) may carry no file list: importlib.metadata
    # then gives files=None, and top_level.txt still names its modules (importlib.metadata docs,
    # packages_distributions). It must still be stale when one of its modules was imported.
    egg = tmp_path / "fakepkg-1.0.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    (egg / "top_level.txt").write_text("fakemod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = install._modules_of({"fakepkg"})
    assert modules == {"fakepkg": {"fakemod"}}
    assert install._stale({"fakepkg": ("1.0", "1.1")}, modules, loaded={"fakemod", "os"}) == ["fakepkg"]

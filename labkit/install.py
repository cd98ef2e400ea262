"""install: labkit on Colab (or any preinstalled stack) without touching its jax, and the notebooks' install cell.

Owns ``python -m labkit.install``: after ``pip install --no-deps <labkit source>`` it installs labkit's remaining
requirements with pip *constraints* that pin what is already installed of jax, jaxlib, libtpu, the CUDA/ROCm
plugins, NVIDIA libraries, TensorFlow, keras, numpy, ml_dtypes, protobuf and the kernel's own machinery
(ipykernel, IPython, jupyter_client, tornado, ...); it installs ``tensorflow-cpu``
only when no TensorFlow can be imported, adds what Panel needs to render on Colab (``jupyter_bokeh``), and says
whether the runtime must restart (it must when a package that was already installed changed version).
Also owns the install cell's exact text (``CELL_SOURCE``), the Open-in-Colab badges, and stamping both into
notebooks and README (``--stamp-notebooks``, ``--stamp-readme``), all built from ONE repository URL: the
``Repository`` entry of ``[project.urls]`` in pyproject.toml (``--repository`` overrides it for a fork; the
cell's pip source stays overridable at run time with the ``LABKIT_SOURCE`` environment variable).
Must not: import anything outside the standard library (it runs before labkit's requirements exist), or
replace a preinstalled jax, jaxlib, libtpu, CUDA plugin or TensorFlow.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["CELL_SOURCE", "cell_source", "badge_markdown", "repository", "install", "stamp_notebook",
           "stamp_readme", "main"]

_ROOT = Path(__file__).resolve().parent.parent
_BRANCH = "main"
_PLACEHOLDER = "https://github.com/OWNER/labkit"
# Installed distributions that the runtime owns: pinned at their installed version, never replaced. Besides
# the accelerator stack and TensorFlow, the notebook machinery Colab's own kernel and server run on.
_PROTECTED = re.compile(r"^(jax|jaxlib|libtpu(-nightly)?|jax-(cuda|rocm)\d*-(plugin|pjrt)|nvidia-.+|"
                        r"tensorflow(-.+)?|tf-keras|keras|numpy|ml-dtypes|protobuf|"
                        r"ipykernel|ipython|jupyter-client|jupyter-core|jupyter-server|notebook|tornado|pyzmq|"
                        r"google-colab)$")
# What Panel needs to render in Colab's notebook front end (Panel's own Colab how-to).
_COLAB_EXTRAS = ("jupyter_bokeh>=4,<5",)
_CELL_TAG, _BADGE_TAG = "labkit-install", "labkit-colab-badge"
_BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
_README_BEGIN, _README_END = "<!-- labkit:colab-badges -->", "<!-- /labkit:colab-badges -->"


# ---------------------------------------------------------------------------------------------------------
# The one repository URL and what is built from it.

def repository() -> str:
    """The repository URL: pyproject's ``[project.urls] Repository`` (checkout), else labkit's installed metadata."""
    pyproject = _ROOT / "pyproject.toml"
    if pyproject.is_file():
        import tomllib
        urls = tomllib.loads(pyproject.read_text()).get("project", {}).get("urls", {})
        if urls.get("Repository"):
            return urls["Repository"].rstrip("/")
    try:
        for entry in metadata.metadata("labkit").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() == "repository":
                return url.strip().rstrip("/")
    except metadata.PackageNotFoundError:
        pass
    return _PLACEHOLDER


def _github(repo: str) -> str:
    m = re.match(r"^https://github\.com/([^/]+/[^/]+?)(\.git)?$", repo)
    if not m:
        raise ValueError(f"repository: Open-in-Colab badges need a GitHub URL such as "
                         f"'https://github.com/OWNER/labkit', got {repo!r}")
    return m.group(1)


def colab_url(notebook: str, repo: str | None = None, branch: str = _BRANCH) -> str:
    """Colab's URL for ``notebooks/<notebook>`` of the repository."""
    return f"https://colab.research.google.com/github/{_github(repo or repository())}/blob/{branch}/notebooks/{notebook}"


def badge_markdown(notebook: str, repo: str | None = None, branch: str = _BRANCH) -> str:
    """The Open-in-Colab badge (markdown) for ``notebooks/<notebook>``."""
    return f"[![Open In Colab]({_BADGE_SVG})]({colab_url(notebook, repo, branch)})"


def cell_source(repo: str | None = None, branch: str = _BRANCH) -> str:
    """The install cell: does nothing where labkit is importable; else installs it without touching the stack."""
    default = f"git+{repo or repository()}@{branch}"
    return (
        "# Install labkit (Colab, or any kernel without it; elsewhere this does nothing). It never replaces the\n"
        "# runtime's jax, jaxlib, libtpu, CUDA plugin or TensorFlow; set LABKIT_SOURCE to install your own copy.\n"
        "import importlib.util, os, subprocess, sys\n"
        "if importlib.util.find_spec(\"labkit\") is None:\n"
        f"    source = os.environ.get(\"LABKIT_SOURCE\", \"{default}\")\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"--no-deps\", source], check=True)\n"
        "    subprocess.run([sys.executable, \"-m\", \"labkit.install\"], check=True)")


CELL_SOURCE = cell_source()


# ---------------------------------------------------------------------------------------------------------
# The install step.

def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed() -> dict[str, str]:
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_canonical(name), dist.version)
    return found


def _labkit_requirements() -> list[str]:
    """labkit's own requirements (no extras): from its installed metadata, else from the checkout's pyproject."""
    try:
        reqs = metadata.requires("labkit")
    except metadata.PackageNotFoundError:
        reqs = None
    if reqs is None:
        import tomllib
        reqs = tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [r for r in reqs if "extra ==" not in r.replace("'", '"').replace('"', "")
            and "extra==" not in r.replace(" ", "")]


def _name(requirement: str) -> str:
    return _canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:4])


def _within(version: str, requirement: str) -> bool:
    """Whether ``version`` meets the plain ``>=,<,<=,>,==,!=`` bounds of ``requirement`` (a warning only)."""
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
           "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
    have = _release(version)
    for op, bound in re.findall(r"(>=|<=|==|!=|>|<)\s*([0-9][0-9.]*)", requirement.split(";")[0]):
        want = _release(bound)
        width = max(len(have), len(want))
        if not ops[op](have + (0,) * (width - len(have)), want + (0,) * (width - len(want))):
            return False
    return True


def _plan(installed: dict[str, str], tf_importable: bool) -> tuple[list[str], list[str], list[str]]:
    """(requirements to pass to pip, constraints, notes) for this environment."""
    reqs, notes = [], []
    for req in _labkit_requirements() + list(_COLAB_EXTRAS):
        name = _name(req)
        if name == "tensorflow-cpu" and tf_importable:
            notes.append("TensorFlow is importable: tensorflow-cpu not installed")
            continue
        if _PROTECTED.match(name) and name in installed:
            if not _within(installed[name], req):
                notes.append(f"keeping the runtime's {name} {installed[name]}, outside labkit's tested range "
                             f"({req.split(';')[0]}); labkit never replaces it")
            continue
        reqs.append(req)
    constraints = [f"{name}=={version}" for name, version in sorted(installed.items()) if _PROTECTED.match(name)]
    return reqs, constraints, notes


def install(*, dry_run: bool = False, pip_args: tuple[str, ...] = ()) -> dict:
    """Install labkit's remaining requirements around what is installed; returns what happened.

    ``{"requirements", "constraints", "notes", "changed": {name: (before, after)}, "restart": bool,
    "seconds"}``. With ``dry_run`` nothing is installed (the pip command is returned under ``"command"``).
    """
    t0 = time.perf_counter()
    before = _installed()
    reqs, constraints, notes = _plan(before, importlib.util.find_spec("tensorflow") is not None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "constraints.txt"
        path.write_text("".join(c + "\n" for c in constraints))
        command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-c", str(path),
                   *pip_args, *reqs]
        if not dry_run and reqs:
            done = subprocess.run(command)
            if done.returncode:
                raise SystemExit(
                    f"labkit.install: pip could not install labkit's requirements around the runtime's packages "
                    f"(pinned: {', '.join(constraints) or 'none'}); see pip's message above. labkit never "
                    "replaces jax, jaxlib, libtpu, a CUDA plugin or TensorFlow: upgrade them yourself (e.g. "
                    "pip install -U 'jax[tpu]'), restart the runtime, and run this cell again.")
    after = before if dry_run else _installed()
    changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    return {"requirements": reqs, "constraints": constraints, "notes": notes, "changed": changed,
            "restart": bool(changed), "command": command, "seconds": time.perf_counter() - t0}


def _report(result: dict) -> str:
    kept = [c.replace("==", " ") for c in result["constraints"] if _name(c) in ("jax", "jaxlib", "libtpu")
            or _name(c).startswith(("jax-cuda", "tensorflow"))]
    lines = [f"labkit.install: kept the runtime's {', '.join(kept) or 'packages (no jax/TensorFlow found)'}; "
             f"{len(result['requirements'])} requirement(s) installed around {len(result['constraints'])} "
             f"pinned package(s) in {result['seconds']:.0f} s"]
    lines += [f"  {note}" for note in result["notes"]]
    if result["restart"]:
        changed = ", ".join(f"{n} {a} -> {b}" for n, (a, b) in sorted(result["changed"].items()))
        lines.append(f"  RESTART NEEDED (Runtime > Restart session), then run the notebook again: {changed}")
    else:
        lines.append("  no restart needed: no package that was already installed changed")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Stamping the cell and the badges.

def _is_install_cell(cell: dict) -> bool:
    src = "".join(cell.get("source", []))
    return cell.get("cell_type") == "code" and (
        _CELL_TAG in cell.get("metadata", {}).get("tags", [])
        or ('find_spec("labkit")' in src and "LABKIT_SOURCE" in src))


def _lines(text: str) -> list[str]:
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + [parts[-1]]


def stamp_notebook(path: str | Path, repo: str | None = None, branch: str = _BRANCH) -> bool:
    """Write (or refresh) the Open-in-Colab badge cell and the install cell into a notebook; True if it changed.

    The badge goes first; an existing install cell is replaced in place (so a papermill ``parameters`` cell
    before it stays first among code cells), else the install cell goes before the first code cell.
    """
    path = Path(path)
    text = path.read_text()
    nb = json.loads(text)
    cells = nb["cells"]
    badge = {"cell_type": "markdown", "id": _BADGE_TAG, "metadata": {"tags": [_BADGE_TAG]},
             "source": _lines(badge_markdown(path.name, repo, branch))}
    install_cell = {"cell_type": "code", "execution_count": None, "id": _CELL_TAG,
                    "metadata": {"tags": [_CELL_TAG]}, "outputs": [], "source": _lines(cell_source(repo, branch))}
    cells[:] = [c for c in cells if _BADGE_TAG not in c.get("metadata", {}).get("tags", [])]
    at = next((i for i, c in enumerate(cells) if _is_install_cell(c)), None)
    if at is None:
        at = next((i for i, c in enumerate(cells) if c.get("cell_type") == "code"), len(cells))
        cells.insert(at, install_cell)
    else:
        old = cells[at]
        tags = [t for t in old.get("metadata", {}).get("tags", []) if t != _CELL_TAG] + [_CELL_TAG]
        cells[at] = dict(old, source=install_cell["source"], metadata=dict(old.get("metadata", {}), tags=tags))
    cells.insert(0, badge)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + ("\n" if text.endswith("\n") else "")
    if new != text:
        path.write_text(new)
    return new != text


def stamp_readme(path: str | Path, notebooks: list[str], repo: str | None = None, branch: str = _BRANCH) -> bool:
    """Refresh the badge block between the ``labkit:colab-badges`` markers of a README; True if it changed."""
    path = Path(path)
    text = path.read_text()
    if _README_BEGIN not in text or _README_END not in text:
        raise ValueError(f"stamp_readme: {path} has no {_README_BEGIN} ... {_README_END} block to fill")
    block = "\n".join(f"- {badge_markdown(nb, repo, branch)} `{nb.removesuffix('.ipynb')}`" for nb in notebooks)
    head, rest = text.split(_README_BEGIN, 1)
    _, tail = rest.split(_README_END, 1)
    new = f"{head}{_README_BEGIN}\n{block}\n{_README_END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


# ---------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit.install", description=__doc__.splitlines()[0])
    p.add_argument("--stamp-notebooks", nargs="*", metavar="NOTEBOOK", default=None,
                   help="write the badge + install cell into these notebooks (default: notebooks/*.ipynb)")
    p.add_argument("--stamp-readme", nargs="?", const=str(_ROOT / "README.md"), default=None, metavar="README",
                   help="refresh the README's Open-in-Colab badges")
    p.add_argument("--repository", default=None, help=f"repository URL (default: pyproject's, {repository()})")
    p.add_argument("--branch", default=_BRANCH, help=f"branch the badges and the cell point at (default {_BRANCH})")
    p.add_argument("--print-cell", action="store_true", help="print the install cell's text")
    p.add_argument("--dry-run", action="store_true", help="show the pip command; install nothing")
    args = p.parse_args(argv)
    if args.print_cell:
        print(cell_source(args.repository, args.branch))
        return 0
    if args.stamp_notebooks is not None or args.stamp_readme:
        paths = [Path(x) for x in args.stamp_notebooks or []] or sorted((_ROOT / "notebooks").glob("*.ipynb"))
        if args.stamp_notebooks is not None:
            for nb in paths:
                print(f"{nb}: {'stamped' if stamp_notebook(nb, args.repository, args.branch) else 'unchanged'}")
        if args.stamp_readme:
            names = [nb.name for nb in sorted((_ROOT / "notebooks").glob("*.ipynb"))]
            changed = stamp_readme(args.stamp_readme, names, args.repository, args.branch)
            print(f"{args.stamp_readme}: {'stamped' if changed else 'unchanged'}")
        return 0
    result = install(dry_run=args.dry_run)
    if args.dry_run:
        print(" ".join(result["command"]))
    print(_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

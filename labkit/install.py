"""install: labkit into Colab (or any preinstalled stack) with at most one restart, and the notebooks' install cell.

Owns ``labkit.install.ensure()`` (what the install cell calls in the kernel) and ``python -m labkit.install``
(the same from a shell): after ``pip install --no-deps <labkit source>`` they install labkit's remaining
requirements in ONE pip call, with pip *constraints* that pin what the runtime owns: its TensorFlow, keras,
numpy, ml_dtypes, protobuf, NVIDIA libraries and the kernel's own machinery (ipykernel, IPython, ipywidgets,
jupyter_client, tornado, ...). The runtime's jax is kept when it is inside labkit's range; otherwise jax, jaxlib
and the accelerator package are upgraded together, as one unit (``jax[tpu]`` where libtpu is installed,
``jax[cuda12]`` where the CUDA 12 plugin is, plain ``jax`` on CPU): Colab's images ship jax 0.7.2, below what
labkit needs, and a jax without its matching libtpu or plugin cannot start (README, "Colab"). It installs
``tensorflow-cpu`` only when no TensorFlow can be imported. A restart is asked for only when a package that
this kernel had already imported changed version: ``ensure()`` then raises ``RestartRuntime``, which stops
"Run all" before any cell runs in a kernel holding the old modules.
Also owns the install cell's exact text (``CELL_SOURCE``), the Open-in-Colab badges, and stamping both into
notebooks and README (``--stamp-notebooks``, ``--stamp-readme``), all built from ONE repository URL: the
``Repository`` entry of ``[project.urls]`` in pyproject.toml (``--repository`` overrides it for a fork; the
cell's pip source stays overridable at run time with the ``LABKIT_SOURCE`` environment variable).
Must not: import anything outside the standard library (it runs before labkit's requirements exist), or
replace a preinstalled TensorFlow, NVIDIA library or kernel package.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["CELL_SOURCE", "cell_source", "badge_markdown", "repository", "install", "ensure", "RestartRuntime",
           "stamp_notebook", "stamp_readme", "main"]

_ROOT = Path(__file__).resolve().parent.parent
_BRANCH = "main"
_PLACEHOLDER = "https://github.com/OWNER/labkit"
# Installed distributions that the runtime owns: pinned at their installed version, never replaced. Besides
# TensorFlow and the libraries it and torch share with jax, the notebook machinery Colab's own kernel, server
# and widget front end run on (ipywidgets included: Colab's front end renders the version it ships).
_PROTECTED = re.compile(r"^(nvidia-.+|tensorflow(-.+)?|tf-keras|keras|numpy|ml-dtypes|protobuf|"
                        r"ipykernel|ipython|ipywidgets|widgetsnbextension|jupyterlab-widgets|jupyter-client|"
                        r"jupyter-core|jupyter-server|notebook|tornado|pyzmq|google-colab)$")
# The jax stack: kept as one unit when the runtime's jax is inside labkit's range, else upgraded as one unit.
_JAX_STACK = re.compile(r"^(jax|jaxlib|libtpu(-nightly)?|jax-(cuda|rocm)\d*-(plugin|pjrt))$")
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
    """The install cell: installs labkit where it is missing, then ``ensure()``; elsewhere it does nothing."""
    repo = repo or repository()
    default = f"git+{repo}@{branch}"
    guard = ("    if \"github.com/OWNER/\" in source:  # the placeholder URL: no such repository\n"
             "        raise RuntimeError(\"This copy of labkit has no repository URL yet: set LABKIT_SOURCE to a \"\n"
             "                           \"real copy and run this cell again, e.g. os.environ['LABKIT_SOURCE'] = \"\n"
             "                           \"'git+https://github.com/YOU/labkit@main' (or a local folder)\")\n"
             if repo.rstrip("/") == _PLACEHOLDER else "")
    return (
        "# Install labkit where it is missing (Colab, or any kernel without it; elsewhere this does nothing): one pip\n"
        "# call around the runtime's own packages. If the kernel must restart, this cell stops Run all and says so.\n"
        "import importlib.util, os, subprocess, sys\n"
        "if importlib.util.find_spec(\"labkit\") is None:\n"
        f"    source = os.environ.get(\"LABKIT_SOURCE\", \"{default}\")\n"
        f"{guard}"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"--no-deps\", source], check=True)\n"
        "import labkit.install\n"
        "labkit.install.ensure()  # installs what is missing; raises RestartRuntime if this kernel must restart")


CELL_SOURCE = cell_source()


# ---------------------------------------------------------------------------------------------------------
# The install step.

class RestartRuntime(RuntimeError):
    """Raised by ``ensure()`` when this kernel imported a package that the install changed: restart, then Run all."""


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
    """Whether ``version`` meets the plain ``>=,<,<=,>,==,!=`` bounds of ``requirement``."""
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
           "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
    have = _release(version)
    for op, bound in re.findall(r"(>=|<=|==|!=|>|<)\s*([0-9][0-9.]*)", requirement.split(";")[0]):
        want = _release(bound)
        width = max(len(have), len(want))
        if not ops[op](have + (0,) * (width - len(have)), want + (0,) * (width - len(want))):
            return False
    return True


def _accelerator(installed: dict[str, str]) -> str | None:
    """jax's extra for the runtime's accelerator package: 'tpu' (libtpu), 'cuda12'/'cuda13' (plugin), or None."""
    if "libtpu" in installed or "libtpu-nightly" in installed:
        return "tpu"
    for name in sorted(installed):
        m = re.match(r"^jax-(cuda\d+)-plugin$", name)
        if m:
            return m.group(1)
    return None


def _plan(installed: dict[str, str], tf_importable: bool) -> tuple[list[str], list[str], list[str]]:
    """(requirements to pass to pip, constraints, notes) for this environment."""
    reqs, notes = [], []
    labkit_reqs = _labkit_requirements()
    jax_req = next(r for r in labkit_reqs if _name(r) == "jax")
    keep_jax = "jax" in installed and _within(installed["jax"], jax_req)
    extra = _accelerator(installed)
    if not keep_jax:
        # jax, jaxlib and the accelerator package move together: mixing versions breaks jax's start-up.
        bounds = jax_req.split(";")[0][len(re.match(r"\s*[A-Za-z0-9._-]+", jax_req).group(0)):].strip()
        reqs.append(f"jax[{extra}]{bounds}" if extra else f"jax{bounds}")
        if "jax" in installed:
            notes.append(f"upgrading the runtime's jax {installed['jax']} (below labkit's {bounds}) together "
                         f"with jaxlib{' and ' + ('libtpu' if extra == 'tpu' else f'its {extra} plugin') if extra else ''}")
    for req in labkit_reqs:
        name = _name(req)
        if name == "jax":
            continue
        if name == "tensorflow-cpu" and tf_importable:
            notes.append("TensorFlow is importable: tensorflow-cpu not installed")
            continue
        if name in installed and (_PROTECTED.match(name) or (keep_jax and _JAX_STACK.match(name))):
            if not _within(installed[name], req):
                notes.append(f"keeping the runtime's {name} {installed[name]}, outside labkit's tested range "
                             f"({req.split(';')[0]}); labkit never replaces it")
            continue
        reqs.append(req)
    constraints = [f"{name}=={version}" for name, version in sorted(installed.items())
                   if _PROTECTED.match(name) or (keep_jax and _JAX_STACK.match(name))]
    return reqs, constraints, notes


def _modules_of(names) -> dict[str, set[str]]:
    """The dotted module names each installed distribution in ``names`` provides (from its RECORD file).

    Full names, not top-level ones: a namespace package such as ``google`` is shared by google-auth, protobuf,
    google-cloud-storage and Colab's own ``google.colab``, so a changed google-cloud-storage must not count as
    stale just because the kernel imported ``google.colab``."""
    found: dict[str, set[str]] = {}
    tops = None
    for dist in metadata.distributions():
        name = _canonical(dist.metadata["Name"] or "")
        if name in names and name not in found:
            found[name] = {m for f in (dist.files or ()) if (m := _module_name(str(f)))}
            if not dist.files:  # no RECORD (an egg-info or distro package): its top-level names, as before
                tops = tops if tops is not None else metadata.packages_distributions()
                found[name] = {t for t, ds in tops.items() if name in {_canonical(d) for d in ds}}
    return found


def _importers(names, loaded) -> set[str]:
    """The distributions in ``names`` that could provide a loaded module (their top-level name is loaded): only
    their RECORD files need reading (Colab has ~700 distributions; the kernel touches a few dozen)."""
    tops = {m.split(".")[0] for m in loaded}
    return {_canonical(d) for top, dists in metadata.packages_distributions().items() if top in tops
            for d in dists} & set(names)


def _module_name(path: str) -> str | None:
    """``jax/_src/api.py`` -> ``jax._src.api``; ``pkg/__init__.py`` -> ``pkg``; an extension module's ABI tag is
    dropped; None for what is not importable (metadata, scripts outside site-packages, data files)."""
    if path.startswith("..") or ".dist-info/" in path or ".egg-info/" in path:
        return None
    stem, dot, suffix = path.rpartition(".")
    if not dot or suffix not in ("py", "so", "pyd"):
        return None
    parts = stem.split("/")
    parts[-1] = parts[-1].split(".")[0]  # foo.cpython-312-x86_64-linux-gnu -> foo
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) if parts and all(p.isidentifier() for p in parts) else None


def _stale(changed: dict, modules: dict[str, set[str]], loaded) -> list[str]:
    """The changed distributions a restart must reload: those providing a module the kernel has imported
    (``loaded``: full dotted names), or every changed one when the importer is unknown (``loaded=None``: a shell)."""
    if loaded is None:
        return sorted(changed)
    loaded = set(loaded)
    return sorted(n for n in changed if modules.get(n, set()) & loaded)


def install(*, dry_run: bool = False, pip_args: tuple[str, ...] = (), loaded=None) -> dict:
    """Install labkit's remaining requirements around what is installed, in one pip call; returns what happened.

    ``{"requirements", "constraints", "notes", "changed": {name: (before, after)}, "stale": [names],
    "restart": bool, "command", "seconds"}``. ``loaded``: the module names (``sys.modules``) a running kernel has
    imported; a restart is needed only when a changed distribution provides one of them (``stale``). With
    ``loaded=None`` (a shell), every changed distribution that was installed before counts. With ``dry_run``
    nothing is installed.
    """
    t0 = time.perf_counter()
    before = _installed()
    reqs, constraints, notes = _plan(before, importlib.util.find_spec("tensorflow") is not None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "constraints.txt"
        path.write_text("".join(c + "\n" for c in constraints))
        command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-c", str(path),
                   *pip_args, *reqs]
        modules = _modules_of(_importers(set(before), loaded)) if loaded is not None else {}
        if not dry_run and reqs:
            done = subprocess.run(command)
            if done.returncode:
                raise SystemExit(
                    f"labkit.install: pip could not install labkit's requirements around the runtime's packages "
                    f"(pinned: {', '.join(constraints) or 'none'}); see pip's message above.")
    after = before if dry_run else _installed()
    changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    stale = _stale(changed, modules, loaded)
    importlib.invalidate_caches()  # the kernel's import system sees the new packages without a restart
    return {"requirements": reqs, "constraints": constraints, "notes": notes, "changed": changed, "stale": stale,
            "restart": bool(stale), "command": command, "seconds": time.perf_counter() - t0}


def _missing() -> list[str]:
    """labkit's requirements that are not installed or are outside their range (protected ones excepted)."""
    installed = _installed()
    tf = importlib.util.find_spec("tensorflow") is not None
    out = []
    for req in _labkit_requirements():
        name = _name(req)
        if name == "tensorflow-cpu" and tf:
            continue
        if name not in installed:
            out.append(req)
        elif not _within(installed[name], req) and not _PROTECTED.match(name):
            out.append(req)
    return out


def ensure() -> dict | None:
    """The install cell's step, in the kernel: install what labkit still needs, or do nothing if it has it all.

    Raises ``RestartRuntime`` (which stops "Run all") when a package this kernel had already imported changed
    version; returns the install result otherwise (None when nothing was missing).
    """
    if not _missing():
        return None
    result = install(loaded=set(sys.modules), pip_args=("--quiet",))
    print(_report(result))
    if result["restart"]:
        raise RestartRuntime(
            f"labkit is installed, but this kernel had already imported {', '.join(result['stale'])} at the old "
            "version. Restart the runtime now (Colab: Runtime > Restart session; Jupyter: Kernel > Restart "
            "Kernel), then Run all again: this cell will then find everything installed and do nothing.")
    return result


def _report(result: dict) -> str:
    kept = [c.replace("==", " ") for c in result["constraints"] if _name(c) in ("jax", "jaxlib", "libtpu")
            or _name(c).startswith(("jax-cuda", "tensorflow"))]
    lines = [f"labkit.install: {len(result['requirements'])} requirement(s) installed in one pip call around "
             f"{len(result['constraints'])} pinned package(s) of the runtime in {result['seconds']:.0f} s"]
    if kept:
        lines.append(f"  kept the runtime's {', '.join(kept)}")
    lines += [f"  {note}" for note in result["notes"]]
    if result["changed"]:
        lines.append("  changed: " + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in sorted(result["changed"].items())))
    if result["restart"]:
        lines.append(f"  RESTART NEEDED (Runtime > Restart session), then run the notebook again: "
                     f"{', '.join(result['stale'])} changed after being imported")
    else:
        lines.append("  no restart needed: nothing that was already imported changed")
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

"""The documentation: every public symbol has a docstring, the worked plugin example really
installs, registers, runs and passes its conformance tests, and (slow) the site builds strictly.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "subsetlab-loss-sampling"
EXAMPLE_DIST = "subsetlab-loss-sampling"
HOWTO = ROOT / "docs" / "guides" / "custom-strategy.md"
PACKAGES = ("subsetlab", "strategies")


# ----------------------------------------------------------------------------- docstrings


def _public_modules() -> list[str]:
    """Every importable module of the packages whose dotted path has no ``_``-prefixed part."""
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            if any(part.startswith("_") for part in info.name.split(".")):
                continue
            names.append(info.name)
    return sorted(names)


def _own_doc(obj: object) -> str | None:
    """The object's docstring, or None when it has none of its own.

    Classes must carry their own (``inspect.getdoc`` would inherit the base's, and dataclasses
    get a generated signature line); functions, methods and properties may inherit the
    docstring of the method they override, which documents the same hook.
    """
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        if dataclasses.is_dataclass(obj) and doc and doc.startswith(obj.__name__ + "("):
            return None
        return doc.strip() if isinstance(doc, str) and doc.strip() else None
    doc = inspect.getdoc(obj)
    return doc.strip() if doc and doc.strip() else None


def _class_members(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties defined in ``cls`` itself (not inherited, not dunder).

    Dataclass fields whose default is a function (``DistView.all_reduce``) are data, not methods.
    """
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    out = []
    for name, raw in vars(cls).items():
        if name.startswith("_") or name in fields:
            continue
        if isinstance(raw, (staticmethod, classmethod)):
            raw = raw.__func__
        if isinstance(raw, property) or inspect.isfunction(raw):
            out.append((name, getattr(cls, name) if not isinstance(raw, property) else raw))
    return out


def _undocumented() -> list[str]:
    """``module: symbol`` for every public module, ``__all__`` entry and public method lacking a docstring."""
    missing: list[str] = []
    seen: set[int] = set()
    for mod_name in _public_modules():
        mod = importlib.import_module(mod_name)
        if not (mod.__doc__ or "").strip():
            missing.append(f"{mod_name}: module docstring")
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue  # constants and type aliases cannot carry docstrings
            seen.add(id(obj))
            where = f"{obj.__module__}.{obj.__qualname__}"
            if _own_doc(obj) is None:
                missing.append(f"{mod_name}: {where}")
            if inspect.isclass(obj):
                for member, value in _class_members(obj):
                    if _own_doc(value) is None:
                        missing.append(f"{mod_name}: {where}.{member}")
    return missing


def test_every_public_symbol_has_a_docstring() -> None:
    """The API reference is generated from docstrings: nothing public may lack one."""
    missing = _undocumented()
    assert not missing, "public symbols without a docstring:\n  " + "\n  ".join(missing)


def test_the_docstring_walk_finds_a_missing_docstring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: an undocumented public class and method are reported."""
    pkg = tmp_path / "strategies" / "zz_undocumented_probe.py"
    pkg.parent.mkdir()
    pkg.write_text('"""Probe."""\n__all__ = ["Thing"]\nclass Thing:\n    def run(self):\n        pass\n')
    import strategies

    monkeypatch.setattr(strategies, "__path__", [*strategies.__path__, str(pkg.parent)])
    try:
        missing = _undocumented()
    finally:
        sys.modules.pop("strategies.zz_undocumented_probe", None)
    probe = [m for m in missing if "zz_undocumented_probe" in m]
    assert probe == [
        "strategies.zz_undocumented_probe: strategies.zz_undocumented_probe.Thing",
        "strategies.zz_undocumented_probe: strategies.zz_undocumented_probe.Thing.run",
    ]


# ----------------------------------------------------------------------------- the worked example


def test_the_how_to_includes_every_file_of_the_example() -> None:
    """The guide shows the example's code through snippet includes, so the two cannot diverge."""
    text = HOWTO.read_text(encoding="utf-8")
    included = set(re.findall(r'^--8<-- "([^"]+)"\s*$', text, flags=re.M))
    files = {
        p.relative_to(ROOT).as_posix()
        for p in EXAMPLE.rglob("*")
        if p.is_file()
        and p.suffix in (".py", ".toml")
        and not any(part in ("__pycache__", "build") or part.endswith(".egg-info") for part in p.parts)
    }
    assert files, "the example package is empty"
    assert files <= included, f"example files not included in {HOWTO.name}: {sorted(files - included)}"
    for path in included:
        assert (ROOT / path).is_file(), f"{HOWTO.name} includes a missing file {path}"


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SUBSETLAB_DISABLE_PLUGIN_AUTOLOAD"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(args: list[str], site: Path, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        args, cwd=cwd, env=_env(site), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def example_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example package (building it must not write into the repository)."""
    src = tmp_path_factory.mktemp("plugin-src") / EXAMPLE.name
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    return src


@pytest.fixture(scope="module")
def installed_example(example_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed for real (wheel build, dist-info, entry points) into a
    private directory, without network: ``pip install --no-deps --no-build-isolation --target``."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building the example without network needs setuptools in the environment")
    base = tmp_path_factory.mktemp("plugin")
    src = example_copy
    site = base / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-input", "--disable-pip-version-check", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, f"pip install of the example failed:\n{proc.stdout}\n{proc.stderr}"
    assert any(site.glob("subsetlab_loss_sampling-*.dist-info/entry_points.txt"))
    return site


def test_example_is_listed_with_its_distribution(installed_example: Path, tmp_path: Path) -> None:
    """``subsetlab list`` finds the plugin through its entry point and names its distribution."""
    proc = _run([sys.executable, "-m", "subsetlab.cli", "list", "--json"], installed_example, tmp_path)
    strategies = {s["name"]: s for s in json.loads(proc.stdout)["strategies"]}
    assert "loss-sampling" in strategies, sorted(strategies)
    entry = strategies["loss-sampling"]
    assert entry["distribution"] == EXAMPLE_DIST and entry["version"] == "0.1.0"
    assert entry["summary"].startswith("Sample the budget")
    assert strategies["crest"]["distribution"] == "subsetlab"
    where = _run([sys.executable, "-c", "import subsetlab_loss_sampling as m; print(m.__file__)"],
                 installed_example, tmp_path).stdout.strip()
    assert Path(where).is_relative_to(installed_example), where


def test_example_trains_side_by_side(installed_example: Path, tmp_path: Path) -> None:
    """A short suite run with the plugin records an ok run that did its extra forward work."""
    results = tmp_path / "results.jsonl"
    _run(
        [sys.executable, "-m", "subsetlab.cli", "run", "--strategy", "loss-sampling[candidates=0.5]",
         "--epochs", "3", "--no-full", "--no-plots", "--progress", "none", "--results", str(results)],
        installed_example,
        tmp_path,
    )
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    assert len(records) == 1
    rec = records[0]
    assert rec["status"] == "ok", rec["error"]
    assert rec["spec"]["strategy"] == {"name": "loss-sampling", "select_every": 1, "candidates": 0.5, "smoothing": 0.2}
    res = rec["result"]
    budget = res["budget"]
    assert res["work"]["steps"] == budget["total_steps"] == 3 * budget["steps_per_epoch"]
    assert res["selections"]["count"] == 3
    scored = -(-budget["n"] // 2)  # ceil(0.5 * N) candidates per selection, never fewer than k
    assert res["work"]["forward_examples"] == 3 * max(scored, budget["subset_size"])
    assert "scoring" in res["timings"]["strategy"]


def test_example_passes_its_own_conformance_tests(
    installed_example: Path, example_copy: Path, tmp_path: Path
) -> None:
    """The example's test file (StrategyConformance + its own test) passes against the install."""
    proc = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(example_copy / "tests")],
        installed_example,
        tmp_path,
        timeout=600,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    m = re.search(r"(\d+) passed", summary)
    assert m and int(m.group(1)) >= 15 and "failed" not in summary and "error" not in summary, proc.stdout


# ----------------------------------------------------------------------------- the site


def _hook():
    spec = importlib.util.spec_from_file_location("subsetlab_docs_hook", ROOT / "docs" / "_hooks" / "subsetlab_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hook_conditional_blocks_and_cli_help() -> None:
    """The build hook keeps the first branch of ``if-exists`` only when every path exists, and
    inlines the parser's real help text."""
    pytest.importorskip("mkdocs")
    hook = _hook()
    page = (
        "<!-- if-exists: README.md, pyproject.toml -->\nFIRST-A\n<!-- else -->\nSECOND-A\n<!-- end-if -->\n"
        "<!-- if-exists: README.md, no/such/file.md -->\nFIRST-B\n<!-- else -->\nSECOND-B\n<!-- end-if -->\n"
        "<!-- if-exists: no/such/file.png -->\n![FIRST-C](x.png)\n<!-- end-if -->\n"
        "<!-- cli-help: run -->\n"
    )
    out = hook.on_page_markdown(page, None, None, None)
    assert "FIRST-A" in out and "SECOND-A" not in out
    assert "SECOND-B" in out and "FIRST-B" not in out and "FIRST-C" not in out
    assert "usage: subsetlab run" in out and "--retry-failed" in out and out.count("```") == 2


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: every page, snippet, cross-reference and API entry resolves."""
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("griffe_pydantic")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ("index.html", "guides/custom-strategy.html", "reference/contract.html", "methods/crest.html"):
        assert (tmp_path / "site" / page).is_file(), page
    howto = (tmp_path / "site" / "guides" / "custom-strategy.html").read_text(encoding="utf-8")
    assert "LossSamplingConfig" in howto and "subsetlab_loss_sampling:LossSampling" in howto

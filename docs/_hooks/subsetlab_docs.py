"""MkDocs hook of the subsetlab site (``hooks:`` in mkdocs.yml). Nothing is fetched.

* Committed benchmark outputs under ``benchmarks/results/`` (plots, CSV tables) are added to
  the site at the same relative path, so a page in ``docs/benchmarks/`` links them as
  ``results/<suite>/<file>``.
* ``<!-- if-exists: PATH[, PATH...] -->`` ... ``<!-- else -->`` ... ``<!-- end-if -->`` keeps
  the first part when every PATH (relative to the repository root) exists, else the second:
  the benchmark page builds before its results are committed and shows them once they are.
* ``<!-- exports: PACKAGE -->`` becomes a table of the names ``PACKAGE`` re-exports lazily
  (its ``_EXPORTS`` map), each linked to its API entry; a name whose entry is missing fails
  the strict build.
* ``<!-- conformance-checks -->`` becomes a table of ``subsetlab.testing.CHECKS``: each check's
  name and its docstring.
* ``<!-- cli-help: COMMAND -->`` becomes the real ``subsetlab COMMAND --help`` text (or the
  top-level help for ``subsetlab``), taken from the argument parser at build time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SITE_SUFFIXES = {".png", ".svg", ".csv"}

IF_EXISTS = re.compile(
    r"<!--\s*if-exists:\s*(?P<paths>[^>]*?)\s*-->\n?(?P<then>.*?)"
    r"(?:<!--\s*else\s*-->\n?(?P<else>.*?))?<!--\s*end-if\s*-->\n?",
    re.S,
)
CLI_HELP = re.compile(r"<!--\s*cli-help:\s*(?P<cmd>[\w-]+)\s*-->")
CHECKS_MARK = re.compile(r"<!--\s*conformance-checks\s*-->")
EXPORTS = re.compile(r"<!--\s*exports:\s*(?P<pkg>[\w.]+)\s*-->")


def on_files(files: Files, config) -> Files:
    """Add the committed benchmark plots and tables to the site."""
    if RESULTS.is_dir():
        for path in sorted(RESULTS.rglob("*")):
            if path.is_file() and path.suffix.lower() in SITE_SUFFIXES:
                uri = path.relative_to(ROOT).as_posix()
                if files.get_file_from_path(uri) is None:
                    files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def _if_exists(m: re.Match) -> str:
    paths = [p.strip() for p in m["paths"].split(",") if p.strip()]
    ok = bool(paths) and all((ROOT / p).exists() for p in paths)
    return m["then"] if ok else (m["else"] or "")


def cli_help(command: str) -> str:
    """``subsetlab COMMAND --help`` as the parser prints it, 78 columns wide."""
    from subsetlab.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "78"
    try:
        parser = build_parser()
        if command == "subsetlab":
            return parser.format_help()
        for action in parser._subparsers._group_actions:  # argparse keeps subparsers here
            if command in getattr(action, "choices", {}):
                return action.choices[command].format_help()
        raise KeyError(f"cli-help: the subsetlab command has no subcommand {command!r}")
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def exports_table(package: str) -> str:
    """Markdown table of the lazily re-exported names of ``package``."""
    import importlib

    exports = importlib.import_module(package)._EXPORTS
    rows = ["| Name | Defined in |", "|---|---|"]
    for name in sorted(exports, key=str.lower):
        module = exports[name]
        rows.append(f"| [`{package}.{name}`][{module}.{name}] | `{module}` |")
    return "\n".join(rows) + "\n"


def checks_table() -> str:
    """Markdown table of the conformance checks, from their docstrings."""
    import inspect

    from subsetlab.testing import CHECKS

    rows = ["| check | what it asserts |", "|---|---|"]
    for name, fn in CHECKS.items():
        doc = " ".join(inspect.getdoc(fn).split())
        doc = doc.replace("|", "\\|")
        rows.append(f"| `{name}` | {doc} |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Resolve the conditional blocks, export tables and CLI help markers of a page."""
    markdown = IF_EXISTS.sub(_if_exists, markdown)
    markdown = EXPORTS.sub(lambda m: exports_table(m["pkg"]), markdown)
    markdown = CHECKS_MARK.sub(lambda m: checks_table(), markdown)
    return CLI_HELP.sub(lambda m: "```text\n" + cli_help(m["cmd"]).rstrip() + "\n```", markdown)

"""Griffe extension of the subsetlab site: reST bits as Markdown, config fields as one table.

subsetlab's docstrings are Google style with a few reST habits that read well in source and
in ``help()``: cross-reference roles (``:class:`~subsetlab.trainer.Trainer```) and literal
blocks introduced by ``::``. mkdocstrings renders Markdown, so this extension rewrites them
once the package is loaded:

* a role becomes an optional autorefs link: the name resolved in the docstring's scope (as
  Python would resolve it), shown in code font, last component only after ``~``, with ``()``
  after functions and methods; a target that is not rendered anywhere stays plain code;
* an ``Example:`` section header becomes ``Examples:`` (the section griffe parses, so
  ``>>>`` lines render as a console session);
* ``text::`` followed by an indented block becomes ``text:`` and a fenced Python block;
* the description of a pydantic field (found by griffe-pydantic, which must run first) moves to
  ``extra["subsetlab"]["description"]`` and the field's docstring is cleared, so the model
  template (``docs/_templates/python/material/pydantic_model.html.jinja``) shows every field
  once, in its table, instead of once more as an attribute entry.

Loaded by path from ``mkdocs.yml`` (mkdocstrings python handler, ``extensions``).
"""

from __future__ import annotations

import html
import re
import textwrap

import griffe

ROLE = re.compile(
    r":(?:py:)?(?P<role>class|meth|func|mod|attr|data|exc|obj|const|prop):`"
    r"(?P<tilde>~?)(?P<text>[^`<>]+?)(?:\s*<(?P<target>[^`>]+)>)?`"
)
CALLABLE_ROLES = {"meth", "func"}


def _resolve(obj: griffe.Object, name: str) -> str:
    """Full path of ``name`` as seen from ``obj`` (``name`` unchanged when unknown)."""
    name = name.strip().lstrip(".").removesuffix("()")
    head, _, rest = name.partition(".")
    try:
        full = obj.resolve(head)
    except Exception:  # noqa: BLE001 - unknown names stay as written (absolute paths mostly)
        return name
    return f"{full}.{rest}" if rest else full


def _role(obj: griffe.Object, m: re.Match) -> str:
    text, target = m["text"].strip(), m["target"]
    if target is not None:
        shown, ident = text, target.strip().lstrip("~")
    else:
        ident = text
        shown = text.removesuffix("()").rsplit(".", 1)[-1] if m["tilde"] else text.removesuffix("()")
        if m["role"] in CALLABLE_ROLES:
            shown += "()"
    path = _resolve(obj, ident)
    return (
        f'<autoref optional identifier="{html.escape(path, quote=True)}">'
        f"<code>{html.escape(shown)}</code></autoref>"
    )


def _literal_blocks(text: str) -> str:
    """``para::`` + indented block -> ``para:`` + fenced Python block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            base = len(line) - len(line.lstrip())
            j = i + 1
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
                j -= 1
            if any(b.strip() for b in block):
                stripped = line.rstrip()[:-2].rstrip()
                pad = " " * base
                out.append((stripped + ":") if stripped.strip() else pad.rstrip())
                out.append("")
                out.append(pad + "```python")
                body = textwrap.dedent("\n".join(b for b in block if b is not None).strip("\n"))
                out.extend(pad + b if b.strip() else "" for b in body.split("\n"))
                out.append(pad + "```")
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


EXAMPLE_HEADER = re.compile(r"^(\s*)Example:\s*$", re.M)


def convert(obj: griffe.Object, text: str) -> str:
    """The Markdown form of a docstring of ``obj``."""
    # Google style (napoleon) reads "Example:" as an examples section; griffe only "Examples:"
    text = EXAMPLE_HEADER.sub(r"\1Examples:", text)
    text = _literal_blocks(text)
    return ROLE.sub(lambda m: _role(obj, m), text)


class SubsetlabDocstrings(griffe.Extension):
    """Rewrite the docstrings of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: object) -> None:
        """Walk the package once it is fully loaded (names can then be resolved)."""
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None and obj.docstring.value:
                obj.docstring.value = convert(obj, obj.docstring.value)
            if obj.is_attribute and "pydantic-field" in obj.labels:
                text = obj.docstring.value if obj.docstring is not None else ""
                obj.extra["subsetlab"]["description"] = text
                obj.docstring = None
            for member in obj.members.values():
                if not member.is_alias:
                    stack.append(member)

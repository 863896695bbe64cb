"""Docstring parsing: a tool's description and its parameters' descriptions.

A tool's description and the description of each argument are what the model reads to decide
when and how to call it, and the natural place for a Python author to write them is the
docstring. :func:`parse_docstring` reads the three styles in common use and returns the summary
(the first paragraph) and a ``{parameter name: description}`` mapping:

- Google: a section header such as ``Args:``, ``Parameters:`` or ``Attributes:`` (for record
  classes), then one entry per parameter, ``name (type): text``, whose text runs on until the
  next entry; the section ends at the first line indented no deeper than its header.
- reST fields: ``:param name: text`` (also ``:param int name:``, ``:ivar name:`` and the other
  field names that describe a value), continued on more-indented lines.
- numpy: a section name underlined with dashes (``Parameters`` / ``----------``), then
  ``name : type`` lines with the text indented below; ``a, b : int`` describes both names.

The summary stops at the first blank line or at the start of a section, so a docstring that
begins with ``Args:`` has an empty summary. When a parameter is described twice, the first
description wins. Nothing here raises: text that fits no style simply describes nothing,
because a docstring is documentation first and a tool must not fail to build over its prose.
"""

from __future__ import annotations

import inspect
import re

__all__ = ["parse_docstring"]

_GOOGLE_SECTIONS = frozenset(
    {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments",
     "kwargs", "other parameters", "attributes"}
)
_GOOGLE_HEADER = re.compile(r"([A-Za-z][A-Za-z ]*):")
_GOOGLE_ENTRY = re.compile(r"\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:(.*)")
_REST_FIELD = re.compile(
    r":(?:param|parameter|arg|argument|key|keyword|ivar|var|cvar)\s+(?:[^:]*?\s)?\*{0,2}(\w+)"
    r"\s*:(.*)"
)
_NUMPY_RULE = re.compile(r"-{3,}")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(first paragraph, {parameter name: description}) of a docstring.

    Understands Google (``Args:`` / ``Attributes:`` sections), reST (``:param name: text``)
    and numpy (``Parameters`` underlined with dashes) styles.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    params: dict[str, str] = {}
    summary: list[str] = []
    for line in lines:
        text = line.strip()
        if not text or _starts_section(text) or _REST_FIELD.match(text):
            break
        summary.append(text)
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        header = _GOOGLE_HEADER.fullmatch(text)
        if header and header.group(1).lower() in _GOOGLE_SECTIONS:
            i = _google_section(lines, i, params)
            continue
        if (
            text.lower() in _GOOGLE_SECTIONS and i + 1 < len(lines)
            and _NUMPY_RULE.fullmatch(lines[i + 1].strip())
        ):
            i = _numpy_section(lines, i, params)
            continue
        field = _REST_FIELD.match(text)
        if field:
            field_indent = _indent(lines[i])
            parts = [field.group(2).strip()]
            i += 1
            while (
                i < len(lines) and lines[i].strip() and _indent(lines[i]) > field_indent
                and not lines[i].strip().startswith(":")
            ):
                parts.append(lines[i].strip())
                i += 1
            params.setdefault(field.group(1), _words(parts))
            continue
        i += 1
    return " ".join(summary), params


def _starts_section(text: str) -> bool:
    header = _GOOGLE_HEADER.fullmatch(text)
    return bool(header) or text.lower() in _GOOGLE_SECTIONS


def _words(parts: list[str]) -> str:
    return " ".join(p for p in parts if p)


def _google_section(lines: list[str], start: int, params: dict[str, str]) -> int:
    base = _indent(lines[start])
    i = start + 1
    entry_indent: int | None = None
    name: str | None = None
    parts: list[str] = []

    def flush() -> None:
        if name is not None:
            params.setdefault(name, _words(parts))

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        indent = _indent(line)
        if indent <= base:
            break
        if entry_indent is None:
            entry_indent = indent
        entry = _GOOGLE_ENTRY.fullmatch(line.strip()) if indent <= entry_indent else None
        if entry:
            flush()
            name, parts = entry.group(1), [entry.group(2).strip()]
        elif name is not None:
            parts.append(line.strip())
        i += 1
    flush()
    return i


def _numpy_section(lines: list[str], start: int, params: dict[str, str]) -> int:
    base = _indent(lines[start])
    i = start + 2
    names: list[str] = []
    parts: list[str] = []

    def flush() -> None:
        for name in names:
            params.setdefault(name, _words(parts))

    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and _NUMPY_RULE.fullmatch(lines[i + 1].strip()):
            break  # the next section's header
        if not line.strip():
            i += 1
            continue
        if _indent(line) <= base:
            flush()
            head = line.strip().split(":", 1)[0]
            names = [n.strip().lstrip("*") for n in head.split(",") if n.strip()]
            parts = []
        else:
            parts.append(line.strip())
        i += 1
    flush()
    return i


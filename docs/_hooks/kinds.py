"""MkDocs hook: tables of inputs, shapes and state generated from ``recurops.KINDS``.

A page writes ``<!-- recurops:kind NAME -->`` where the table of one kind's
inputs goes and ``<!-- recurops:kinds -->`` where the table of all kinds goes,
so the shapes in the docs are always the shapes the code checks. An unknown
kind fails the build; a registered kind no page describes is a warning, which
``mkdocs build --strict`` turns into a failure.
"""

from __future__ import annotations

import logging
import re

from mkdocs.exceptions import PluginError

log = logging.getLogger("mkdocs.hooks.recurops")

_MARK = re.compile(r"<!--\s*recurops:(kinds|kind\s+(\w+))\s*-->")
_seen: set[str] = set()


def _shape(symbolic: str) -> str:
    return "[" + ", ".join(symbolic.split()) + "]"


def _kind_table(kind) -> str:
    rows = [
        "| argument | shape | meaning |",
        "| --- | --- | --- |",
    ]
    for i, spec in enumerate(kind.inputs):
        shapes = " or ".join(f"`{_shape(s)}`" for s in spec.shapes)
        rows.append(f"| {i + 1}. `{spec.name}` | {shapes} | {spec.doc} |")
    rows.append(
        f"| `state=` | `{_shape(kind.state)}` | initial state, float32 "
        "(float64 for float64 inputs); zeros when omitted |"
    )
    rows.append(f"| returns `y` | `{_shape(kind.output)}` | dtype the inputs promote to |")
    rows.append(f"| returns `final_state` | `{_shape(kind.state)}` | state after the last step |")
    lines = ["\n".join(rows), ""]
    if kind.divides:
        rule = ", ".join(f"`{a}` divides `{b}`" for a, b in kind.divides)
        lines.append(f"Shape rule: {rule}.")
    if kind.domain:
        lines.append(f"Domain: `{kind.domain}`.")
    lines.append(f"\nSignature: `{kind.signature()}`")
    return "\n".join(lines) + "\n"


def _kinds_table(kinds) -> str:
    rows = ["| kind | what | inputs, in order | state |", "| --- | --- | --- | --- |"]
    for name, kind in kinds.items():
        inputs = ", ".join(f"`{i.name}`" for i in kind.inputs)
        rows.append(
            f'| [`"{name}"`]({name}.md) | {kind.summary} | {inputs} | `{_shape(kind.state)}` |'
        )
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown, page, config, files):
    from recurops import KINDS

    def replace(match):
        if match[1] == "kinds":
            return _kinds_table(KINDS)
        name = match[2]
        if name not in KINDS:
            raise PluginError(f"{page.file.src_uri}: unknown recurops kind {name!r}")
        _seen.add(name)
        return _kind_table(KINDS[name])

    return _MARK.sub(replace, markdown)


def on_post_build(config):
    from recurops import KINDS

    missing = sorted(set(KINDS) - _seen)
    if missing:
        log.warning("no docs page has a <!-- recurops:kind --> table for: %s", missing)

"""Every ``python`` code block of the documentation pages this suite vouches for runs.

The blocks on the kind pages are the convention mappings users copy when
porting a model, so they are executed here (the mappings themselves are
checked numerically by the other test files). Blocks fenced as ``py`` or
``text`` are illustrations and are not run.
"""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
#: the pages whose examples this suite vouches for (other pages are their authors' to test)
PAGES = [
    "index.md", "getting-started.md", "paths.md", "numerics.md", "interop.md",
    "conformance.md", "reference.md", "kinds/*.md",
]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    for page in sorted({p for pattern in PAGES for p in DOCS.glob(pattern)}):
        for i, match in enumerate(BLOCK.finditer(page.read_text())):
            yield pytest.param(match[1], id=f"{page.relative_to(DOCS)}-{i}")


@pytest.mark.parametrize("code", list(_blocks()))
def test_example_runs(code):
    for module in ("torch",):
        if re.search(rf"^import {module}\b", code, re.M):
            pytest.importorskip(module)
    exec(compile(code, "<docs example>", "exec"), {"__name__": "__docs__"})

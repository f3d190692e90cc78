"""The README's example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).parents[1] / "README.md"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if b.startswith("import"))
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["y1"].shape == (2, 1, 1024)
    assert namespace["o"].shape == (2, 256, 8, 64)

"""Every ``python`` code block in README.md and docs/ runs as written (from the repository root)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BLOCKS = [
    pytest.param(page, index, code, id=f"{page.relative_to(ROOT)}#{index}")
    for page in PAGES
    for index, code in enumerate(BLOCK.findall(page.read_text()))
]


def test_the_docs_have_examples() -> None:
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize(("page", "index", "code"), BLOCKS)
def test_example_runs(page: Path, index: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(ROOT / "models")  # examples name the shipped models by relative path
    exec(compile(code, f"{page.name} example {index}", "exec"), {"__name__": "docs_example"})  # noqa: S102

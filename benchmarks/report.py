"""Write a benchmark's results into its own section of docs/benchmarks.md, with machine details."""

from __future__ import annotations

import os
import platform
import re
from importlib.metadata import version
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\nEach section is written by the script it names; rerun it to refresh. Ratios compare\n"
    "peers measured in the same run on the same machine.\n"
)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = ", ".join(f"{p} {version(p)}" for p in ("torch", "onnx", "onnxruntime", "numpy", "numba"))
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; {packages}"


def write_section(name: str, body: str) -> None:
    text = DOC.read_text() if DOC.exists() else HEADER
    section = f"<!-- {name}:start -->\n{body.rstrip()}\n\nMachine: {machine()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else f"{text.rstrip()}\n\n{section}\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)

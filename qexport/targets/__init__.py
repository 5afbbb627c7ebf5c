"""Targets are data files (``*.toml`` here, or any path): what the hardware offers.

Every target file is checked against ``target.schema.json`` (and for NaN/infinite numbers, which
JSON Schema cannot express) when it is loaded; errors name the file and the field.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from qexport.errors import TargetError
from qexport.validation import schema_problem, schema_validator

POST_MACS = ("lut", "split")
NATIVE_BITS = (2, 4, 8, 16)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    onnx_native_bits: tuple[int, ...]
    max_acc_bits: int
    weight_formats: tuple[str, ...]
    raw: dict[str, Any]
    post_mac: str = "lut"  # powers-of-sqrt(2) weights: "lut" (shift + LUT) or "split" (two accumulators)
    source: str = ""  # the file it came from (or "target 'fpga'"), for error messages


def available_targets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("qexport.targets").iterdir() if p.name.endswith(".toml"))


def _read_target_text(name_or_path: str) -> tuple[str, str]:
    """(TOML text, where it came from) for a shipped target name or a path to a .toml file."""
    path = Path(name_or_path)
    if name_or_path in available_targets() and not path.is_file():
        text = resources.files("qexport.targets").joinpath(f"{name_or_path}.toml").read_text()
        return text, f"target {name_or_path!r}"
    if path.suffix != ".toml" and not path.is_file():
        raise TargetError(
            f"unknown target {name_or_path!r} (available: {', '.join(available_targets())}, or a .toml path)"
        )
    try:
        return path.read_bytes().decode("utf-8"), str(path)
    except FileNotFoundError:
        raise TargetError(f"{path}: no such target file") from None
    except IsADirectoryError:
        raise TargetError(f"{path}: is a directory, expected a target .toml file") from None
    except OSError as error:
        raise TargetError(f"{path}: cannot read target file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise TargetError(f"{path}: target file is not UTF-8 text (byte {error.start})") from None


def load_target(name_or_path: str) -> Target:
    """Load a shipped target by name, or a target file by path."""
    text, where = _read_target_text(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TargetError(f"{where}: invalid TOML ({error})") from None
    except RecursionError:
        raise TargetError(f"{where}: nested too deeply") from None
    problem = schema_problem(schema_validator("qexport.targets", "target.schema.json"), data)
    if problem is not None:
        raise TargetError(f"{where}: {problem}")
    export = data["export"]
    return Target(
        name=data["name"],
        description=data.get("description", ""),
        onnx_native_bits=tuple(sorted(export["onnx_native_bits"])),
        max_acc_bits=export["max_acc_bits"],
        weight_formats=tuple(export["weight_formats"]),
        raw=data,
        post_mac=export.get("post_mac", "lut"),
        source=where,
    )


def with_native_bits(target: Target, text: str) -> Target:
    """Override ``export.onnx_native_bits`` from a comma-separated list such as ``2,4,8,16``."""
    try:
        bits = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise TargetError(f"--onnx-native-bits {text!r}: expected comma-separated widths, e.g. 2,4,8,16") from None
    if not bits or not set(bits) <= set(NATIVE_BITS):
        raise TargetError(f"--onnx-native-bits {text!r}: widths must be among 2, 4, 8, 16")
    return replace(target, onnx_native_bits=bits)


def with_post_mac(target: Target, post_mac: str) -> Target:
    if post_mac not in POST_MACS:
        raise TargetError(f"--post-mac {post_mac!r}: expected lut or split")
    return replace(target, post_mac=post_mac)

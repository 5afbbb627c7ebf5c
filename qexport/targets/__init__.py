"""Targets are data files (``*.toml`` here, or any path): what the hardware offers."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from qexport.errors import TargetError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    onnx_native_bits: tuple[int, ...]
    max_acc_bits: int
    weight_formats: tuple[str, ...]
    raw: dict[str, Any]
    post_mac: str = "lut"  # powers-of-sqrt(2) weights: "lut" (shift + LUT) or "split" (two accumulators)


def available_targets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("qexport.targets").iterdir() if p.name.endswith(".toml"))


def load_target(name_or_path: str) -> Target:
    """Load a shipped target by name, or a target file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text, where = path.read_text(), str(path)
    elif name_or_path in available_targets():
        text = resources.files("qexport.targets").joinpath(f"{name_or_path}.toml").read_text()
        where = f"target {name_or_path!r}"
    else:
        raise TargetError(
            f"unknown target {name_or_path!r} (available: {', '.join(available_targets())}, or a .toml path)"
        )
    try:
        data = tomllib.loads(text)
        export = data["export"]
        target = Target(
            name=str(data["name"]),
            description=str(data.get("description", "")),
            onnx_native_bits=tuple(int(b) for b in export["onnx_native_bits"]),
            max_acc_bits=int(export["max_acc_bits"]),
            weight_formats=tuple(export["weight_formats"]),
            raw=data,
            post_mac=str(export.get("post_mac", "lut")),
        )
    except tomllib.TOMLDecodeError as error:
        raise TargetError(f"{where}: invalid TOML ({error})") from None
    except (KeyError, TypeError, ValueError) as error:
        raise TargetError(f"{where}: missing or malformed field {error}") from None
    if not 8 <= target.max_acc_bits <= 64:
        raise TargetError(f"{where}: export.max_acc_bits must be in 8..64")
    if target.post_mac not in ("lut", "split"):
        raise TargetError(f"{where}: export.post_mac must be \"lut\" or \"split\"")
    return target


def with_native_bits(target: Target, text: str) -> Target:
    """Override ``export.onnx_native_bits`` from a comma-separated list such as ``2,4,8,16``."""
    try:
        bits = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise TargetError(f"--onnx-native-bits {text!r}: expected comma-separated widths, e.g. 2,4,8,16") from None
    if not bits or not set(bits) <= {2, 4, 8, 16}:
        raise TargetError(f"--onnx-native-bits {text!r}: widths must be among 2, 4, 8, 16")
    return replace(target, onnx_native_bits=bits)


def with_post_mac(target: Target, post_mac: str) -> Target:
    if post_mac not in ("lut", "split"):
        raise TargetError(f"--post-mac {post_mac!r}: expected lut or split")
    return replace(target, post_mac=post_mac)

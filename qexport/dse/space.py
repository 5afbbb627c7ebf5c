"""SPACE.toml: the quantization axes (sampled by Optuna) and the hardware grid (enumerated), validated.

Every problem in the file is reported at once, on one line, each naming its field
(``space.toml: field quantization.trials: 0 is less than the minimum of 1; field hardware.target.0: ...``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from qexport.errors import QExportError
from qexport.validation import first_non_finite, schema_validator

QUANT_AXES = ("method", "weight_bits", "act_bits", "first_bits", "last_bits", "post_mac")
AXIS_DEFAULTS: dict[str, list[Any]] = {
    "weight_bits": [4],
    "act_bits": [4],
    "first_bits": [8],
    "last_bits": [8],
    "post_mac": ["lut"],
}
SRAM_AXES = ("ifmap_sram_bytes", "filter_sram_bytes", "ofmap_sram_bytes")
SYSTOLIC_AXES = ("array", "dataflow", *SRAM_AXES)
TRAINED_FLOAT = "train_float(seed 0)"  # the float model when the space names no float weights


class SpaceError(QExportError):
    """A SPACE.toml that cannot be read or fails its schema (the message names every bad field)."""


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class TrialConfig:
    """One quantization choice: everything that determines the quantized model (and so its accuracy)."""

    method: str
    weight_bits: int
    act_bits: int
    first_bits: int
    last_bits: int
    post_mac: str | None  # only for powers-of-sqrt(2) weights
    epochs: int  # 0 for PTQ methods
    lr: float
    seed: int
    train_samples: int
    float_sha256: str
    float_weights: str | None = field(default=None, compare=False)  # where to read them (not part of the key)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("float_weights")
        return data

    @property
    def key(self) -> str:
        return canonical(self.to_dict())

    @property
    def label(self) -> str:
        mac = f" {self.post_mac}" if self.post_mac else ""
        return f"{self.method} W{self.weight_bits}A{self.act_bits} ({self.first_bits}/{self.last_bits}){mac}"


@dataclass(frozen=True)
class HardwarePoint:
    """One hardware configuration: a target plus overrides (None keeps the target file's value)."""

    target: str  # shipped name or absolute path of a target file
    model: str  # systolic | vector
    array: str | None = None
    dataflow: str | None = None
    ifmap_sram_bytes: int | None = None
    filter_sram_bytes: int | None = None
    ofmap_sram_bytes: int | None = None
    clock_mhz: float | None = None
    batch: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        return canonical(self.to_dict())

    @property
    def target_name(self) -> str:
        return Path(self.target).stem if self.target.endswith(".toml") else self.target

    @property
    def label(self) -> str:
        parts = [self.target_name, self.array, self.dataflow]
        srams = [getattr(self, name) for name in SRAM_AXES]
        if len(set(srams)) == 1 and srams[0] is not None:
            parts.append(f"sram {_size(srams[0])}")
        elif any(size is not None for size in srams):
            parts.append("sram " + "/".join(_size(size) if size else "-" for size in srams))
        if self.clock_mhz is not None:
            parts.append(f"{self.clock_mhz:g} MHz")
        return " ".join(part for part in parts if part)


@dataclass(frozen=True)
class Selection:
    """How the best point is chosen from the front: the lowest ``minimize`` among points with at least
    ``min_accuracy`` (default: the most accurate points); ties go to accuracy, then the other objectives."""

    min_accuracy: float | None = None
    minimize: str = "energy"


@dataclass(frozen=True)
class Space:
    name: str
    source: Path
    seed: int
    sampler: str
    trials: int
    population: int
    epochs: int
    lr: float
    train_samples: int
    float_weights: str | None
    float_sha256: str
    axes: dict[str, tuple[Any, ...]]
    hardware: tuple[HardwarePoint, ...]
    select: Selection

    def all_trials(self) -> list[TrialConfig]:
        """Every distinct trial of the quantization grid (choices that do not matter are merged)."""
        configs: dict[str, TrialConfig] = {}
        for values in itertools.product(*self.axes.values()):
            config = self.trial_config(dict(zip(self.axes, values, strict=True)))
            configs.setdefault(config.key, config)
        return list(configs.values())

    def trial_config(self, params: dict[str, Any]) -> TrialConfig:
        """The (normalised) trial for one choice per quantization axis."""
        from qexport.methods import METHODS

        method = METHODS[params["method"]]
        ptq = method.procedure == "ptq"
        return TrialConfig(
            method=method.name,
            weight_bits=int(params["weight_bits"]),
            act_bits=int(params["act_bits"]),
            first_bits=int(params["first_bits"]),
            last_bits=int(params["last_bits"]),
            post_mac=params["post_mac"] if method.weight_method == "post" else None,
            epochs=0 if ptq else self.epochs,
            lr=0.0 if ptq else self.lr,
            seed=self.seed,
            train_samples=self.train_samples,
            float_sha256=self.float_sha256,
            float_weights=self.float_weights,
        )

    def contains(self, config: dict[str, Any]) -> bool:
        """Whether a stored trial config is one this space can produce (used to resume)."""
        try:
            params = {axis: config[axis] for axis in QUANT_AXES}
            params["post_mac"] = params["post_mac"] or self.axes["post_mac"][0]
            if any(params[axis] not in self.axes[axis] for axis in QUANT_AXES):
                return False
            return self.trial_config(params).to_dict() == config
        except (KeyError, TypeError):
            return False

    def params_of(self, config: dict[str, Any]) -> dict[str, Any]:
        params = {axis: config[axis] for axis in QUANT_AXES}
        params["post_mac"] = params["post_mac"] or self.axes["post_mac"][0]
        return params


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such space file") from None
    except IsADirectoryError:
        raise SpaceError(f"{path}: is a directory, expected a SPACE.toml file") from None
    except OSError as error:
        raise SpaceError(f"{path}: cannot read ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise SpaceError(f"{path}: not UTF-8 text (byte {error.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpaceError(f"{path}: invalid TOML ({error})") from None
    except RecursionError:
        raise SpaceError(f"{path}: nested too deeply") from None


def schema_problems(data: Any) -> list[str]:
    """Every schema violation (and non-finite number), each as ``field a.b: what is wrong``."""
    validator = schema_validator("qexport.dse", "space.schema.json")
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(part) for part in error.absolute_path)
        problems.append(f"field {where}: {error.message}" if where else error.message)
    bad = first_non_finite(data)
    if bad is not None:
        problems.append(f"field {bad}: must be a finite number")
    return problems


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resolve_target(name: str, base: Path) -> str:
    from qexport.targets import available_targets

    if name in available_targets() and not (base / name).is_file():
        return name
    return str((base / name).resolve())


def _hardware_points(hardware: dict[str, Any], base: Path, problems: list[str]) -> list[HardwarePoint]:
    from hwsim.cost.targets import hardware_of
    from qexport.targets import load_target

    points: list[HardwarePoint] = []
    axes = {name: hardware.get(name, [None]) for name in (*SYSTOLIC_AXES, "clock_mhz")}
    if "sram_bytes" in hardware:  # one size for the three buffers
        clash = [name for name in SRAM_AXES if name in hardware]
        if clash:
            problems.append(f"field hardware.sram_bytes: sets every buffer; remove hardware.{clash[0]} or it")
        axes.update({name: [None] for name in SRAM_AXES}, sram=hardware["sram_bytes"])
    for index, name in enumerate(hardware["target"]):
        try:
            resolved = _resolve_target(name, base)
            model = hardware_of(load_target(resolved)).model
        except QExportError as error:
            problems.append(f"field hardware.target.{index}: {error}")
            continue
        used = (*SYSTOLIC_AXES, "clock_mhz", "sram") if model == "systolic" else ("clock_mhz",)
        for values in itertools.product(*(axes.get(axis, [None]) for axis in used)):
            chosen = dict(zip(used, values, strict=True))
            sram = chosen.pop("sram", None)
            if sram is not None:
                chosen.update({name: sram for name in SRAM_AXES})
            point = HardwarePoint(resolved, model, batch=hardware.get("batch", 1), **chosen)
            if point not in points:
                points.append(point)
    return points


def _semantic_problems(data: dict[str, Any]) -> list[str]:
    from qexport.methods import METHODS

    problems = []
    for index, method in enumerate(data["quantization"]["method"]):
        if method not in METHODS:
            problems.append(
                f"field quantization.method.{index}: unknown method {method!r} (known: {', '.join(METHODS)})"
            )
    return problems


def load_space(path: Path | str) -> Space:
    """Parse and validate SPACE.toml; paths in it are relative to the file."""
    path = Path(path)
    data = _read(path)
    problems = schema_problems(data)
    if problems:
        raise SpaceError(f"{path}: " + "; ".join(problems))
    problems = _semantic_problems(data)
    base = path.resolve().parent
    float_weights, float_sha = None, TRAINED_FLOAT
    if "float_weights" in data:
        weights = base / data["float_weights"]
        if weights.is_file():
            float_weights, float_sha = str(weights), _sha256(weights)
        else:
            problems.append(f"field float_weights: {weights}: no such file")
    points = _hardware_points(data["hardware"], base, problems)
    if problems:
        raise SpaceError(f"{path}: " + "; ".join(problems))
    quant, select = data["quantization"], data.get("select", {})
    axes = {axis: tuple(quant.get(axis, AXIS_DEFAULTS.get(axis))) for axis in QUANT_AXES}
    space = Space(
        name=data.get("name", path.stem),
        source=path,
        seed=data.get("seed", 1),
        sampler=quant.get("sampler", "nsga2"),
        trials=quant.get("trials", 0),
        population=quant.get("population", 8),
        epochs=quant.get("epochs", 2),
        lr=float(quant.get("lr", 2e-3)),
        train_samples=quant.get("train_samples", 100_000),
        float_weights=float_weights,
        float_sha256=float_sha,
        axes=axes,
        hardware=tuple(points),
        select=Selection(select.get("min_accuracy"), select.get("minimize", "energy")),
    )
    distinct = len(space.all_trials())
    return replace(space, trials=min(space.trials or distinct, distinct))

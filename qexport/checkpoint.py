"""QAT checkpoints: a safetensors file whose metadata names the architecture and quant config.

Loading never unpickles: safetensors holds raw tensors, and anything else is refused
with a one-line CheckpointError naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import fx

from qexport.errors import CheckpointError, QExportError
from qexport.frontend.prepare import prepare_qat
from qexport.quant.config import QuantConfig
from qexport.zoo import build

FORMAT_KEY = "qexport_checkpoint"
FORMAT_VERSION = "1"
PICKLE_SIGNATURES = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, zip (torch.save)


@dataclass
class Checkpoint:
    architecture: str
    arch_kwargs: dict[str, Any]
    config: QuantConfig
    model: fx.GraphModule
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.info["input_shape"])


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    state = {key: value.detach().contiguous() for key, value in checkpoint.model.state_dict().items()}
    metadata = {
        FORMAT_KEY: FORMAT_VERSION,
        "architecture": checkpoint.architecture,
        "arch_kwargs": json.dumps(checkpoint.arch_kwargs),
        "quant_config": json.dumps(checkpoint.config.to_dict()),
        "info": json.dumps(checkpoint.info),
    }
    save_file(state, str(path), metadata=metadata)


def _refuse_pickle(path: Path, head: bytes) -> None:
    """Stop before anything else reads a pickle or torch.save file (their loading can run code)."""
    if head.startswith(PICKLE_SIGNATURES):
        raise CheckpointError(
            f"{path}: this is a pickle/torch.save file; qexport never unpickles, save with safetensors"
        )


def _read_header(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            _refuse_pickle(path, head)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated (no safetensors header)")
            size = int.from_bytes(head, "little")
            if size > 100_000_000:
                raise CheckpointError(f"{path}: not a safetensors checkpoint (header size {size})")
            header = json.loads(handle.read(size))
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt or not a safetensors checkpoint (bad header)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get(FORMAT_KEY) != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: a safetensors file, but not a qexport checkpoint (metadata {FORMAT_KEY} missing)"
        )
    return metadata


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Rebuild the prepared QAT model and load its weights (no pickled code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    metadata = _read_header(path)
    try:
        arch_kwargs = json.loads(metadata["arch_kwargs"])
        config = QuantConfig.from_dict(json.loads(metadata["quant_config"]))
        info = json.loads(metadata.get("info", "{}"))
        architecture = metadata["architecture"]
    except (KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: malformed checkpoint metadata ({error})") from None
    except QExportError as error:
        raise CheckpointError(f"{path}: {error}") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: corrupt or truncated tensor data ({error})") from None
    try:
        model = prepare_qat(build(architecture, **arch_kwargs), config)
    except QExportError as error:
        raise CheckpointError(f"{path}: {error}") from None
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise CheckpointError(
            f"{path}: state does not match architecture {architecture!r} (keys {sorted(missing)[:3]})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path}: state does not match architecture {architecture!r} ({first})") from None
    model.eval()
    if "input_shape" not in info:
        info["input_shape"] = list(
            getattr(model, "input_shape", None) or build(architecture, **arch_kwargs).input_shape
        )
    return Checkpoint(architecture, arch_kwargs, config, model, info)


def checkpoint_from_model(
    model: fx.GraphModule, architecture: str, arch_kwargs: dict[str, Any], config: QuantConfig, **info: Any
) -> Checkpoint:
    info.setdefault("input_shape", list(build(architecture, **arch_kwargs).input_shape))
    return Checkpoint(architecture, arch_kwargs, config, model, info)


FLOAT_KEY = "qexport_float_weights"


def save_float_weights(path: Path, model: Any, architecture: str, arch_kwargs: dict[str, Any], **info: Any) -> None:
    """A trained float model (before quantization) as safetensors; every method can start from it."""
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    metadata = {
        FLOAT_KEY: FORMAT_VERSION,
        "architecture": architecture,
        "arch_kwargs": json.dumps(arch_kwargs),
        "info": json.dumps(info),
    }
    save_file(state, str(path), metadata=metadata)


def load_float_weights(path: Path | str) -> tuple[Any, str, dict[str, Any]]:
    """(float model in eval mode, architecture, info) from ``save_float_weights`` (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such float weights file")
    try:
        with path.open("rb") as handle:
            _refuse_pickle(path, handle.read(8))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get(FLOAT_KEY) != FORMAT_VERSION:
            raise CheckpointError(f"{path}: not a qexport float weights file (metadata {FLOAT_KEY} missing)")
        architecture, arch_kwargs = metadata["architecture"], json.loads(metadata["arch_kwargs"])
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: corrupt float weights ({error})") from None
    model = build(architecture, **arch_kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path}: weights do not match architecture {architecture!r} ({first})") from None
    return model.eval(), architecture, json.loads(metadata.get("info", "{}"))

"""QAT checkpoints: a safetensors file whose metadata names the architecture and quant config.

Loading never unpickles: safetensors holds raw tensors, and anything else is refused
with a one-line CheckpointError naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import fx

from qexport.errors import CheckpointError, QExportError
from qexport.frontend.prepare import prepare_qat
from qexport.quant.config import QuantConfig
from qexport.validation import schema_problem, schema_validator
from qexport.zoo import build

FORMAT_KEY = "qexport_checkpoint"
FORMAT_VERSION = "1"
MAX_PARAMETERS = 50_000_000  # ResNet-18 has 11.7 M; larger metadata is refused before building
MAX_HEADER_BYTES = 100_000_000  # safetensors itself refuses larger headers


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


def _sniff(path: Path, handle: BinaryIO) -> int:
    """Length of the safetensors JSON header, after telling pickles and zip files apart by their signatures.

    A safetensors file is an 8-byte little-endian header length N, then N bytes of JSON starting with
    ``{``, then the tensor data. Pickles (protocol 2+: ``\\x80`` and a protocol byte 2-5) and torch.save
    zip archives are refused before anything reads them: loading either can run code.
    """
    head = handle.read(9)
    size = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    file_size = os.fstat(handle.fileno()).st_size
    if len(head) == 9 and head[8:9] == b"{" and 2 <= size <= min(MAX_HEADER_BYTES, file_size - 8):
        handle.seek(8)
        return size
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise CheckpointError(
            f"{path}: this is a pickle/torch.save file; qexport never unpickles, save with safetensors"
        )
    if len(head) < 9:
        raise CheckpointError(f"{path}: truncated (no safetensors header)")
    if head[8:9] == b"{" and size > file_size - 8:
        raise CheckpointError(f"{path}: truncated safetensors header ({size} bytes declared, file has {file_size})")
    raise CheckpointError(f"{path}: not a safetensors checkpoint (no header)")


def _read_json(text: bytes | str, what: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: {what} is not valid JSON") from None
    except RecursionError:
        raise CheckpointError(f"{path}: {what} is nested too deeply") from None


def _read_header(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as handle:
            size = _sniff(path, handle)
            header = _read_json(handle.read(size), "corrupt checkpoint: the safetensors header", path)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get(FORMAT_KEY) != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: a safetensors file, but not a qexport checkpoint (metadata {FORMAT_KEY} missing)"
        )
    return metadata


def _decode_metadata(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The metadata strings, JSON-decoded where they hold JSON, checked against the metadata schema."""
    decoded: dict[str, Any] = dict(metadata)
    for key in ("arch_kwargs", "quant_config", "info"):
        if key in metadata:
            decoded[key] = _read_json(metadata[key], f"malformed checkpoint metadata: field {key!r}", path)
    problem = schema_problem(schema_validator("qexport", "checkpoint_metadata.schema.json"), decoded)
    if problem is not None:
        raise CheckpointError(f"{path}: malformed checkpoint metadata: {problem}")
    return decoded


def _parameter_count(architecture: str, arch_kwargs: dict[str, Any]) -> int:
    """Parameters of the architecture, counted on torch's meta device (nothing is allocated)."""
    with torch.device("meta"):
        return sum(tensor.numel() for tensor in build(architecture, **arch_kwargs).state_dict().values())


def _check_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values")


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Rebuild the prepared QAT model and load its weights (no pickled code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    metadata = _decode_metadata(path, _read_header(path))
    architecture, arch_kwargs = metadata["architecture"], metadata["arch_kwargs"]
    info = metadata.get("info", {})
    try:
        config = QuantConfig.from_dict(metadata["quant_config"])
        if _parameter_count(architecture, arch_kwargs) > MAX_PARAMETERS:
            raise CheckpointError(
                f"architecture {architecture!r} with {arch_kwargs} has over {MAX_PARAMETERS:,} parameters"
            )
        float_model = build(architecture, **arch_kwargs)
        expected_shape = list(float_model.input_shape)
        model = prepare_qat(float_model, config)
    except QExportError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if info.setdefault("input_shape", expected_shape) != expected_shape:
        raise CheckpointError(
            f"{path}: info.input_shape {info['input_shape']} does not match architecture {architecture!r} "
            f"with {arch_kwargs} (input {expected_shape})"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: corrupt or truncated tensor data ({error})") from None
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise CheckpointError(
            f"{path}: state does not match architecture {architecture!r} (keys {sorted(missing)[:3]})"
        )
    _check_state(path, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path}: state does not match architecture {architecture!r} ({first})") from None
    model.eval()
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
            _sniff(path, handle)
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

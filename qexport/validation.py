"""Schema checks for external inputs (checkpoint metadata, targets, method options): one way, one message form."""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from typing import Any

import jsonschema


@cache
def schema_validator(package: str, filename: str) -> jsonschema.protocols.Validator:
    """The validator of a JSON Schema file shipped in ``package``."""
    schema = json.loads(resources.files(package).joinpath(filename).read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def first_non_finite(data: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinite number in ``data`` (JSON Schema cannot say "finite")."""
    if isinstance(data, float) and not math.isfinite(data):
        return path or "(value)"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = first_non_finite(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def schema_problem(validator: jsonschema.protocols.Validator, data: Any) -> str | None:
    """``field a.b: what is wrong`` for the first violation (or a non-finite number), None when valid."""
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    except RecursionError:
        return "nested too deeply"
    if error is not None:
        field = ".".join(str(part) for part in error.absolute_path)
        return f"field {field}: {error.message}" if field else error.message
    bad = first_non_finite(data)
    return None if bad is None else f"field {bad}: must be a finite number"

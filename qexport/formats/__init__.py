"""Weight number formats, one module each, looked up by name."""

from __future__ import annotations

from types import ModuleType

from qexport.errors import GraphError
from qexport.formats import apot, codebook, int_affine, post, pot

FORMATS: dict[str, ModuleType] = {m.name: m for m in (int_affine, pot, post, apot, codebook)}


def get_format(name: str) -> ModuleType:
    try:
        return FORMATS[name]
    except KeyError:
        raise GraphError(f"unknown weight format {name!r} (known: {', '.join(FORMATS)})") from None

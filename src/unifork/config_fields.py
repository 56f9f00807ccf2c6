"""The one check every config dataclass runs on a table read from TOML or JSON (model, image tokenizer, recipe).

Every key must be a field, every value of the field's type; a mistake is a one-line error naming the key, never a
silent default. Ranges are each config's own business (its __post_init__ or loader).
"""

from __future__ import annotations

import math
from dataclasses import fields

from unifork.errors import UserError

# field type (as written in the dataclass) -> (accepts, what the error calls it)
_TYPES = {
    "int": (lambda v: type(v) is int, "int"),
    "float": (lambda v: type(v) in (int, float), "float"),
    "str": (lambda v: isinstance(v, str), "str"),
    "bool": (lambda v: isinstance(v, bool), "bool"),
    "dict": (lambda v: isinstance(v, dict), "a table"),
    "tuple": (lambda v: isinstance(v, list | tuple), "a list"),
    "tuple[int, ...]": (lambda v: isinstance(v, list | tuple) and len(v) > 0 and all(type(x) is int for x in v),
                        "a non-empty list of integers"),
    "tuple[float, ...]": (lambda v: isinstance(v, list | tuple) and len(v) > 0 and all(type(x) in (int, float) for x in v),
                          "a non-empty list of numbers"),
}


def checked_fields(table, cls, where: str, non_negative: bool = False) -> dict:
    """`table` as keyword arguments for dataclass `cls`, lists turned into the tuples the fields hold.

    `non_negative`: every number must also be finite and >= 0 (recipes: all their counts and rates are).
    """
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table of keys (a JSON object), got {type(table).__name__}")
    known = {f.name: f.type for f in fields(cls)}
    out = {}
    for key, value in table.items():
        if key not in known:
            raise UserError(f"unknown key '{key}' in {where}; known keys: {', '.join(known)}")
        accepts, want = _TYPES[known[key]]
        if not accepts(value):
            raise UserError(f"'{key}' in {where} must be {want}, got {value!r}")
        if non_negative and known[key] in ("int", "float") and not 0 <= value < math.inf:
            raise UserError(f"'{key}' in {where} must be a finite number >= 0, got {value!r}")
        out[key] = tuple(value) if known[key].startswith("tuple") else value
    return out

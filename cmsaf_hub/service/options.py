"""Cluster options as data: which fields a user may set, their bounds and choices, per hub group.

The schema is configuration (``ClusterOptions.fields`` and ``ClusterOptions.group_overrides``);
``resolve_fields`` merges it for one user's groups, ``validate_options`` checks a request against
the merged fields, and ``fields_schema`` renders them as JSON Schema for ``GET /options`` and the
OpenAPI document. All three are pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from traitlets import Dict, List
from traitlets.config import Configurable


class OptionsError(ValueError):
    """A request's options are invalid; the message names the option and is safe to return."""


@dataclass(frozen=True)
class OptionField:
    """One user-settable cluster option."""

    name: str
    kind: str  # "integer" | "number" | "string"
    default: Any
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    nullable: bool = False

    @classmethod
    def from_config(cls, spec: dict) -> "OptionField":
        spec = dict(spec)
        if spec.get("choices") is not None:
            spec["choices"] = tuple(spec["choices"])
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"option field {spec.get('name')!r}: unknown keys {sorted(unknown)}")
        return cls(**spec)


DEFAULT_FIELDS: list[dict] = [
    {"name": "workers", "kind": "integer", "default": 0, "minimum": 0, "maximum": 50,
     "help": "Number of workers to start with"},
    {"name": "cores", "kind": "integer", "default": 1, "minimum": 1, "maximum": 8,
     "help": "Cores (threads) per worker"},
    {"name": "memory", "kind": "number", "default": 2.0, "minimum": 0.5, "maximum": 16.0,
     "help": "Memory per worker, GiB"},
    {"name": "image", "kind": "string", "default": None, "nullable": True, "choices": (None,),
     "help": "Container image of the workers (backends that run containers)"},
    {"name": "site", "kind": "string", "default": None, "nullable": True, "choices": (None,),
     "help": "Where the workers run (backends with several sites)"},
]


class ClusterOptions(Configurable):
    """The cluster options users may set, with bounds and choices per hub group."""

    fields = List(
        Dict(),
        default_value=DEFAULT_FIELDS,
        help="""Option fields, each a dict with keys name, kind ("integer", "number" or "string"),
        default, help, minimum, maximum, choices (a list; null allowed if nullable) and nullable.
        The names "workers", "cores" and "memory" (GiB per worker) are what quotas count.""",
    ).tag(config=True)

    group_overrides = Dict(
        default_value={},
        help="""Per hub group changes to fields: {group: {field_name: {"maximum": 100, ...}}}.
        A user in several groups gets, per field, the largest maximum, the smallest minimum and
        the union of choices of the overrides that apply.""",
    ).tag(config=True)

    def for_groups(self, groups: list[str]) -> list[OptionField]:
        base = [OptionField.from_config(f) for f in self.fields]
        return resolve_fields(base, self.group_overrides, groups)


def resolve_fields(
    base: list[OptionField], overrides: dict[str, dict[str, dict]], groups: list[str]
) -> list[OptionField]:
    """Apply the overrides of ``groups`` to ``base`` (most permissive wins across groups)."""
    result = []
    for f in base:
        applicable = [overrides[g][f.name] for g in sorted(groups) if f.name in overrides.get(g, {})]
        if not applicable:
            result.append(f)
            continue
        changes: dict[str, Any] = {}
        maxima = [o["maximum"] for o in applicable if "maximum" in o]
        minima = [o["minimum"] for o in applicable if "minimum" in o]
        if maxima:
            changes["maximum"] = max(maxima)
        if minima:
            changes["minimum"] = min(minima)
        choice_lists = [o["choices"] for o in applicable if "choices" in o]
        if choice_lists:
            merged = list(f.choices or ())
            for choices in choice_lists:
                merged += [c for c in choices if c not in merged]
            changes["choices"] = tuple(merged)
        defaults = [o["default"] for o in applicable if "default" in o]
        if defaults:
            changes["default"] = defaults[0]
        result.append(replace(f, **changes))
    return result


def _check_value(f: OptionField, value: Any) -> Any:
    if value is None:
        if f.nullable:
            return None
        raise OptionsError(f"option {f.name!r} must not be null")
    if f.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
                value = int(value)
            else:
                raise OptionsError(f"option {f.name!r} must be an integer")
    elif f.kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise OptionsError(f"option {f.name!r} must be a number")
        value = float(value)
    elif f.kind == "string":
        if not isinstance(value, str):
            raise OptionsError(f"option {f.name!r} must be a string")
    if f.minimum is not None and value < f.minimum:
        raise OptionsError(f"option {f.name!r} must be at least {f.minimum}")
    if f.maximum is not None and value > f.maximum:
        raise OptionsError(f"option {f.name!r} must be at most {f.maximum}")
    if f.choices is not None and value not in f.choices:
        allowed = ", ".join(repr(c) for c in f.choices)
        raise OptionsError(f"option {f.name!r} must be one of {allowed}")
    return value


def validate_options(fields: list[OptionField], requested: Any) -> dict[str, Any]:
    """Check ``requested`` (the parsed request body's options) and fill in defaults."""
    if requested is None:
        requested = {}
    if not isinstance(requested, dict):
        raise OptionsError("options must be a JSON object")
    by_name = {f.name: f for f in fields}
    unknown = sorted(set(requested) - set(by_name))
    if unknown:
        raise OptionsError(f"unknown option {unknown[0]!r}; known: {', '.join(by_name)}")
    return {
        f.name: _check_value(f, requested[f.name]) if f.name in requested else f.default
        for f in fields
    }


def field_schema(f: OptionField) -> dict[str, Any]:
    """JSON Schema of one field's value."""
    schema: dict[str, Any] = {"type": [f.kind, "null"] if f.nullable else f.kind}
    if f.help:
        schema["description"] = f.help
    if f.default is not None:
        schema["default"] = f.default
    if f.minimum is not None:
        schema["minimum"] = f.minimum
    if f.maximum is not None:
        schema["maximum"] = f.maximum
    if f.choices is not None:
        schema["enum"] = list(f.choices)
    return schema


def fields_schema(fields: list[OptionField]) -> dict[str, Any]:
    """JSON Schema of the options object (``GET /options`` and the OpenAPI document)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {f.name: field_schema(f) for f in fields},
    }

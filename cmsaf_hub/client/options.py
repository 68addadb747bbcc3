"""Client-side validation of cluster options against the JSON Schema the service serves at ``/options``.

The service publishes (``cmsaf_hub.service.options.fields_schema``)::

    {"type": "object", "additionalProperties": false,
     "properties": {"cores": {"type": "integer", "minimum": 1, "maximum": 8, "default": 1},
                    "image": {"type": ["string", "null"], "enum": [null, "cms:el9"]}, ...}}

This module understands the subset used there: ``type`` (``integer``, ``number``, ``string``,
``boolean``, optionally with ``"null"``), ``minimum``, ``maximum`` and ``enum``. Checking here gives
an error naming the bad option and what it accepts before any request is made; the service checks
again regardless.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any

from .errors import OptionsError

OptionsSchema = Mapping[str, Any]


def _types(spec: Mapping[str, Any]) -> list[str]:
    kind = spec.get("type", "string")
    return list(kind) if isinstance(kind, list) else [kind]


def describe(spec: Mapping[str, Any]) -> str:
    """Human words for what one property accepts, used in every error message."""
    types = _types(spec)
    if "enum" in spec:
        return "one of " + ", ".join("None" if v is None else repr(v) for v in spec["enum"])
    nouns = {"integer": "an integer", "number": "a number", "boolean": "true or false"}
    main = next((t for t in types if t != "null"), "string")
    text = nouns.get(main, "a string")
    low, high = spec.get("minimum"), spec.get("maximum")
    if low is not None and high is not None:
        text += f" from {low:g} to {high:g}"
    elif low is not None:
        text += f" >= {low:g}"
    elif high is not None:
        text += f" <= {high:g}"
    if "null" in types:
        text += " (or None)"
    return text


def _type_ok(types: list[str], value: Any) -> Any:
    """``value`` normalised for JSON if its type is allowed, else the sentinel ``_BAD``."""
    if value is None:
        return None if "null" in types else _BAD
    if isinstance(value, bool):
        return value if "boolean" in types else _BAD
    if "integer" in types and isinstance(value, int):
        return value
    if "integer" in types and isinstance(value, float) and value.is_integer():
        return int(value)
    if "number" in types and isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if "string" in types and isinstance(value, str):
        return value
    return _BAD


_BAD = object()


def validate_value(name: str, spec: Mapping[str, Any], value: Any) -> Any:
    """Return ``value`` normalised for JSON, or raise :class:`OptionsError` naming ``name``."""
    checked = _type_ok(_types(spec), value)
    ok = checked is not _BAD
    if ok and "enum" in spec:
        ok = checked in spec["enum"]
    if ok and checked is not None and not isinstance(checked, (str, bool)):
        low, high = spec.get("minimum"), spec.get("maximum")
        ok = (low is None or checked >= low) and (high is None or checked <= high)
    if not ok:
        raise OptionsError(f"invalid value {value!r} for option {name!r}: must be {describe(spec)}")
    return checked


def _properties(schema: OptionsSchema) -> Mapping[str, Mapping[str, Any]]:
    return schema.get("properties", {})


def _unknown(name: str, schema: OptionsSchema) -> OptionsError:
    known = ", ".join(sorted(_properties(schema))) or "none"
    return OptionsError(f"unknown option {name!r}; available options: {known}")


def validate_options(schema: OptionsSchema, requested: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``requested`` against ``schema``; return only the options the user set, normalised.

    Options left out are left to the service, whose defaults may depend on the user's groups.
    """
    properties = _properties(schema)
    for name in sorted(requested):
        if name not in properties:
            raise _unknown(name, schema)
    return {name: validate_value(name, properties[name], v) for name, v in requested.items()}


def parse_text(schema: OptionsSchema, name: str, text: str) -> Any:
    """Turn a command-line string into the option's JSON type (``none`` → ``None`` if allowed).

    The result still goes through :func:`validate_options`, which checks bounds and choices.
    """
    properties = _properties(schema)
    if name not in properties:
        raise _unknown(name, schema)
    spec = properties[name]
    types = _types(spec)
    if "null" in types and text.lower() in ("none", "null"):
        return None
    bad = OptionsError(f"invalid value {text!r} for option {name!r}: must be {describe(spec)}")
    if "integer" in types or "number" in types:
        try:
            number = float(text) if "number" in types or "." in text else int(text)
        except ValueError:
            raise bad from None
        return int(number) if "integer" in types and float(number).is_integer() else number
    if "boolean" in types:
        lowered = text.lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise bad
    return text


class ClusterOptions(MutableMapping):
    """The cluster options the service offers you, with their current values, in the spirit of
    dask-gateway's ``Options``: read and set them by attribute or key (each value is checked against
    the service's bounds and choices as it is set), display them as a form in a notebook (with
    ``ipywidgets``), and pass the object to :meth:`Hub.submit`, :meth:`Hub.new_cluster` or
    ``HubCluster(cluster_options=...)``. ``schema`` is the JSON Schema it was built from.

    >>> options = Hub().cluster_options()                    # doctest: +SKIP
    >>> options.cores = 2                                    # doctest: +SKIP
    >>> cluster = HubCluster(cluster_options=options)        # doctest: +SKIP
    """

    def __init__(self, schema: OptionsSchema) -> None:
        properties = _properties(schema)
        object.__setattr__(self, "schema", schema)
        object.__setattr__(self, "_values", {name: spec.get("default", spec["enum"][0] if spec.get("enum") else None)
                                             for name, spec in properties.items()})
        object.__setattr__(self, "_widget_cache", None)

    def _spec(self, name: str, error: type[Exception]) -> Mapping[str, Any]:
        try:
            return _properties(self.schema)[name]
        except KeyError:
            raise error(f"no option {name!r}; available options: {', '.join(self._values) or 'none'}") from None

    def __getitem__(self, name: str) -> Any:
        self._spec(name, KeyError)
        return self._values[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._values[name] = validate_value(name, self._spec(name, KeyError), value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self._spec(name, AttributeError)
        return self._values[name]

    def __setattr__(self, name: str, value: Any) -> None:
        self._values[name] = validate_value(name, self._spec(name, AttributeError), value)

    def __delitem__(self, name: str) -> None:
        raise TypeError("cluster options cannot be deleted; set another value")

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {n for n in self._values if n.isidentifier()})

    def __repr__(self) -> str:
        return "ClusterOptions<" + ", ".join(f"{n}={v!r}" for n, v in self._values.items()) + ">"

    def description(self, name: str) -> str:
        """The service's help text for ``name`` and what it accepts."""
        spec = self._spec(name, KeyError)
        return f"{spec.get('description', name)}: {describe(spec)}"

    # -- the notebook form --------------------------------------------------------------------

    def _field_widget(self, name: str):
        import ipywidgets

        spec = _properties(self.schema)[name]
        types, value = _types(spec), self._values[name]
        common = {"description": name, "tooltip": self.description(name),
                  "style": {"description_width": "initial"}}
        if "enum" in spec:
            labels = [("(default)" if v is None else str(v), v) for v in spec["enum"]]
            widget = ipywidgets.Dropdown(options=labels, value=value, **common)
        elif "boolean" in types:
            widget = ipywidgets.Checkbox(value=bool(value), indent=False, **common)
        elif "integer" in types or "number" in types:
            kind = ipywidgets.BoundedIntText if "integer" in types else ipywidgets.BoundedFloatText
            low, high = spec.get("minimum"), spec.get("maximum")
            widget = kind(value=value, min=low if low is not None else -(2 ** 31),
                          max=high if high is not None else 2 ** 31, **common)
        else:
            widget = ipywidgets.Text(value=value or "", **common)

        def changed(change: dict) -> None:
            self[name] = change["new"] if change["new"] != "" or "null" not in types else None

        widget.observe(changed, names="value")
        return widget

    def widget(self):
        """An ipywidgets form whose fields set these options (None without ipywidgets)."""
        if self._widget_cache is None:
            try:
                import ipywidgets
            except ImportError:
                return None
            form = ipywidgets.VBox([ipywidgets.HTML("<b>Cluster options</b>"),
                                    *(self._field_widget(name) for name in self._values)])
            object.__setattr__(self, "_widget_cache", form)
        return self._widget_cache

    def _ipython_display_(self, **kwargs) -> None:
        from IPython.display import display

        form = self.widget()
        display(form if form is not None else repr(self), **kwargs)

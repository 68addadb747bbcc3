"""Pure pieces of the web pages: the Jinja environment, the hub-look namespace, the create form's fields.

The pages extend the hub's own ``page.html`` (its navigation bar, styles and scripts, served by the hub
under ``/hub/static/``), so the service looks like the rest of the hub without copying its templates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from ..options import OptionField

UI_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"


def hub_templates_dir() -> Path:
    """Where the installed JupyterHub keeps ``page.html`` (share/jupyterhub/templates)."""
    from jupyterhub._data import DATA_FILES_PATH

    return Path(DATA_FILES_PATH) / "templates"


def template_environment(hub_templates: Path | None = None) -> Environment:
    """Our templates first, then the hub's (so ``{% extends "page.html" %}`` finds the hub's page)."""
    hub = hub_templates or hub_templates_dir()
    loader = ChoiceLoader([FileSystemLoader(str(TEMPLATES_DIR)), FileSystemLoader(str(hub))])
    return Environment(loader=loader, autoescape=select_autoescape(default=True, default_for_string=True))


@dataclass(frozen=True)
class PageUser:
    """The attributes of a user that the hub's ``page.html`` reads."""

    name: str
    admin: bool = False

    @property
    def json_escaped_name(self) -> str:
        # page.html writes it inside a JS string literal with ``| safe``
        return json.dumps(self.name)[1:-1].replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass(frozen=True)
class HubLook:
    """Where the hub's own pages and static files are, as the browser sees them."""

    hub_prefix: str  # e.g. /hub/
    service_prefix: str  # e.g. /services/cmsaf/
    service_name: str = "cmsaf"

    def static_url(self, path: str, include_version: bool = True) -> str:
        """The hub's ``static_url`` signature; the hub serves its files unversioned too."""
        return f"{self.hub_prefix}static/{path}"

    def namespace(self, user: PageUser | None, xsrf_token: str) -> dict[str, Any]:
        """What ``page.html`` expects, plus the service's own URLs for our templates."""
        return {
            "base_url": self.hub_prefix,
            "prefix": self.hub_prefix.rsplit("hub/", 1)[0] or "/",
            "static_url": self.static_url,
            "logo_url": "",
            "login_url": f"{self.hub_prefix}login",
            "logout_url": f"{self.hub_prefix}logout",
            "user": user,
            "admin_access": bool(user and user.admin),
            "parsed_scopes": {"admin-ui"} if user and user.admin else set(),
            "services": [{"name": self.service_name, "href": self.service_prefix}],
            "no_spawner_check": True,
            "version_hash": "",
            "announcement": "",
            "xsrf_token": xsrf_token,
            "service_prefix": self.service_prefix,
            "api_url": f"{self.service_prefix}api/v1/",
            "ui_static": lambda path: f"{self.service_prefix}ui/static/{path}",
        }


@dataclass(frozen=True)
class FormField:
    """One control of the create form, derived from an option field."""

    name: str
    label: str
    help: str
    input: str  # "number" | "select" | "text"
    kind: str  # the option's kind: how the page parses the value
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: str | None = None
    #: (value as JSON, label) pairs for selects
    choices: tuple[tuple[str, str], ...] = ()

    @property
    def default_json(self) -> str:
        return json.dumps(self.default)


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _choice_label(value: Any) -> str:
    return "default" if value is None else str(value)


def form_fields(fields: list[OptionField]) -> list[FormField]:
    """The create form's controls; fields whose only choice is fixed offer nothing to pick and are left out."""
    result = []
    for f in fields:
        if f.choices is not None:
            if len(f.choices) <= 1:
                continue
            choices = tuple((json.dumps(c), _choice_label(c)) for c in f.choices)
            result.append(FormField(f.name, _label(f.name), f.help, "select", f.kind, f.default, choices=choices))
        elif f.kind in ("integer", "number"):
            step = "1" if f.kind == "integer" else "any"
            result.append(FormField(f.name, _label(f.name), f.help, "number", f.kind, f.default,
                                    minimum=f.minimum, maximum=f.maximum, step=step))  # fmt: skip
        else:
            result.append(FormField(f.name, _label(f.name), f.help, "text", f.kind, f.default))
    return result

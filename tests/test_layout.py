"""The package layout: one program per package, read from the imports of every module.

The service (``cmsaf_hub.service``) and the user side (``cmsaf_hub.client``) never import each other;
what both use (``comm``, ``data``, ``reverse``, ``xrootd_fsspec``) imports neither; request handlers reach the
running service through ``service.context``, never by importing the application.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cmsaf_hub"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports, at any depth (``TYPE_CHECKING`` blocks included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def modules_under(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in paths:
        hits = sorted(m for m in imported_modules(path) if m in forbidden or m.startswith(tuple(f + "." for f in forbidden)))
        if hits:
            bad[module_name(path)] = hits
    return bad


def test_the_reader_resolves_relative_imports():
    # positive control: the resolver sees a forbidden import written relatively, at every depth
    assert "cmsaf_hub.client.cluster" in imported_modules(PACKAGE / "client" / "labextension.py")
    assert "cmsaf_hub.comm" in imported_modules(PACKAGE / "service" / "api" / "clusters.py")
    assert "cmsaf_hub.service.app" in imported_modules(PACKAGE / "__main__.py")


def test_every_module_is_in_service_client_or_shared():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert top == {"comm", "data", "reverse", "xrootd_fsspec"}
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == {"service", "client"}


@pytest.mark.parametrize(
    "sub, forbidden",
    [("service", ("cmsaf_hub.client",)), ("client", ("cmsaf_hub.service",))],
)
def test_service_and_client_never_import_each_other(sub, forbidden):
    assert modules_under(sub), sub
    assert offending(modules_under(sub), forbidden) == {}


def test_shared_modules_import_neither_side():
    shared = [PACKAGE / name for name in ("comm.py", "data.py", "reverse.py", "xrootd_fsspec.py")]
    assert offending(shared, ("cmsaf_hub.service", "cmsaf_hub.client")) == {}


def test_handlers_do_not_import_the_application():
    handlers = modules_under("service/api") + modules_under("service/ui") + modules_under("service/forwarder")
    assert offending(handlers, ("cmsaf_hub.service.app",)) == {}

"""Shared harness code lives in devstack/: benchmarks and devstack import the project and devstack,
never the tests (issue 21: two benchmarks broke unseen through test-module imports)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_benchmarks_and_devstack_never_import_tests():
    sources = sorted([*REPO.glob("benchmarks/*.py"), *REPO.glob("devstack/*.py")])
    assert len(sources) > 10 and REPO / "devstack" / "hubs.py" in sources
    offenders = {str(p.relative_to(REPO)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "tests")
                 for p in sources}
    assert {p: m for p, m in offenders.items() if m} == {}


def test_the_import_scan_sees_a_tests_import(tmp_path):
    """Positive control: the scan does find such an import."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom tests.harness import x\nimport tests.conftest as c\nfrom . import y\n")
    assert imported_modules(probe) == {"os", "tests.harness", "tests.conftest"}

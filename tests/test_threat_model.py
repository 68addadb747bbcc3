"""docs/threat-model.md stays true: every rule names tests that exist, or says plainly it has none."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "threat-model.md"
NAMED = re.compile(r"`(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)`")


def rules() -> list[str]:
    """The table rows of the page (``| U1 | rule | tests |``)."""
    return [line for line in PAGE.read_text().splitlines() if re.match(r"\| [A-Z]\d+ \|", line)]


def functions_in(file: str) -> set[str]:
    tree = ast.parse((REPO / "tests" / file).read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_rule_names_existing_tests_or_says_it_has_none():
    rows = rules()
    assert len(rows) >= 30, "the page lost its tables"
    missing = []
    for row in rows:
        named = NAMED.findall(row)
        assert named or "no test" in row, f"a rule with neither tests nor 'no test yet': {row}"
        for file, name in named:
            if not (REPO / "tests" / file).exists() or name not in functions_in(file):
                missing.append(f"{file}::{name}")
    assert missing == [], f"docs/threat-model.md names tests that do not exist: {missing}"


def test_a_renamed_test_would_be_caught():
    """The positive control: the check above does see a name that is not there."""
    assert "test_every_rule_names_existing_tests_or_says_it_has_none" in functions_in("test_threat_model.py")
    assert "test_no_such_test" not in functions_in("test_threat_model.py")

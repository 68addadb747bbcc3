"""The skip policy (tests/skip_policy.py) run on a small suite of its own, in a real pytest process."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "tests/test_module_skip.py": "import pytest\npytest.skip('no chromium here', allow_module_level=True)\n",
    "tests/test_importorskip.py": "import pytest\npytest.importorskip('no_such_module_cmsaf')\n"
                                  "def test_never():\n    pass\n",
    "tests/test_marks.py": (
        "import pytest\n"
        "def test_passes():\n    pass\n"
        "def test_skips_inside():\n    pytest.skip('xrootd missing')\n"
        "@pytest.mark.skipif(True, reason='not root')\ndef test_skipif():\n    pass\n"
        "@pytest.mark.xfail(reason='known', strict=True)\ndef test_xfail():\n    assert False\n"
    ),
    "tests/integration/test_pool.py": (
        "import pytest\n"
        "def test_needs_a_pool():\n"
        "    pytest.skip('condor_master is not on PATH: no HTCondor pool can be started here')\n"
        "def test_other_reason():\n    pytest.skip('the personal HTCondor pool must run as root')\n"
    ),
}


def run_suite(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:cacheprovider", "-c", "/dev/null",
         "--rootdir", str(tmp_path), "-rs", "-q", "tests"],
        cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=120,
    )


def test_module_level_skips_fail_the_collection(tmp_path):
    modules = {name: CASES[name] for name in ("tests/test_module_skip.py", "tests/test_importorskip.py")}
    result = run_suite(tmp_path, {**modules, "tests/test_ok.py": "def test_ok():\n    pass\n"})
    out = result.stdout
    assert result.returncode == 2, out  # pytest's "interrupted: errors during collection"
    assert "unexpected skip of tests/test_module_skip.py: no chromium here" in out
    assert "unexpected skip of tests/test_importorskip.py: could not import 'no_such_module_cmsaf'" in out
    assert "2 errors" in out, out


def test_unexpected_skips_fail_and_only_the_listed_skip_is_allowed(tmp_path):
    result = run_suite(tmp_path, {name: CASES[name] for name in ("tests/test_marks.py", "tests/integration/test_pool.py")})
    out = result.stdout
    assert result.returncode == 1, out
    assert "unexpected skip of tests/test_marks.py::test_skips_inside: xrootd missing" in out
    assert "unexpected skip of tests/test_marks.py::test_skipif: not root" in out
    assert "unexpected skip of tests/integration/test_pool.py::test_other_reason: the personal HTCondor pool" in out
    # the one allowed skip stays a skip, and -rs prints its reason; xfail is left alone
    assert "SKIPPED [1] tests/integration/test_pool.py:3: condor_master is not on PATH" in out, out
    assert "2 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in out, out  # a skipif fails in setup


def test_a_suite_whose_only_skip_is_allowed_passes(tmp_path):
    """The positive control: the policy itself does not fail a clean run."""
    result = run_suite(tmp_path, {"tests/test_ok.py": "def test_ok():\n    pass\n",
                                  "tests/integration/test_pool.py": CASES["tests/integration/test_pool.py"].split(
                                      "def test_other_reason")[0]})
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped" in result.stdout

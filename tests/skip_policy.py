"""The suite's skip policy: a skip is a failure unless it is one of :data:`ALLOWED_SKIPS`.

Everything the tests need is installed by ``.ci/run`` (Chromium, XRootD, hadolint, PostgreSQL,
kubernetes-validate, schemathesis...) and CI runs as root, so a missing tool or privilege means a
broken install, which must fail the run instead of shrinking it. The only thing CI cannot provide is a
real HTCondor pool: Debian does not package ``condor_master``. ``conftest.py`` installs these hooks.
"""

from __future__ import annotations

import pytest

#: (node id prefix, text the skip reason must contain): why this skip is acceptable.
ALLOWED_SKIPS: dict[tuple[str, str], str] = {
    ("tests/integration/", "condor_master is not on PATH"):
        "the real-pool tests need HTCondor's condor_master, which Debian does not package",
}


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The reason text of a skipped report (its ``longrepr`` is ``(path, line, "Skipped: why")``)."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def is_allowed(nodeid: str, reason: str) -> bool:
    return any(nodeid.startswith(prefix) and needle in reason for prefix, needle in ALLOWED_SKIPS)


def refuse_unexpected_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Turn a skip that is not allowed into a failure that says what was skipped and why."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if is_allowed(report.nodeid, reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"unexpected skip of {report.nodeid or 'a module'}: {reason}\n"
                       "Only the skips in tests/skip_policy.py ALLOWED_SKIPS are allowed; install what is "
                       "missing (.ci/run lists it) instead.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    refuse_unexpected_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # module-level pytest.skip / importorskip end up here
    outcome = yield
    refuse_unexpected_skip(outcome.get_result())

"""Fixtures of the HTCondor integration tests: the personal pool of :mod:`devstack.condor_pool`."""

from __future__ import annotations

import os

import pytest

from devstack.condor_pool import personal_pool, skip_reason


@pytest.fixture(scope="session")
def condor_pool():
    """One personal pool per session; skipped, with the reason, where none can run."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with personal_pool(token_lifetime=int(os.environ.get("CMSAF_IT_TOKEN_LIFETIME", "30"))) as pool:
        yield pool

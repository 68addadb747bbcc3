"""Schemathesis fuzzes the served OpenAPI document against the running service: no server errors.

The service runs under a real hub with the no-op backend (benchmarks/noop_backend.py): the HTTP
surface is under test here, and real schedulers for every fuzzed cluster would only cost CPU.
"""

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from tests.service_helpers import service_hub_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.skipif(not SCHEMATHESIS.exists() and not shutil.which("schemathesis"), reason="schemathesis not installed")
async def test_openapi_fuzzing_finds_no_server_errors(service_hub_factory, tmp_path):
    sh = await service_hub_factory(backend="benchmarks.noop_backend.NoopBackend",
        config="c.Limits.max_clusters_per_user = 5\nc.CmsafService.long_poll_max = 1\n",
    )
    token = await sh.hub.create_user("fuzzer")
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS if SCHEMATHESIS.exists() else shutil.which("schemathesis")), "run",
        f"{sh.api}openapi.json",
        "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--header", f"Authorization: token {token}",
        "--max-examples", "15",
        "--max-time", "40",
        "--seed", "1",
        "--request-timeout", "20",
        "--workers", "2",
        "--output-sanitize", "true",
        "--report", "junit", "--report-dir", str(tmp_path / "report"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
    )
    output = (await proc.communicate())[0].decode(errors="replace")
    assert proc.returncode == 0, output[-6000:]
    assert "No issues found" in output or "passed" in output, output[-3000:]
    assert "Traceback" not in sh.hub.log_text()

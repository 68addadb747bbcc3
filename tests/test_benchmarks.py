"""Every benchmark script runs: ``benchmarks/<name>.py --quick`` as a subprocess exits 0 and prints its
figures. The figures of a quick run are not judged (no timing assertions): this keeps the scripts from
rotting unseen. Where no ``condor_master`` is installed (Debian has none), the HTCondor benchmark must
say so and exit 0; its figures are then checked where a pool can run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
#: Modules in benchmarks/ that are helpers, not scripts.
HELPERS = {"__init__", "noop_backend"}
SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if p.stem not in HELPERS)

#: What each script's quick run must print: its figures, with their units, and its peer's ratio.
FIGURES = {
    "analysis": [r"facility cluster \(HubCluster\): +\d+ events/s", r"LocalCluster in the session +: +\d+ events/s",
                 r"ratio facility/local +: \d+\.\d\dx", r"histograms: (\d+)/\1 bin values and variances agree"],
    "auth_overhead": [r"IAMAuthenticator: \d+ req/s", r"ratio IAM/stock = \d+\.\d\d"],
    "cluster_start": [r"scheduler ready: +service \d+\.\d\d +dask-gateway \d+\.\d\d +ratio \d+\.\d\d",
                      r"1 workers connected: service \d+\.\d\d +dask-gateway \d+\.\d\d +ratio \d+\.\d\d"],
    "condor_submit": [r"HTCondorBackend", r"dask-jobqueue"],
    "data_read": [r"direct from origin : +\d+\.\d MB/s", r"warm through XCache: +\d+\.\d MB/s +ratio to direct \d+\.\d\dx"],
    "outbound_workers": [r"hub's ingress/direct: gather \d+\.\d\dx \(target >= 0\.7: (met|MISSED)\)",
                         r"broker's listener/direct: gather \d+\.\d\dx", r"hub's proxy/direct: gather \d+\.\d\dx",
                         r"round trip \d+\.\d\dx", r"floor, ideal relays, 3 hops/direct: gather \d+\.\d\dx",
                         r"against the floor of its 3 hops: gather \d+\.\d\dx   round trip \d+\.\d\dx"],
    "relay_overhead": [r"\d+\.\d+ ?ms", r"\d+\.\d\d ?x"],
    "service_scale": [r"GET /clusters, 20 held p50 \d+\.\d ms", r"KiB per cluster; ratio vs target 50 KB: \d+\.\d\d"],
}


def test_every_benchmark_is_checked():
    assert {p.stem for p in SCRIPTS} == set(FIGURES)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_quick_mode_runs_and_prints_its_figures(script):
    figures = FIGURES[script.stem]
    if script.stem == "condor_submit" and shutil.which("condor_master") is None:
        figures = [r"condor_submit benchmark not run: condor_master is not on PATH"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMSAF_", "JUPYTERHUB_", "DASK_"))}
    r = subprocess.run([sys.executable, str(script), "--quick"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=840)
    assert r.returncode == 0, f"{script.name} --quick exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    for figure in figures:
        assert re.search(figure, r.stdout), f"{script.name} --quick did not print /{figure}/:\n{r.stdout[-3000:]}"

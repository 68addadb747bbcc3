"""The demo's coffea ttbar analysis on a facility cluster (HubCluster) vs a LocalCluster, in one run.

Usage: .venv/bin/python benchmarks/analysis.py [--repeat 3] [--quick]
Starts ``cmsaf-demo`` (needs Debian's XRootD server packages and root, see devstack/xrootd.py), logs
alice in, and runs examples/agc_ttbar.py with coffea's ``processor.Runner`` + ``DaskExecutor`` in a
kernel of her hub-spawned session: once on a HubCluster, once on a ``LocalCluster`` started in that
session with the same workers, threads per worker, memory limit and nanny, both reading the same
``roots://`` URLs through the XCache with her token. After one untimed pass on each (the XCache and the
workers' imports warm), it alternates timed passes and prints events/s per cluster (median of
``--repeat``), the ratio facility/local (goal >= 0.95x), and compares every histogram bin by bin.
``--quick`` (what CI runs) reads one file per dataset in small chunks, once: it checks the script,
not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.datademo import DATASETS  # noqa: E402
from devstack.demo_session import Demo, log_in_and_spawn, output_text  # noqa: E402
from devstack.hub import REPO_ROOT  # noqa: E402
from devstack.xrootd import missing_prerequisites  # noqa: E402

WORKERS, THREADS, MEMORY_GB = 2, 1, 2.0

#: Runs in alice's kernel: {datasets}, {chunksize}, {repeat} are filled in.
KERNEL_CODE = """
import statistics, time, warnings
import numpy as np
from coffea import processor
from coffea.nanoevents import NanoAODSchema
from dask.distributed import Client, LocalCluster
from cmsaf_hub.client import HubCluster
from cmsaf_hub.data import facility_url
import agc_ttbar

warnings.filterwarnings("ignore", message="Missing cross-reference")
fileset = agc_ttbar.fileset({datasets!r}, url=facility_url)

def run(client):
    runner = processor.Runner(executor=processor.DaskExecutor(client=client, status=False),
                              schema=NanoAODSchema, chunksize={chunksize}, savemetrics=True)
    start = time.perf_counter()
    output, metrics = runner(fileset, processor_instance=agc_ttbar.TtbarProcessor(), treename="Events")
    return output, metrics["entries"] / (time.perf_counter() - start)

facility = HubCluster(workers={workers}, cores={threads}, memory={memory})
facility_client = facility.get_client()
facility_client.wait_for_workers({workers}, timeout=300)
facility_client.upload_file("agc_ttbar.py")
local = LocalCluster(n_workers={workers}, threads_per_worker={threads}, memory_limit="{memory}GB",
                     processes=True, dashboard_address=None)
local_client = Client(local)
try:
    rates = {{"facility": [], "local": []}}
    outputs = {{}}
    clients = {{"facility": facility_client, "local": local_client}}
    for name, client in clients.items():  # untimed: the cache and the workers warm up
        outputs[name], _ = run(client)
    for _ in range({repeat}):
        for name, client in clients.items():
            outputs[name], rate = run(client)
            rates[name].append(rate)
    f, l = (statistics.median(rates[n]) for n in ("facility", "local"))
    events = sum(outputs["facility"]["nevents"].values())
    print(f"analysis: {{events}} events per pass, {workers} workers x {threads} thread(s), {memory} GB each, "
          f"median of {repeat} pass(es)")
    print(f"  facility cluster (HubCluster): {{f:10.0f}} events/s")
    print(f"  LocalCluster in the session  : {{l:10.0f}} events/s")
    print(f"  ratio facility/local         : {{f / l:.2f}}x (goal >= 0.95x)")
    bins = same = 0
    worst = 0.0
    for region in outputs["facility"]["hists"]:
        hf, hl = outputs["facility"]["hists"][region], outputs["local"]["hists"][region]
        assert sorted(hf.axes["dataset"]) == sorted(hl.axes["dataset"]), (region, list(hf.axes["dataset"]))
        for dataset in hf.axes["dataset"]:
            a = hf[{{"dataset": dataset}}].view(flow=True)
            b = hl[{{"dataset": dataset}}].view(flow=True)
            for field in ("value", "variance"):
                diff = np.abs(a[field] - b[field])
                scale = np.maximum(np.abs(a[field]), 1e-300)
                worst = max(worst, float((diff / scale).max()))
                same += int((diff <= 1e-9 * scale).sum())
                bins += a[field].size
    selected = outputs["facility"]["selected"] == outputs["local"]["selected"]
    print(f"  histograms: {{same}}/{{bins}} bin values and variances agree (max relative difference "
          f"{{worst:.1e}}); selected events {{'equal' if selected else 'DIFFER'}}: {{outputs['facility']['selected']}}")
    assert same == bins and selected, "the two clusters disagree"
finally:
    local_client.close()
    local.close()
    facility_client.close()
    facility.close()
"""


async def main(repeat: int, quick: bool) -> int:
    reason = missing_prerequisites()
    if reason:
        print(f"analysis: cannot run, {reason}")
        return 1
    datasets = {name: paths[:1] for name, paths in DATASETS.items()} if quick else DATASETS
    code = KERNEL_CODE.format(datasets=datasets, chunksize=10_000 if quick else 20_000, repeat=1 if quick else repeat,
                              workers=WORKERS, threads=THREADS, memory=MEMORY_GB)
    demo = Demo()
    await demo.start()
    try:
        session = await log_in_and_spawn(demo, "alice", "alice-password")
        module = REPO_ROOT / "examples" / "agc_ttbar.py"
        await session.put_file(module.name, module.read_text())
        await session.put_file("analysis-benchmark.ipynb", '{"cells": [], "metadata": {}, "nbformat": 4, '
                               '"nbformat_minor": 5}', notebook=True)
        kernel = await session.kernel("analysis-benchmark.ipynb")
        try:
            print(output_text(await kernel.execute(code, timeout=1800)), end="")
        finally:
            await kernel.shutdown()
        return 0
    finally:
        await demo.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one small pass: checks the script, not the figures")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.repeat, args.quick)))

"""Time to queue 1, 10, 100 and 1,000 Dask workers on HTCondor: HTCondorBackend vs dask-jobqueue.

Both sides submit as the same user (alice's exchanged SciToken) to the same personal pool in the same
run: HTCondorBackend.submit_workers(n) (one bindings call in alice's client process, input files
spooled) against dask-jobqueue's HTCondorCluster.scale(n) until its jobs are queued (one
condor_submit per job). Needs condor_master on PATH and root (see tests/integration/pool.py); says so
and exits 0 otherwise. Targets: 100 workers >= 20x faster than dask-jobqueue, 1,000 in < 3 s.

    .venv/bin/python benchmarks/condor_submit.py [--sizes 1,10,100,1000] [--peer-max 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmsaf_hub.service.backends.base import ClusterSpec  # noqa: E402
from cmsaf_hub.service.backends.htcondor import HTCondorBackend  # noqa: E402
from cmsaf_hub.service.crypto import generate_cluster_tls  # noqa: E402
from tests.integration.pool import personal_pool, skip_reason  # noqa: E402

UNREACHABLE_SCHEDULER = "tls://127.0.0.1:9"  # workers are never meant to start: only queueing is timed


async def time_backend(pool, backend: HTCondorBackend, n: int, run: int) -> float:
    spec = ClusterSpec(id=f"bench-{n}-{run}", owner="alice", options={"cores": 1, "memory": 0.5},
                       tls=generate_cluster_tls("bench").as_dict(), tokens={"condor": await pool.token("alice")},
                       backend_state={"schedd": pool.schedd_name, "scheduler_address": UNREACHABLE_SCHEDULER})
    began = time.perf_counter()
    workers = await backend.submit_workers(spec, n)
    elapsed = time.perf_counter() - began
    assert len(workers) == n
    await backend.stop_cluster(spec)
    return elapsed


async def time_jobqueue(pool, n: int, token_file: Path) -> float:
    from dask_jobqueue import HTCondorCluster

    # dask-jobqueue runs condor_submit/condor_rm with this process's environment: give it alice's identity.
    os.environ.update({f"_condor_{k}": v for k, v in pool.condor_config.items()})
    os.environ["_condor_SCITOKENS_FILE"] = str(token_file)
    token_file.write_text(await pool.token("alice"))
    name = ["-name", pool.schedd_name]  # the pool's schedd is not the tools' default one
    cluster = await HTCondorCluster(cores=1, memory="512MiB", disk="100MiB", python=sys.executable,
                                    asynchronous=True, scheduler_options={"host": "127.0.0.1"},
                                    submit_command_extra=name, cancel_command_extra=name)
    try:
        began = time.perf_counter()
        cluster.scale(n)
        await cluster._correct_state()  # returns once every job's condor_submit has returned
        elapsed = time.perf_counter() - began
        assert len(cluster.worker_spec) == n
    finally:
        await cluster.close()
    return elapsed


async def run(sizes: list[int], peer_max: int) -> None:
    with personal_pool(token_lifetime=600) as pool:
        await pool.refresh_service_token()
        backend = HTCondorBackend(schedd_name=pool.schedd_name, condor_config=pool.condor_config,
                                  scheduler_placement="htcondor", state_dir=str(pool.local_dir / "bench-client"))
        await backend.start()
        try:
            await time_backend(pool, backend, 1, -1)  # warm-up: client process start and first authentication
            print(f"{'workers':>8} {'HTCondorBackend s':>18} {'dask-jobqueue s':>16} {'speed-up':>9}")
            results = {}
            for n in sizes:
                ours = await time_backend(pool, backend, n, 0)
                peer = await time_jobqueue(pool, n, pool.local_dir / "alice-bench.token") if n <= peer_max else None
                results[n] = (ours, peer)
                ratio = f"{peer / ours:8.1f}x" if peer else "     n/a"
                print(f"{n:>8} {ours:>18.3f} {peer if peer is not None else float('nan'):>16.3f} {ratio:>9}")
        finally:
            await backend.close()
    if 100 in results and results[100][1]:
        ours, peer = results[100]
        print(f"target 100 workers >= 20x faster: {peer / ours:.1f}x -> {'met' if peer / ours >= 20 else 'MISSED'}")
    if 1000 in results:
        print(f"target 1,000 workers < 3 s: {results[1000][0]:.3f} s -> {'met' if results[1000][0] < 3 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,1000", help="comma-separated worker counts")
    parser.add_argument("--peer-max", type=int, default=1000, help="largest count to also time dask-jobqueue with")
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        print(f"condor_submit benchmark not run: {reason}")
        return
    asyncio.run(run([int(x) for x in args.sizes.split(",")], args.peer_max))


if __name__ == "__main__":
    main()

"""Time to queue 1, 10, 100 and 1,000 Dask workers on HTCondor: this backend, dask-jobqueue, raw bindings.

All three submit as the same user (alice's exchanged SciToken) to the same personal pool
(devstack/condor_pool.py) in the same run, the same jobs with the same input files (alice's token
and the cluster's TLS certificate and key):

- HTCondorBackend.submit_workers(n): one call in alice's client process; the input files are spooled
  once (into the batch's inputs job) and the n workers queued in one transaction;
- dask-jobqueue's HTCondorCluster.scale(n), until every job is queued (one condor_submit per job);
- the limit: one raw htcondor2 Schedd.submit(count=n) in a fresh process as alice, reading the same
  files from a local directory (nothing spooled).

Only queueing is timed: the workers point at a scheduler address nobody listens on. Needs
condor_master on PATH and root; says so and exits 0 otherwise. Targets: 1,000 workers queued in
< 1 s and within 3x of the raw submit.

    .venv/bin/python benchmarks/condor_submit.py [--sizes 1,10,100,1000] [--peer-max 1000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmsaf_hub.service.backends.base import ClusterSpec  # noqa: E402
from cmsaf_hub.service.backends.condor_jobs import sandbox_files  # noqa: E402
from cmsaf_hub.service.backends.htcondor import HTCondorBackend  # noqa: E402
from cmsaf_hub.service.crypto import generate_cluster_tls  # noqa: E402
from devstack.condor_pool import personal_pool, skip_reason  # noqa: E402

UNREACHABLE_SCHEDULER = "tls://127.0.0.1:9"  # workers are never meant to start: only queueing is timed

#: One raw submission, timed inside its own process (the bindings' configuration is per process),
#: after a warm-up submission that opens the authenticated session (the backend's process keeps one).
RAW_SUBMIT = """
import json, sys, time
import htcondor2
schedd_name, description, count = json.loads(sys.stdin.read())
schedd = htcondor2.Schedd(htcondor2.Collector().locate(htcondor2.DaemonType.Schedd, schedd_name))
schedd.submit(htcondor2.Submit(description), count=1)  # warm-up: the authenticated session, as the backend has
began = time.perf_counter()
result = schedd.submit(htcondor2.Submit(description), count=count)
elapsed = time.perf_counter() - began
assert result.num_procs() == count
print(json.dumps({"elapsed": elapsed, "cluster": result.cluster()}))
"""


def spec_for(pool, token: str, name: str) -> ClusterSpec:
    return ClusterSpec(id=name, owner="alice", options={"cores": 1, "memory": 0.5},
                       tls=generate_cluster_tls(name).as_dict(), tokens={"condor": token},
                       backend_state={"schedd": pool.schedd_name, "scheduler_address": UNREACHABLE_SCHEDULER})


async def time_backend(backend: HTCondorBackend, spec: ClusterSpec, n: int) -> float:
    began = time.perf_counter()
    workers = await backend.submit_workers(spec, n)
    elapsed = time.perf_counter() - began
    assert len(workers) == n
    await backend.stop_cluster(spec)
    return elapsed


def alice_env(pool, token_file: Path) -> dict[str, str]:
    """alice's client settings, from the environment only (CONDOR_CONFIG=ONLY_ENV: no config file)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("_condor_")}
    env.update({f"_condor_{k}": v for k, v in pool.condor_config.items()})
    env.update(CONDOR_CONFIG="ONLY_ENV", _condor_SCITOKENS_FILE=str(token_file))
    return env


async def time_raw(backend: HTCondorBackend, spec: ClusterSpec, n: int, env: dict[str, str]) -> float:
    """The same worker description and files as the backend's, submitted raw (files from a local dir)."""
    from cmsaf_hub.service.backends.condor_jobs import bearer_token_name, worker_description

    desc = worker_description(
        backend.job_shape(spec), cluster_id=spec.id, owner=spec.owner, scheduler_address=UNREACHABLE_SCHEDULER,
        token_names=sorted(spec.tokens), bearer=bearer_token_name(spec.tokens, backend.bearer_token_names),
        tls=True)
    with tempfile.TemporaryDirectory(prefix="cmsaf-raw-") as staging:
        for name, content in sandbox_files(spec.tokens, spec.tls).items():
            Path(staging, name).write_text(content)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RAW_SUBMIT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
        out, _ = await proc.communicate(json.dumps([spec.backend_state["schedd"], dict(desc, initialdir=staging), n]).encode())
        if proc.returncode != 0:
            raise RuntimeError(f"raw submit of {n} jobs failed (exit {proc.returncode})")
        result = json.loads(out)
    await backend.stop_cluster(spec)  # the raw jobs carry the same cluster attribute
    return result["elapsed"]


async def time_jobqueue(pool, n: int, env: dict[str, str]) -> float:
    from dask_jobqueue import HTCondorCluster

    # dask-jobqueue runs condor_submit/condor_rm with this process's environment: alice's identity.
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    name = ["-name", pool.schedd_name]  # the pool's schedd is not the tools' default one
    try:
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
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return elapsed


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a and b else "n/a"


async def run(sizes: list[int], peer_max: int) -> None:
    with personal_pool(token_lifetime=3600) as pool:
        token = await pool.token("alice")
        token_file = pool.local_dir / "alice-bench.token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        env = alice_env(pool, token_file)
        backend = HTCondorBackend(schedd_name=pool.schedd_name, condor_config=pool.condor_config,
                                  state_dir=str(pool.local_dir / "bench-client"), python=sys.executable,
                                  scheduler_placement="htcondor")
        await backend.start()
        results = {}
        try:
            await time_backend(backend, spec_for(pool, token, "bench-warm-up"), 1)  # client process, first auth
            await time_raw(backend, spec_for(pool, token, "bench-warm-up-raw"), 1, env)
            print(f"{'workers':>8} {'HTCondorBackend s':>18} {'dask-jobqueue s':>16} {'raw submit s':>13}"
                  f" {'jobqueue/backend':>17} {'backend/raw':>12}")
            for n in sizes:
                ours = await time_backend(backend, spec_for(pool, token, f"bench-{n}"), n)
                raw = await time_raw(backend, spec_for(pool, token, f"bench-raw-{n}"), n, env)
                peer, peer_text = None, f"{'not run':>16}"
                if n <= peer_max:
                    try:
                        peer = await time_jobqueue(pool, n, env)
                        peer_text = f"{peer:16.3f}"
                    except Exception as e:  # e.g. one of n concurrent condor_submits failing to authenticate
                        peer_text = f"{'failed':>16}"
                        print(f"dask-jobqueue failed to queue {n} workers: {type(e).__name__}: {str(e)[:200]}")
                results[n] = (ours, peer, raw)
                print(f"{n:>8} {ours:>18.3f} {peer_text} {raw:>13.3f} {ratio(peer, ours):>17} {ratio(ours, raw):>12}")
        finally:
            await backend.close()
    if 1000 in results:
        ours, _, raw = results[1000]
        print(f"target 1,000 workers queued in < 1 s: {ours:.3f} s -> {'met' if ours < 1 else 'MISSED'}")
        print(f"target within 3x of the raw submit: {ours / raw:.1f}x -> {'met' if ours <= 3 * raw else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,1000", help="comma-separated worker counts")
    parser.add_argument("--peer-max", type=int, default=1000, help="largest count to also time dask-jobqueue with")
    parser.add_argument("--quick", action="store_true", help="sizes 1 and 10 only (checks the script, not figures)")
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        print(f"condor_submit benchmark not run: {reason}")
        return
    sizes = [1, 10] if args.quick else [int(x) for x in args.sizes.split(",")]
    asyncio.run(run(sizes, args.peer_max))


if __name__ == "__main__":
    main()

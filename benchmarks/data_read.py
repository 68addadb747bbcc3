"""Read throughput of a 200 MB file from a Dask worker: cold through the XCache, warm through the
XCache, and direct from the origin, all in one run on this machine.

Usage: .venv/bin/python benchmarks/data_read.py [--size-mb 200] [--repeat 3] [--quick]
``--quick`` (what CI runs): a 4 MB file, one read per mode; it checks the script, not the figures.
Needs Debian's xrootd-server + xrootd-scitokens-plugins and root (see devstack/xrootd.py); says so
otherwise. Prints MB/s per mode (median of --repeat reads, each cold read on a file never read before)
and the ratios warm/direct and cold/direct.

On loopback the origin and the cache share one disk and one page cache, so warm ≈ direct is the honest
expectation here. Across a WAN the origin's round trips and bandwidth dominate every direct read,
while a warm read never leaves the site: that is where the cache wins (see docs/data-access.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distributed import Client  # noqa: E402
from distributed.security import Security  # noqa: E402

from cmsaf_hub.service.backends.base import ClusterSpec  # noqa: E402
from cmsaf_hub.service.backends.local import LocalBackend  # noqa: E402
from cmsaf_hub.service.crypto import generate_cluster_tls  # noqa: E402
from cmsaf_hub.data import read_bytes  # noqa: E402
from devstack.xrootd import missing_prerequisites  # noqa: E402
from devstack.datasite import start_data_site  # noqa: E402


def timed_read(url: str) -> tuple[float, int]:
    """Runs on the worker: seconds and bytes for one whole-file read."""
    start = time.perf_counter()
    data = read_bytes(url)
    return time.perf_counter() - start, len(data)


async def main(size_mb: int, repeat: int) -> int:
    reason = missing_prerequisites()
    if reason:
        print(f"data_read: skipped, {reason}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="cmsaf-bench-data-"))
    payload = os.urandom(size_mb * 1024 * 1024)
    files = [f"/store/bench/file{i}.bin" for i in range(repeat)]
    site = await start_data_site(work, {f: payload for f in files})
    stack = site.stack
    user_file = await site.user_token_file("alice", "alice", "storage.read:/store")
    backend = LocalBackend(state_dir=str(work / "clusters"), same_user=True)  # the benchmark's own OS user
    tls = generate_cluster_tls("bench").as_dict()
    try:
        await backend.start()
        # the backend writes the cluster's token files and points BEARER_TOKEN_FILE at them, as in production
        env = site.env(None, cache=False)
        spec = ClusterSpec(id="benchdata", owner="alice", options={"cores": 1, "memory": 4.0}, env=env, tls=tls,
                           tokens={"xrootd": user_file.read_text()})
        info = await backend.start_scheduler(spec)
        spec.backend_state = info.backend_state
        await backend.submit_workers(spec, 1)
        security = Security(tls_ca_file=tls["cert"], tls_client_cert=tls["cert"], tls_client_key=tls["key"],
                            require_encryption=True)
        async with Client(info.address, security=security, asynchronous=True, timeout=60) as dask:
            await dask.wait_for_workers(1, timeout=120)

            async def rate(url: str) -> float:
                seconds, n = await dask.submit(timed_read, url, pure=False)
                assert n == len(payload)
                return n / 1e6 / seconds

            direct = [await rate(f"{stack.origin.url}/{f}") for f in files]
            cold = [await rate(f"{stack.cache.url}/{f}") for f in files]
            warm = [await rate(f"{stack.cache.url}/{f}") for f in files]
        d, c, w = (statistics.median(x) for x in (direct, cold, warm))
        print(f"data_read: {size_mb} MB file, median of {repeat} reads from one Dask worker (loopback)")
        print(f"  direct from origin : {d:8.1f} MB/s")
        print(f"  cold through XCache: {c:8.1f} MB/s   ratio to direct {c / d:.2f}x")
        print(f"  warm through XCache: {w:8.1f} MB/s   ratio to direct {w / d:.2f}x (goal >= 1.0x)")
        return 0
    finally:
        await backend.stop_cluster(ClusterSpec(id="benchdata", owner="alice", options={}))
        await backend.close()
        await site.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 MB, one read per mode: checks the script")
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.repeat = 4, 1
    sys.exit(asyncio.run(main(args.size_mb, args.repeat)))

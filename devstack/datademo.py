"""The demo's data site: an origin with sample CMS-like ROOT files and an XCache, trusting the dev IAM.

Started by ``cmsaf-demo`` when Debian's XRootD server packages are installed (and it runs as root), so
that ``examples/read-data-on-a-cluster.ipynb`` reads real files with the user's own token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from devstack.iam import DevIAM
from devstack.xrootd import DataStack, hashed_ca_dir

#: The client the XCache uses to get its own service token (client credentials).
XCACHE_CLIENT = {"client_id": "cmsaf-xcache", "grant_types": ["client_credentials"], "scope": "storage.read:/"}
SAMPLES = [f"/store/user/demo/DYJetsToLL_{i}.root" for i in range(3)]


def write_sample(path: Path, seed: int, entries: int = 20_000) -> None:
    """A small NanoAOD-like file: muon transverse momenta and pseudorapidities per event."""
    import awkward as ak
    import numpy as np
    import uproot

    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, entries)
    pt = ak.unflatten(rng.exponential(25.0, counts.sum()) + 5.0, counts)
    eta = ak.unflatten(rng.normal(0.0, 1.2, counts.sum()), counts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(path) as f:
        f["Events"] = {"Muon": ak.zip({"pt": pt, "eta": eta})}


@dataclass
class DemoData:
    stack: DataStack
    #: What sessions and workers get (jupyterhub_config.py reads these CMSAF_* settings).
    hub_env: dict[str, str]


async def start_demo_data(iam: DevIAM, state: Path) -> DemoData:
    """Publish the samples (once), start origin + XCache; the IAM must have XCACHE_CLIENT registered."""
    state.mkdir(parents=True, exist_ok=True)
    token_file = state / "xcache.token"
    token_file.write_text(await iam.client_token(XCACHE_CLIENT["client_id"], scope="storage.read:/"))
    token_file.chmod(0o600)
    stack = DataStack(iam.issuer, iam.pki.ca_cert, iam.pki.server_cert, iam.pki.server_key, token_file)
    for i, path in enumerate(SAMPLES):
        write_sample(stack.store_path(path), seed=i)
    await stack.start()
    env = {"CMSAF_XROOTD_ORIGIN": stack.origin.url, "CMSAF_XCACHE_URL": stack.cache.url,
           "CMSAF_X509_CERT_DIR": str(hashed_ca_dir(iam.ca_cert, state / "certificates"))}
    return DemoData(stack, env)


async def keep_cache_token_fresh(iam: DevIAM, stack: DataStack, lifetime: float) -> None:
    """Replace the cache's service token at half its lifetime, for as long as the demo runs."""
    while True:
        await asyncio.sleep(max(lifetime / 2, 30))
        stack.replace_cache_token(await iam.client_token(XCACHE_CLIENT["client_id"], scope="storage.read:/"))

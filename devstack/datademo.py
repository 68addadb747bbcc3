"""The demo's data site: an origin with sample CMS-like ROOT files and an XCache, trusting the dev IAM.

Started by ``cmsaf-demo`` when Debian's XRootD server packages are installed (and it runs as root), so
that the notebooks in ``examples/`` read real NanoAOD-like files with the user's own token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from devstack.iam import DevIAM
from devstack.xrootd import DataStack, hashed_ca_dir

#: The client the XCache uses to get its own service token (client credentials).
XCACHE_CLIENT = {"client_id": "cmsaf-xcache", "grant_types": ["client_credentials"], "scope": "storage.read:/"}
#: The demo's datasets: {name: storage paths} (examples/ttbar-analysis.ipynb reads them all).
DATASETS = {
    "ttbar": [f"/store/user/demo/nanoaod/TTToSemiLeptonic_{i}.root" for i in range(3)],
    "wjets": [f"/store/user/demo/nanoaod/WJetsToLNu_{i}.root" for i in range(2)],
}
SAMPLES = [path for paths in DATASETS.values() for path in paths]
ENTRIES_PER_FILE = 40_000

#: Per dataset: mean jets per event, fraction of b jets among the two leading, lepton multiplicity
#: probabilities (0, 1, 2) — enough for a semi-leptonic ttbar selection to find signal and background.
_PHYSICS = {
    "ttbar": {"jets": 5.5, "b_fraction": 0.8, "leptons": (0.40, 0.50, 0.10), "negative_weights": 0.05},
    "wjets": {"jets": 2.2, "b_fraction": 0.05, "leptons": (0.15, 0.80, 0.05), "negative_weights": 0.02},
}


def nanoaod_events(dataset: str, seed: int, entries: int) -> dict:
    """NanoAOD-like columns for ``entries`` events: event ids, ``genWeight``, and Jet/Electron/Muon
    collections (jagged, pt-ordered, with NanoAOD's branch names and ROOT types once written)."""
    import awkward as ak
    import numpy as np

    physics = _PHYSICS[dataset]
    rng = np.random.default_rng(seed)

    def jagged(counts, values):
        return ak.unflatten(values, counts)

    def kinematics(counts, pt_offset, pt_scale, eta_width):
        n = int(counts.sum())
        pt = ak.sort(jagged(counts, (pt_offset + rng.exponential(pt_scale, n)).astype(np.float32)), ascending=False)
        return {"pt": pt,
                "eta": jagged(counts, np.clip(rng.normal(0.0, eta_width, n), -2.5, 2.5).astype(np.float32)),
                "phi": jagged(counts, rng.uniform(-np.pi, np.pi, n).astype(np.float32))}

    n_jet = rng.poisson(physics["jets"], entries).astype(np.int32)
    jets = kinematics(n_jet, 25.0, 45.0, 1.4)
    n_all = int(n_jet.sum())
    jets["mass"] = (jets["pt"] * jagged(n_jet, rng.uniform(0.05, 0.2, n_all).astype(np.float32)))
    leading = ak.local_index(jets["pt"]) < 2
    is_b = leading & jagged(n_jet, rng.uniform(size=n_all) < physics["b_fraction"])
    b_score = jagged(n_jet, rng.beta(5.0, 1.5, n_all).astype(np.float32))
    light_score = jagged(n_jet, rng.beta(1.0, 8.0, n_all).astype(np.float32))
    jets["btagDeepFlavB"] = ak.where(is_b, b_score, light_score)
    jets["hadronFlavour"] = ak.values_astype(ak.where(is_b, 5, 0), np.int32)
    jets["jetId"] = ak.values_astype(jagged(n_jet, rng.choice([2, 6], n_all, p=[0.1, 0.9])), np.uint8)

    n_lep = rng.choice(3, entries, p=physics["leptons"])
    n_mu = rng.binomial(n_lep, 0.5).astype(np.int32)
    n_el = (n_lep - n_mu).astype(np.int32)
    muons = kinematics(n_mu, 20.0, 30.0, 1.1)
    muons["mass"] = ak.values_astype(muons["pt"] * 0 + 0.10566, np.float32)
    muons["charge"] = ak.values_astype(jagged(n_mu, rng.choice([-1, 1], int(n_mu.sum()))), np.int32)
    muons["tightId"] = jagged(n_mu, rng.uniform(size=int(n_mu.sum())) < 0.9)
    muons["pfRelIso04_all"] = jagged(n_mu, rng.exponential(0.06, int(n_mu.sum())).astype(np.float32))
    electrons = kinematics(n_el, 20.0, 30.0, 1.1)
    electrons["mass"] = ak.values_astype(electrons["pt"] * 0 + 0.000511, np.float32)
    electrons["charge"] = ak.values_astype(jagged(n_el, rng.choice([-1, 1], int(n_el.sum()))), np.int32)
    electrons["cutBased"] = ak.values_astype(jagged(n_el, rng.choice(5, int(n_el.sum()),
                                                                     p=[0.05, 0.05, 0.1, 0.2, 0.6])), np.int32)
    electrons["pfRelIso03_all"] = jagged(n_el, rng.exponential(0.06, int(n_el.sum())).astype(np.float32))

    sign = np.where(rng.uniform(size=entries) < physics["negative_weights"], -1.0, 1.0)
    first = seed * entries + 1
    return {
        "run": np.full(entries, 1, dtype=np.uint32),
        "luminosityBlock": (1 + np.arange(entries) // 1000).astype(np.uint32),
        "event": np.arange(first, first + entries, dtype=np.uint64),
        "genWeight": sign.astype(np.float32),
        "Jet": ak.zip(jets),
        "Electron": ak.zip(electrons),
        "Muon": ak.zip(muons),
    }


def write_sample(path: Path, dataset: str, seed: int, entries: int = ENTRIES_PER_FILE) -> None:
    """One NanoAOD-like file: a TTree ``Events`` with ``run``/``luminosityBlock``/``event``, ``genWeight``
    and ``nJet``/``Jet_pt``…, ``nElectron``/``Electron_pt``…, ``nMuon``/``Muon_pt``… branches."""
    import uproot

    columns = nanoaod_events(dataset, seed, entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(path) as f:
        tree = f.mktree("Events", {name: (value.dtype if hasattr(value, "dtype") else value.type.content)
                                   for name, value in columns.items()})
        tree.extend(columns)


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
    seed = 0
    for dataset, paths in DATASETS.items():
        for path in paths:
            write_sample(stack.store_path(path), dataset, seed)
            seed += 1
    await stack.start()
    env = {"CMSAF_XROOTD_ORIGIN": stack.origin.url, "CMSAF_XCACHE_URL": stack.cache.url,
           "CMSAF_X509_CERT_DIR": str(hashed_ca_dir(iam.ca_cert, state / "certificates"))}
    return DemoData(stack, env)


async def keep_cache_token_fresh(iam: DevIAM, stack: DataStack, lifetime: float) -> None:
    """Replace the cache's service token at half its lifetime, for as long as the demo runs."""
    while True:
        await asyncio.sleep(max(lifetime / 2, 30))
        stack.replace_cache_token(await iam.client_token(XCACHE_CLIENT["client_id"], scope="storage.read:/"))

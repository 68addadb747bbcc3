"""HTCondor workers at outbound-only sites join through the hub: the pure job-description builders.

(Needs no pool: the descriptions are checked exactly and parsed by the real submit language.)
"""

from __future__ import annotations

import htcondor2
import pytest
from dask_jobqueue.htcondor import quote_arguments

from cmsaf_hub.service.backends.base import BackendError, ClusterSpec
from cmsaf_hub.service.backends.condor_jobs import WORKER_CREDENTIAL_FILE, sandbox_files, worker_description
from cmsaf_hub.service.backends.condor_shape import CondorJobShapeConfig

SITES = dict(sites=["T2_LNL_PD", "T2_REMOTE"], outbound_sites=["T2_REMOTE"], hub_url="https://hub.example/")


def cluster(site: str) -> ClusterSpec:
    return ClusterSpec(id="c0ffee", owner="alice", options={"site": site, "cores": 2, "memory": 3.0},
                       dashboard_prefix="/services/cmsaf/clusters/c0ffee/dashboard")


def describe(config: CondorJobShapeConfig, site: str) -> dict[str, str]:
    return worker_description(config.job_shape(cluster(site)), cluster_id="c0ffee", owner="alice",
                              scheduler_address="tls://10.0.0.5:8786", token_names=["xrootd"], bearer="xrootd",
                              tls=True)


def test_a_worker_at_an_outbound_only_site_joins_through_the_hub_with_its_credential_file():
    config = CondorJobShapeConfig(**SITES, death_timeout=45)
    desc = describe(config, "T2_REMOTE")
    script = (
        'export CMSAF_TOKEN_DIR="$_CONDOR_SCRATCH_DIR"; '
        f'export CMSAF_WORKER_CREDENTIAL_FILE="$_CONDOR_SCRATCH_DIR/{WORKER_CREDENTIAL_FILE}"; '
        'export BEARER_TOKEN_FILE="$_CONDOR_SCRATCH_DIR/xrootd.token"; '
        "exec python3 -m cmsaf_hub.reverse wss://hub.example/services/cmsaf/clusters/c0ffee/comm "
        '--name "$(ClusterId).$(ProcId)" --nthreads 2 --memory-limit 3221225472 --death-timeout 45 '
        "--local-directory $_CONDOR_SCRATCH_DIR"
    )
    assert desc["arguments"] == '"' + quote_arguments(["-c", script]) + '"'
    # the credential instead of the cluster's TLS key: the hub's TLS carries the worker's connections
    assert desc["transfer_input_files"] == desc["encrypt_input_files"] == f"xrootd.token,{WORKER_CREDENTIAL_FILE}"
    assert desc["requirements"] == '(TARGET.SiteName == "T2_REMOTE")'
    assert htcondor2.Submit(desc)["MY.CmsafRole"] == '"worker"'
    files = sandbox_files({"xrootd": "jwt"}, {"cert": "C", "key": "K"}, worker_credential="s3cret")
    assert files[WORKER_CREDENTIAL_FILE] == "s3cret" and "s3cret" not in repr(desc)

    # positive control: a worker at a site that accepts connections keeps its direct TLS command
    direct = describe(config, "T2_LNL_PD")
    assert "distributed.cli.dask_worker tls://10.0.0.5:8786" in direct["arguments"]
    assert "cmsaf_hub.reverse" not in direct["arguments"] and "--tls-key" in direct["arguments"]
    assert direct["transfer_input_files"] == "xrootd.token,dask-tls.crt,dask-tls.key"


def test_outbound_sites_need_the_hub_url():
    config = CondorJobShapeConfig(sites=["T2_REMOTE"], outbound_sites=["T2_REMOTE"])
    with pytest.raises(BackendError) as e:
        config.job_shape(cluster("T2_REMOTE"))
    assert str(e.value) == "HTCondorBackend.hub_url is not set, but outbound-only sites need it"
    assert CondorJobShapeConfig(**SITES).job_shape(cluster("T2_REMOTE")).hub_comm_url == (
        "wss://hub.example/services/cmsaf/clusters/c0ffee/comm")

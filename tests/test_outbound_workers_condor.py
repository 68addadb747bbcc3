"""HTCondor workers at outbound-only sites join through the hub, and every job of a cluster gets its
worker credential as a sandbox file: the pure job-description builders, and what the backend sends.

(Needs no pool: the descriptions are checked exactly and parsed by the real submit language; the
backend runs against the recording double at the bindings seam, in real per-identity processes.)
"""

from __future__ import annotations

import functools
import json

import htcondor2
import pytest
from dask_jobqueue.htcondor import quote_arguments

from cmsaf_hub.service.backends.base import BackendError, ClusterSpec
from cmsaf_hub.service.backends.condor_jobs import (
    WORKER_CREDENTIAL_FILE,
    JobShape,
    JobShapeError,
    sandbox_files,
    scheduler_description,
    worker_description,
)
from cmsaf_hub.service.backends.condor_shape import CondorJobShapeConfig
from cmsaf_hub.service.backends.htcondor import HTCondorBackend
from tests.test_htcondor_seam import RecordingSeam, recorded_calls, write_script

SITES = dict(sites=["T2_LNL_PD", "T2_REMOTE"], outbound_sites=["T2_REMOTE"], hub_url="https://hub.example/")


def cluster(site: str) -> ClusterSpec:
    return ClusterSpec(id="c0ffee", owner="alice", options={"site": site, "cores": 2, "memory": 3.0},
                       dashboard_prefix="/services/cmsaf/clusters/c0ffee/dashboard")


def describe(config: CondorJobShapeConfig, site: str, worker_credential: bool = True) -> dict[str, str]:
    return worker_description(config.job_shape(cluster(site)), cluster_id="c0ffee", owner="alice",
                              scheduler_address="tls://10.0.0.5:8786", token_names=["xrootd"], bearer="xrootd",
                              tls=True, worker_credential=worker_credential)


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
    direct = describe(config, "T2_LNL_PD", worker_credential=False)
    assert "distributed.cli.dask_worker tls://10.0.0.5:8786" in direct["arguments"]
    assert "cmsaf_hub.reverse" not in direct["arguments"] and "--tls-key" in direct["arguments"]
    assert direct["transfer_input_files"] == "xrootd.token,dask-tls.crt,dask-tls.key"
    assert "CMSAF_WORKER_CREDENTIAL" not in direct["arguments"]


def test_outbound_only_workers_are_pointed_at_the_brokers_own_listener_and_in_pool_ones_are_not():
    config = CondorJobShapeConfig(**SITES, broker_url="https://broker.hub.example:8443")
    outbound = htcondor2.Submit(describe(config, "T2_REMOTE"))
    assert outbound["environment"] == '"CMSAF_BROKER_URL=https://broker.hub.example:8443"'
    assert "environment" not in describe(config, "T2_LNL_PD")
    assert "environment" not in describe(CondorJobShapeConfig(**SITES), "T2_REMOTE")  # unset: through the hub


def test_an_outbound_only_worker_without_the_credential_is_refused():
    with pytest.raises(JobShapeError) as e:
        describe(CondorJobShapeConfig(**SITES), "T2_REMOTE", worker_credential=False)
    assert str(e.value) == "a worker at an outbound-only site needs the cluster's worker credential"


def test_an_in_pool_worker_gets_the_credential_file_besides_its_tls_files():
    desc = describe(CondorJobShapeConfig(**SITES), "T2_LNL_PD")
    script = (
        'export CMSAF_TOKEN_DIR="$_CONDOR_SCRATCH_DIR"; '
        f'export CMSAF_WORKER_CREDENTIAL_FILE="$_CONDOR_SCRATCH_DIR/{WORKER_CREDENTIAL_FILE}"; '
        'export BEARER_TOKEN_FILE="$_CONDOR_SCRATCH_DIR/xrootd.token"; '
        "exec python3 -m distributed.cli.dask_worker tls://10.0.0.5:8786 "
        '--name "$(ClusterId).$(ProcId)" --nthreads 2 --memory-limit 3221225472 --death-timeout 60 '
        "--local-directory $_CONDOR_SCRATCH_DIR --nanny "
        "--tls-ca-file $_CONDOR_SCRATCH_DIR/dask-tls.crt --tls-cert $_CONDOR_SCRATCH_DIR/dask-tls.crt "
        "--tls-key $_CONDOR_SCRATCH_DIR/dask-tls.key"
    )
    assert desc["arguments"] == '"' + quote_arguments(["-c", script]) + '"'
    assert desc["transfer_input_files"] == desc["encrypt_input_files"] == (
        f"xrootd.token,dask-tls.crt,dask-tls.key,{WORKER_CREDENTIAL_FILE}")
    assert "environment" not in desc  # the credential is named by its file's path, in the command only


def test_a_scheduler_job_gets_the_credential_file_to_reach_brokered_workers():
    desc = scheduler_description(JobShape(), cluster_id="c0ffee", owner="alice", token_names=["condor"],
                                 bearer="condor", tls=True, idle_timeout=600, worker_credential=True)
    files = f"condor.token,dask-tls.crt,dask-tls.key,{WORKER_CREDENTIAL_FILE},cmsaf_scheduler_preload.py"
    assert desc["transfer_input_files"] == desc["encrypt_input_files"] == files
    exports = ('"-c \'export CMSAF_TOKEN_DIR=""$_CONDOR_SCRATCH_DIR""; export CMSAF_WORKER_CREDENTIAL_FILE='
               f'""$_CONDOR_SCRATCH_DIR/{WORKER_CREDENTIAL_FILE}""; export BEARER_TOKEN_FILE=')
    assert desc["arguments"].startswith(exports)
    without = scheduler_description(JobShape(), cluster_id="c0ffee", owner="alice", token_names=["condor"],
                                    bearer="condor", tls=True, idle_timeout=600)
    assert WORKER_CREDENTIAL_FILE not in without["transfer_input_files"] + without["arguments"]


def test_outbound_sites_need_the_hub_url():
    config = CondorJobShapeConfig(sites=["T2_REMOTE"], outbound_sites=["T2_REMOTE"])
    with pytest.raises(BackendError) as e:
        config.job_shape(cluster("T2_REMOTE"))
    assert str(e.value) == "HTCondorBackend.hub_url is not set, but outbound-only sites need it"
    assert CondorJobShapeConfig(**SITES).job_shape(cluster("T2_REMOTE")).hub_comm_url == (
        "wss://hub.example/services/cmsaf/clusters/c0ffee/comm")


# --- what the backend sends: the credential from the cluster environment, as a file only ------------

CREDENTIAL = "wc-s3cret-of-c0ffee"
TOKENS = {"condor": "eyJ.alice-condor-secret.sig", "xrootd": "eyJ.alice-xrootd-secret.sig"}
TLS = {"cert": "-----BEGIN CERTIFICATE-----\ncert-body", "key": "-----BEGIN PRIVATE KEY-----\nkey-secret"}


@pytest.fixture
async def backend(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    b = HTCondorBackend(scheduler_placement="htcondor", schedd_name="schedd@pool", state_dir=str(tmp_path / "state"),
                        seam_factory=functools.partial(RecordingSeam, str(record)), status_interval=0.01, **SITES)
    await b.start()
    b.record_dir = record
    yield b
    await b.close()


def service_spec(site: str, *, credential: bool = True) -> ClusterSpec:
    """A cluster as the service's reconciler hands it over: the credential in its environment."""
    spec = cluster(site)
    spec.env = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "30s", **({"CMSAF_WORKER_CREDENTIAL": CREDENTIAL} if credential else {})}
    spec.tls, spec.tokens = dict(TLS), dict(TOKENS)
    spec.backend_state = {"schedd": "schedd@pool", "scheduler_address": "tls://10.0.0.5:8786"}
    return spec


def sent(backend) -> list[dict]:
    return [c for c in recorded_calls(backend.record_dir) if c["method"] in ("submit", "submit_sharing_inputs")]


@pytest.mark.parametrize("site, files", [
    ("T2_LNL_PD", ["cmsaf-worker.credential", "condor.token", "dask-tls.crt", "dask-tls.key", "xrootd.token"]),
    # at an outbound-only site: the credential, and not the cluster's TLS key (not even to the schedd)
    ("T2_REMOTE", ["cmsaf-worker.credential", "condor.token", "xrootd.token"]),
])
async def test_worker_batches_carry_the_credential_as_a_sandbox_file_only(backend, site, files):
    await backend.submit_workers(service_spec(site), 3)
    [submit] = sent(backend)
    _, inputs, desc, count, names, _ = submit["args"]
    assert (count, names) == (3, files)
    assert sorted(inputs["transfer_input_files"].split(",")) == sorted(desc["transfer_input_files"].split(",")) == files
    assert f'CMSAF_WORKER_CREDENTIAL_FILE=""$_CONDOR_SCRATCH_DIR/{WORKER_CREDENTIAL_FILE}""' in desc["arguments"]
    assert desc["environment"] == '"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=30s"'  # the variable itself: dropped
    text = json.dumps(submit["args"][:4])
    assert CREDENTIAL not in text and TLS["key"] not in text and not [t for t in TOKENS.values() if t in text]


async def test_the_scheduler_job_carries_the_credential_as_a_sandbox_file_only(backend):
    write_script(backend.record_dir, query=[{"ClusterId": 100, "ProcId": 0, "JobStatus": 2, "CmsafCluster": "c0ffee",
                                             "CmsafRole": "scheduler", "CmsafSchedulerAddress": "tls://10.1.2.3:1"}])
    await backend.start_scheduler(service_spec("T2_LNL_PD"))
    [submit] = sent(backend)
    _, desc, _, names = submit["args"]
    assert names == ["cmsaf-worker.credential", "cmsaf_scheduler_preload.py", "condor.token", "dask-tls.crt",
                     "dask-tls.key", "xrootd.token"]
    assert WORKER_CREDENTIAL_FILE in desc["transfer_input_files"].split(",")
    assert CREDENTIAL not in json.dumps(desc)


async def test_without_a_credential_in_pool_jobs_get_none_and_outbound_ones_are_refused(backend):
    await backend.submit_workers(service_spec("T2_LNL_PD", credential=False), 1)
    [submit] = sent(backend)
    assert submit["args"][4] == ["condor.token", "dask-tls.crt", "dask-tls.key", "xrootd.token"]
    with pytest.raises(BackendError, match="^a worker at an outbound-only site needs the cluster's worker credential$"):
        await backend.submit_workers(service_spec("T2_REMOTE", credential=False), 1)
    assert len(sent(backend)) == 1  # nothing was sent for it

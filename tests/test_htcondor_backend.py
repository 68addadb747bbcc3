"""HTCondorBackend against the recording double at the bindings seam (in real per-identity processes).

The assertions are about what the backend sends to HTCondor: exact submit descriptions, one call per
batch, constraints, actions, as whom; and about what it makes of HTCondor's answers.
"""

from __future__ import annotations

import functools
import json
import logging

import pytest
from distributed import Scheduler, Worker

from cmsaf_hub.service.backends.base import BackendError, ClusterSpec, WorkerPhase
from cmsaf_hub.service.backends.condor_status import least_loaded_schedd
from cmsaf_hub.service.backends.htcondor import HTCondorBackend
from tests.test_htcondor_seam import RecordingSeam, recorded_calls, write_script

TOKENS = {
    "alice": {"condor": "eyJ.alice-condor-secret.sig", "xrootd": "eyJ.alice-xrootd-secret.sig"},
    "bob": {"condor": "eyJ.bob-condor-secret.sig"},
}
TLS = {"cert": "-----BEGIN CERTIFICATE-----\ncert-body", "key": "-----BEGIN PRIVATE KEY-----\nkey-secret"}
SECRETS = [t for user in TOKENS.values() for t in user.values()] + [TLS["key"]]


def spec(cid="c1", owner="alice", *, tokens=True, state=None, **options) -> ClusterSpec:
    return ClusterSpec(
        id=cid, owner=owner, options={"cores": 1, "memory": 2.0, **options},
        tls=TLS, tokens=dict(TOKENS[owner]) if tokens else {},
        backend_state={"schedd": "schedd@pool", "scheduler_address": "tls://10.0.0.5:8786", **(state or {})},
    )


@pytest.fixture
async def backend(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    service_token = tmp_path / "service.token"
    service_token.write_text("jwt-of-the-read-only-service")
    b = HTCondorBackend(
        scheduler_placement="htcondor", schedd_name="schedd@pool", state_dir=str(tmp_path / "state"),
        seam_factory=functools.partial(RecordingSeam, str(record)), service_token_file=str(service_token),
        sites=["T2_LNL_PD", "T2_BA"], image_allowlist=["registry.cern.ch/cms/coffea:1"],
        status_interval=0.01, held_timeout=600, retire_timeout=5,
    )
    await b.start()
    b.record_dir = record
    yield b
    await b.close()


def calls(backend, method=None):
    return [c for c in recorded_calls(backend.record_dir) if method is None or c["method"] == method]


async def test_a_scale_request_is_one_batched_submit_as_the_owner_without_secrets(backend, caplog):
    caplog.set_level(logging.DEBUG)
    workers = await backend.submit_workers(spec(site="T2_BA"), 100)

    [submit] = calls(backend)
    assert submit["method"] == "submit_sharing_inputs"
    schedd, inputs, desc, count, files, reuse = submit["args"]
    assert (schedd, count, reuse) == ("schedd@pool", 100, None)
    assert files == ["condor.token", "dask-tls.crt", "dask-tls.key", "xrootd.token"]
    # the input files are spooled once, into a job that never runs, for the whole batch
    assert inputs["MY.CmsafRole"] == '"inputs"' and inputs["requirements"] == "false"
    assert inputs["transfer_input_files"] == desc["transfer_input_files"] == "condor.token,xrootd.token,dask-tls.crt,dask-tls.key"
    assert inputs["MY.CmsafCluster"] == desc["MY.CmsafCluster"]
    assert submit["token"] == TOKENS["alice"]["condor"]
    assert desc["MY.CmsafCluster"] == '"c1"' and desc["MY.CmsafOwner"] == '"alice"' and desc["MY.CmsafRole"] == '"worker"'
    assert desc["requirements"] == '(TARGET.SiteName == "T2_BA")'
    assert "tls://10.0.0.5:8786" in desc["arguments"]
    assert 'BEARER_TOKEN_FILE=""$_CONDOR_SCRATCH_DIR/xrootd.token""' in desc["arguments"]
    assert [w.name for w in workers] == [f"101.{i}" for i in range(100)]
    assert workers[7].backend_state == {"job": "101.7"}
    # a second batch with the same files reuses the spooled ones: nothing is spooled again
    more = await backend.submit_workers(spec(site="T2_BA"), 2)
    assert calls(backend)[-1]["args"][5] == ["100.0", "/spool/100.0"] and [w.name for w in more] == ["102.0", "102.1"]
    # no secret in any submit command, nor in the logs
    text = json.dumps(desc) + json.dumps(inputs)
    assert not [s for s in SECRETS if s in text]
    assert not [s for s in SECRETS if s in caplog.text]


async def test_interleaved_users_each_submit_with_their_own_identity(backend):
    for owner in ["alice", "bob", "alice", "bob"]:
        await backend.submit_workers(spec(f"c-{owner}", owner), 2)
    submits = calls(backend, "submit_sharing_inputs")
    assert [(c["args"][2]["MY.CmsafOwner"], c["token"]) for c in submits] == [
        ('"alice"', TOKENS["alice"]["condor"]), ('"bob"', TOKENS["bob"]["condor"]),
        ('"alice"', TOKENS["alice"]["condor"]), ('"bob"', TOKENS["bob"]["condor"]),
    ]
    pids = {c["args"][2]["MY.CmsafOwner"]: set() for c in submits}
    for c in submits:
        pids[c["args"][2]["MY.CmsafOwner"]].add(c["pid"])
    assert all(len(p) == 1 for p in pids.values()) and pids['"alice"'] != pids['"bob"']


async def test_a_refreshed_token_is_used_for_the_next_call(backend):
    await backend.submit_workers(spec(), 1)
    refreshed = spec()
    refreshed.tokens["condor"] = "eyJ.alice-condor-refreshed.sig"
    await backend.submit_workers(refreshed, 1)
    # a later call without tokens (the service's stop specs carry none) still authenticates as alice
    write_script(backend.record_dir, query=[queue_ad("100.0", 2, "c1"), queue_ad("101.0", 1, "c1")])
    await backend.stop_cluster(spec(tokens=False))
    first, second, query, stop = calls(backend)
    assert (first["token"], second["token"], query["token"], stop["token"]) == (
        TOKENS["alice"]["condor"], "eyJ.alice-condor-refreshed.sig", "eyJ.alice-condor-refreshed.sig",
        "eyJ.alice-condor-refreshed.sig")
    assert first["pid"] == second["pid"] == query["pid"] == stop["pid"]
    assert query["args"][:2] == ["schedd@pool", 'member(CmsafCluster, {"c1"})']
    assert stop["args"] == ["schedd@pool", "Remove", ["100.0", "101.0"], "cmsaf: cluster stopped"]


async def test_after_a_restart_an_unknown_owners_cluster_is_stopped_as_the_service(backend):
    write_script(backend.record_dir, query=[queue_ad("100.0", 2, "c1")])
    await backend.stop_cluster(spec(tokens=False))
    query, stop = calls(backend)
    assert query["token"] == stop["token"] == "jwt-of-the-read-only-service"
    assert stop["args"] == ["schedd@pool", "Remove", ["100.0"], "cmsaf: cluster stopped"]
    write_script(backend.record_dir, query=[])
    await backend.stop_cluster(spec("c9", tokens=False))  # nothing in the queue: nothing to remove
    assert [c["method"] for c in calls(backend)] == ["query", "act", "query"]


async def test_image_and_site_are_checked_before_anything_is_submitted(backend):
    with pytest.raises(BackendError, match="image 'evil/miner:latest' is not allowed"):
        await backend.submit_workers(spec(image="evil/miner:latest"), 1)
    with pytest.raises(BackendError, match="site 'T3_NOWHERE' is not one of T2_LNL_PD, T2_BA"):
        await backend.submit_workers(spec(site="T3_NOWHERE"), 1)
    await backend.submit_workers(spec(image="registry.cern.ch/cms/coffea:1"), 1)
    [submit] = calls(backend)
    assert submit["args"][2]["MY.SingularityImage"] == '"registry.cern.ch/cms/coffea:1"'


@pytest.mark.parametrize("message, expected, retryable", [
    ("Failed to submit: ERROR: Parse error", "HTCondor rejected the request while submitting jobs: ", False),
    ("AUTHENTICATE:1003:Failed to authenticate with any method", "HTCondor refused the authentication while submitting jobs: ", False),
    ("Failed to connect to schedd", "HTCondor schedd unreachable while submitting jobs: ", True),
])
async def test_htcondor_errors_become_backend_errors_with_the_htcondor_message(backend, message, expected, retryable):
    write_script(backend.record_dir, fail={"submit_sharing_inputs": message})
    with pytest.raises(BackendError) as info:
        await backend.submit_workers(spec(), 3)
    assert str(info.value) == expected + "RuntimeError: " + message
    assert info.value.retryable is retryable


def queue_ad(job, status, cluster, role="worker", **extra):
    c, p = job.split(".")
    return {"ClusterId": int(c), "ProcId": int(p), "JobStatus": status, "CmsafCluster": cluster, "CmsafRole": role, **extra}


async def test_one_poll_is_one_queue_query_one_history_lookup_and_one_removal_of_long_held_jobs(backend):
    write_script(backend.record_dir, query=[
        queue_ad("7.0", 2, "c1", role="scheduler"), queue_ad("8.0", 2, "c1"),
        queue_ad("8.1", 5, "c1", HoldReason="Transfer input files failure", EnteredCurrentStatus=1),
        queue_ad("9.0", 2, "c2", role="scheduler"), queue_ad("10.0", 1, "c2"),
    ], history=[queue_ad("8.2", 3, "c1", RemoveReason="PeriodicRemove: walltime")])
    a = spec("c1", "alice", tokens=False, state={"workers": {"8.0": {}, "8.1": {}, "8.2": {}}})
    b = spec("c2", "bob", tokens=False, state={"workers": {"10.0": {}}})
    await backend.submit_workers(spec("c0", "alice"), 1)  # the service saw alice's token before
    observed = await backend.poll([a, b])

    submit, query, history, act = calls(backend)
    assert query["method"] == "query" and query["token"] == "jwt-of-the-read-only-service"
    assert query["args"][:2] == ["schedd@pool", 'member(CmsafCluster, {"c1", "c2"})']
    assert history["args"][:2] == ["schedd@pool", "(ClusterId == 8 && ProcId == 2)"]
    assert history["pid"] == query["pid"]  # reads as the read-only identity
    assert act["args"] == ["schedd@pool", "Remove", ["8.1"], "cmsaf: held longer than 600 s"]
    assert (act["token"], act["pid"]) == (TOKENS["alice"]["condor"], submit["pid"])  # removal as the owner
    c1 = observed["c1"].workers
    assert (c1["8.0"].phase, c1["8.1"].phase, c1["8.2"].phase) == (WorkerPhase.RUNNING, WorkerPhase.FAILED, WorkerPhase.FAILED)
    assert c1["8.1"].reason == "removed after being held longer than 600 s: Transfer input files failure"
    assert c1["8.2"].reason == "removed by HTCondor: PeriodicRemove: walltime"
    assert observed["c2"].workers["10.0"].phase is WorkerPhase.QUEUED
    assert observed["c1"].scheduler_alive and observed["c2"].scheduler_alive


async def test_without_a_service_identity_each_owner_polls_their_own_clusters(backend):
    backend.service_token_file = ""
    await backend.submit_workers(spec("c1", "alice"), 1)
    await backend.submit_workers(spec("c2", "bob"), 1)
    await backend.poll([spec("c1", "alice", tokens=False), spec("c2", "bob", tokens=False), spec("c3", "alice", tokens=False)])
    queries = calls(backend, "query")
    assert sorted((q["token"], q["args"][1]) for q in queries) == [
        (TOKENS["alice"]["condor"], 'member(CmsafCluster, {"c1", "c3"})'),
        (TOKENS["bob"]["condor"], 'member(CmsafCluster, {"c2"})'),
    ]


async def test_a_refused_owner_token_falls_back_to_the_service_identity_for_stopping(backend):
    await backend.submit_workers(spec(), 1)  # alice's token is now known, and later expires
    write_script(backend.record_dir, query=[queue_ad("100.0", 2, "c1")],
                 refuse_token={TOKENS["alice"]["condor"]: "AUTHENTICATE:1003:Failed to authenticate: token expired"})
    await backend.stop_cluster(spec(tokens=False))
    alice, service = TOKENS["alice"]["condor"], "jwt-of-the-read-only-service"
    assert [(c["method"], c["token"]) for c in calls(backend)[1:]] == [
        ("query", alice), ("query", service), ("act", alice), ("act", service)]
    assert calls(backend)[-1]["args"] == ["schedd@pool", "Remove", ["100.0"], "cmsaf: cluster stopped"]
    # submissions never fall back: they are the owner's or nothing
    with pytest.raises(BackendError, match="HTCondor refused the authentication while submitting jobs"):
        await backend.submit_workers(spec(), 1)


async def test_an_owner_without_a_known_token_does_not_hide_other_owners_clusters(backend):
    backend.service_token_file = ""
    write_script(backend.record_dir, query=[queue_ad("5.0", 2, "c1")])
    await backend.submit_workers(spec("c1", "alice"), 1)
    observed = await backend.poll([spec("c1", "alice", tokens=False, state={"workers": {"5.0": {}}}),
                                   spec("c2", "bob", tokens=False)])  # bob's token was never seen
    assert set(observed) == {"c1"} and observed["c1"].workers["5.0"].phase is WorkerPhase.RUNNING


async def test_scale_down_retires_the_exact_workers_through_the_scheduler_then_removes_their_jobs(backend):
    async with Scheduler(port=0, dashboard_address=":0") as s:
        async with Worker(s.address, name="100.0"), Worker(s.address, name="100.1"), Worker(s.address, name="100.2"):
            cluster = spec(tokens=False, state={"scheduler_address": s.address})
            await backend.submit_workers(spec(), 1)  # alice's token becomes known
            cluster.tls = {}
            await backend.stop_workers(cluster, {"100.0": {"job": "100.0"}, "100.2": {"job": "100.2"}})
            assert sorted(ws.name for ws in s.workers.values()) == ["100.1"]
    act = calls(backend, "act")[-1]
    assert act["args"] == ["schedd@pool", "Remove", ["100.0", "100.2"], "cmsaf: scaled down"]


async def test_scheduler_job_start_and_its_published_address(backend):
    write_script(backend.record_dir, query=[queue_ad("100.0", 2, "c1", role="scheduler",
        CmsafSchedulerAddress="tls://10.1.2.3:40001", CmsafSchedulerWsAddress="wss://10.1.2.3:40002",
        CmsafDashboardAddress="http://10.1.2.3:40003")])
    info = await backend.start_scheduler(spec(site="T2_LNL_PD"))
    submit, query = calls(backend)
    schedd, desc, count, files = submit["args"]
    assert count == 1 and desc["MY.CmsafRole"] == '"scheduler"' and desc["request_cpus"] == "1"
    assert desc["requirements"] == '(TARGET.SiteName == "T2_LNL_PD")'
    assert "cmsaf_scheduler_preload.py" in files and "cmsaf_scheduler_preload.py" in desc["transfer_input_files"]
    assert query["args"][1] == "ClusterId == 100"
    assert (info.address, info.dashboard_address) == ("tls://10.1.2.3:40001", "http://10.1.2.3:40003")
    assert info.backend_state == {"placement": "htcondor", "schedd": "schedd@pool", "scheduler_job": "100.0",
                                  "scheduler_address": "tls://10.1.2.3:40001", "address": "tls://10.1.2.3:40001",
                                  "ws_address": "wss://10.1.2.3:40002"}


async def test_a_held_scheduler_job_fails_the_start_with_its_hold_reason_and_is_removed(backend):
    write_script(backend.record_dir, query=[queue_ad("100.0", 5, "c1", role="scheduler",
                                                     HoldReason="Failed to initialize user log")])
    with pytest.raises(BackendError, match="scheduler job 100.0 is held: Failed to initialize user log"):
        await backend.start_scheduler(spec())
    act = calls(backend, "act")[-1]
    assert act["args"] == ["schedd@pool", "Remove", ["100.0"], "cmsaf: scheduler start failed"]


async def test_least_loaded_schedd_is_chosen_through_the_collector(backend):
    backend.schedd_name = ""
    write_script(backend.record_dir, schedds=[
        {"Name": "a@pool", "TotalRunningJobs": 50, "TotalIdleJobs": 10},
        {"Name": "b@pool", "TotalRunningJobs": 20, "TotalIdleJobs": 5},
        {"Name": "c@pool", "TotalRunningJobs": 25, "TotalIdleJobs": 0},
    ], query=[queue_ad("100.0", 2, "c1", role="scheduler", CmsafSchedulerAddress="tls://h:1")])
    info = await backend.start_scheduler(spec())
    assert info.backend_state["schedd"] == "b@pool"
    assert calls(backend, "submit")[0]["args"][0] == "b@pool"
    assert least_loaded_schedd([]) is None


IDENTITIES = {TOKENS["alice"]["condor"]: "alice", TOKENS["bob"]["condor"]: "bob",
              "jwt-of-the-read-only-service": "cmsafsvc"}


def queue_state(backend) -> dict[str, int]:
    """JobStatus of every job in the double's queue and history (removed jobs reach the history later)."""
    state = json.loads((backend.record_dir / "queue.json").read_text())
    return {jid: job["JobStatus"] for jid, job in {**state["history"], **state["jobs"]}.items()}


async def test_restart_removes_orphans_as_their_owner_and_retries_what_the_schedd_refused(backend):
    write_script(backend.record_dir, fake_queue=True, identities=IDENTITIES)
    await backend.submit_workers(spec("gone", "alice"), 2)  # inputs job 100.0, workers 101.0, 101.1
    await backend.submit_workers(spec("lost", "bob"), 1)  # 102.0, 103.0
    await backend.submit_workers(spec("alive", "bob"), 1)  # 104.0, 105.0
    await backend.close()
    await backend.start()  # a service restart: no owner's token is known any more

    assert await backend.list_cluster_ids() == {"gone", "lost", "alive"}
    listing = calls(backend, "query")[0]
    assert listing["args"][1] == "(CmsafCluster =!= undefined) && JobStatus != 3"
    assert listing["token"] == "jwt-of-the-read-only-service"
    await backend.submit_workers(spec("other", "alice"), 1)  # alice's token is seen again
    await backend.remove_cluster_resources("gone")
    gone = calls(backend, "act")[-1]
    assert gone["args"] == ["schedd@pool", "Remove", ["100.0", "101.0", "101.1"], "cmsaf: orphaned cluster"]
    assert gone["token"] == TOKENS["alice"]["condor"]
    # bob's token is unknown: the service identity asks, and the schedd refuses another user's jobs
    with pytest.raises(BackendError, match=r"^HTCondor removed 0 of 2 jobs \(2 permission denied\) of orphaned cluster lost$"):
        await backend.remove_cluster_resources("lost")
    assert calls(backend, "act")[-1]["token"] == "jwt-of-the-read-only-service"
    assert queue_state(backend)["102.0"] != 3 and queue_state(backend)["103.0"] != 3  # still there
    # the next poll retries, as bob now that the service can provide his token
    async def provider(owner):
        return dict(TOKENS[owner])

    backend.tokens_provider = provider
    await backend.poll([spec("alive", "bob", tokens=False)])
    retried = calls(backend, "act")[-1]
    assert retried["args"][2] == ["102.0", "103.0"] and retried["token"] == TOKENS["bob"]["condor"]
    await backend.remove_cluster_resources("never-seen")  # nothing queued: nothing to remove
    assert len(calls(backend, "act")) == 3
    jobs = queue_state(backend)
    assert sorted(jid for jid, status in jobs.items() if status == 3) == ["100.0", "101.0", "101.1", "102.0", "103.0"]
    assert sorted(jobs) == ["100.0", "101.0", "101.1", "102.0", "103.0", "104.0", "105.0", "106.0", "107.0"]


@pytest.mark.slow
async def test_service_placement_runs_the_local_backends_scheduler_beside_the_service(tmp_path):
    from cmsaf_hub.service.backends.local import LocalBackend
    from cmsaf_hub.service.crypto import generate_cluster_tls

    record = tmp_path / "record"
    record.mkdir()
    b = HTCondorBackend(scheduler_placement="service", schedd_name="schedd@pool", state_dir=str(tmp_path / "state"),
                        seam_factory=functools.partial(RecordingSeam, str(record)))
    b.scheduler_backend = LocalBackend(state_dir=str(tmp_path / "local"), same_user=True)  # no OS users here
    await b.start()
    try:
        cluster = spec("svc")
        cluster.tls = generate_cluster_tls("svc").as_dict()
        info = await b.start_scheduler(cluster)
        assert info.address.startswith("tls://127.0.0.1:")
        state = info.backend_state
        assert (state["placement"], state["schedd"], state["scheduler_address"]) == ("service", "schedd@pool", info.address)
        assert state["ws_address"].startswith("wss://127.0.0.1:")  # what the hub's relay needs, unchanged
        cluster.backend_state = dict(state)
        await b.submit_workers(cluster, 2)
        [submit] = [c for c in recorded_calls(record) if c["method"] == "submit_sharing_inputs"]
        assert info.address in submit["args"][2]["arguments"]
        assert (await b.poll([cluster]))["svc"].scheduler_alive
        write_script(record, query=[queue_ad("100.0", 2, "svc")])
        await b.stop_cluster(spec("svc", tokens=False, state=state))
        act = [c for c in recorded_calls(record) if c["method"] == "act"][-1]
        assert act["args"][1:3] == ["Remove", ["100.0"]]
        observed = (await b.poll([cluster]))["svc"]
        assert not observed.scheduler_alive and observed.scheduler_reason == "the scheduler process is gone"
    finally:
        await b.close()


async def test_logs_summarise_each_job_of_the_cluster(backend):
    write_script(backend.record_dir, query=[
        queue_ad("7.0", 2, "c1", role="scheduler", RemoteHost="slot1@wn01.example"),
        queue_ad("8.0", 5, "c1", HoldReason="Disk quota exceeded"), queue_ad("8.1", 1, "c1")])
    logs = await backend.logs(spec())
    assert logs == {
        "scheduler": "HTCondor job 7.0: running on slot1@wn01.example",
        "8.0": "HTCondor job 8.0: held (Disk quota exceeded)",
        "8.1": "HTCondor job 8.1: queued",
    }
    [query] = calls(backend)
    assert query["args"][1] == 'member(CmsafCluster, {"c1"})' and "RemoteHost" in query["args"][2]


async def test_stop_after_a_failed_start_looks_on_the_configured_schedd_never_a_local_one(backend):
    write_script(backend.record_dir, query=[queue_ad("100.0", 1, "c1", role="scheduler")])
    await backend.stop_cluster(spec(state={"schedd": None}))  # the start failed before a schedd was kept
    query, act = calls(backend)
    assert (query["args"][0], act["args"]) == ("schedd@pool", ["schedd@pool", "Remove", ["100.0"], "cmsaf: cluster stopped"])
    backend.schedd_name = ""  # no configured schedd: every schedd the collector knows, asked as the owner
    write_script(backend.record_dir, query=[], schedds=[{"Name": "a@pool"}, {"Name": "b@pool"}])
    await backend.stop_cluster(spec(state={"schedd": None}))
    assert [(c["method"], c["args"][0]) for c in calls(backend)[2:]] == [
        ("schedds", ["Name"]), ("query", "a@pool"), ("query", "b@pool")]
    assert {c["token"] for c in calls(backend)[2:]} == {TOKENS["alice"]["condor"]}


async def test_a_removal_the_schedd_refused_is_raised_retryable_and_logged(backend, caplog):
    write_script(backend.record_dir, act={"TotalSuccess": 0, "TotalPermissionDenied": 2})
    cluster = spec(state={"scheduler_address": None})  # no scheduler to retire them through
    with pytest.raises(BackendError) as info:
        await backend.stop_workers(cluster, {"100.0": {"job": "100.0"}, "100.1": {"job": "100.1"}})
    assert str(info.value) == "HTCondor removed 0 of 2 jobs (2 permission denied) while removing jobs (scaled down)"
    assert info.value.retryable
    assert "HTCondor removed 0 of 2 jobs (2 permission denied) (scaled down): 100.0, 100.1" in caplog.text
    write_script(backend.record_dir, act={"TotalSuccess": 1, "TotalAlreadyDone": 1})  # positive control
    await backend.stop_workers(cluster, {"100.0": {"job": "100.0"}, "100.1": {"job": "100.1"}})


async def test_the_service_reconciler_gives_the_backend_its_owner_tokens_provider(backend, tmp_path):
    from cmsaf_hub.service.crypto import SecretBox, new_crypt_key, parse_crypt_keys
    from cmsaf_hub.service.reconciler import Reconciler
    from cmsaf_hub.service.store import Store

    async def provider(owner):
        return dict(TOKENS[owner])

    box = SecretBox(parse_crypt_keys(new_crypt_key()))
    Reconciler(backend=backend, store=Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), secrets=box, tokens_provider=provider)
    assert backend.tokens_provider is provider
    # an orphan of bob's, after a restart: removed as bob, with the token the provider gives
    write_script(backend.record_dir, fake_queue=True, identities=IDENTITIES)
    await backend.submit_workers(spec("lost", "bob"), 1)
    await backend.close()
    await backend.start()
    assert await backend.list_cluster_ids() == {"lost"}
    await backend.remove_cluster_resources("lost")
    act = calls(backend, "act")[-1]
    assert (act["args"][2], act["token"]) == (["100.0", "101.0"], TOKENS["bob"]["condor"])

"""Pure builders of HTCondor submit descriptions and the translation of job ads into observations."""

from __future__ import annotations

import asyncio
import os
import re
import sys

import classad2 as classad
import htcondor2
import pytest
from distributed import Client, Scheduler
from distributed.security import Security
from dask_jobqueue.htcondor import quote_arguments as jobqueue_quote_arguments

from cmsaf_hub.service.backends.base import WorkerPhase
from cmsaf_hub.service.backends.condor_retire import cluster_security
from cmsaf_hub.service.backends.condor_jobs import (
    SCHEDULER_PRELOAD_FILE,
    JobShape,
    JobShapeError,
    bearer_token_name,
    cluster_constraint,
    find_secret,
    inputs_description,
    job_environment,
    quote_arguments,
    reading_inputs_of,
    quote_environment,
    sandbox_files,
    scheduler_description,
    worker_description,
)
from cmsaf_hub.service.backends.condor_scheduler_preload import published_attributes
from cmsaf_hub.service.backends.condor_status import (
    act_shortfall,
    history_constraint,
    missing_jobs,
    observe,
    unused_inputs_jobs,
)
from cmsaf_hub.service.backends.htcondor import PRELOAD_SOURCE
from cmsaf_hub.service.crypto import generate_cluster_tls
from cmsaf_hub.service.token_push import push_tokens

SHAPE = JobShape(cores=2, memory_gib=3.0, disk_gib=1.5, death_timeout=45)


def build(shape: JobShape = SHAPE, **kw) -> dict[str, str]:
    args = dict(cluster_id="c0ffee", owner="alice", scheduler_address="tls://10.0.0.5:8786",
                token_names=["condor", "xrootd"], bearer="xrootd", tls=True)
    args.update(kw)
    return worker_description(shape, **args)


def test_worker_description_is_exact():
    desc = build()
    script = (
        'export CMSAF_TOKEN_DIR="$_CONDOR_SCRATCH_DIR"; '
        'export BEARER_TOKEN_FILE="$_CONDOR_SCRATCH_DIR/xrootd.token"; '
        'export _condor_SCITOKENS_FILE="$_CONDOR_SCRATCH_DIR/condor.token"; '
        "exec python3 -m distributed.cli.dask_worker tls://10.0.0.5:8786 "
        '--name "$(ClusterId).$(ProcId)" --nthreads 2 --memory-limit 3221225472 --death-timeout 45 '
        "--local-directory $_CONDOR_SCRATCH_DIR --nanny "
        "--tls-ca-file $_CONDOR_SCRATCH_DIR/dask-tls.crt --tls-cert $_CONDOR_SCRATCH_DIR/dask-tls.crt "
        "--tls-key $_CONDOR_SCRATCH_DIR/dask-tls.key"
    )
    files = "condor.token,xrootd.token,dask-tls.crt,dask-tls.key"
    assert desc == {
        "universe": "vanilla",
        "executable": "/bin/sh",
        "transfer_executable": "false",
        "arguments": '"' + jobqueue_quote_arguments(["-c", script]) + '"',
        "request_cpus": "2",
        "request_memory": "3072",
        "request_disk": "1572864",
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT_OR_EVICT",
        "transfer_input_files": files,
        "encrypt_input_files": files,
        "transfer_output_files": '""',
        "output": "worker-$(ClusterId).$(ProcId).out",
        "error": "worker-$(ClusterId).$(ProcId).err",
        "leave_in_queue": "false",
        "batch_name": "dask-c0ffee",
        "MY.CmsafCluster": '"c0ffee"',
        "MY.CmsafOwner": '"alice"',
        "MY.CmsafRole": '"worker"',
    }
    # The real submit-language parser accepts it.
    assert htcondor2.Submit(desc)["MY.CmsafRole"] == '"worker"'


def test_container_site_walltime_lifetime_and_extra_directives():
    shape = JobShape(image="/cvmfs/unpacked.cern.ch/coffea:latest", site="T2_LNL_PD", walltime_seconds=7200,
                     lifetime=3600, lifetime_stagger=300, nanny=False, extra_directives={"request_disk": "99", "+Foo": "1"})
    desc = build(shape)
    assert desc["MY.SingularityImage"] == '"/cvmfs/unpacked.cern.ch/coffea:latest"'
    assert desc["requirements"] == '(TARGET.SiteName == "T2_LNL_PD")'
    assert desc["periodic_remove"] == "(JobStatus == 2) && ((time() - JobCurrentStartDate) > 7200)"
    assert "--lifetime 3600s --lifetime-stagger 300s" in desc["arguments"]
    assert "--no-nanny" in desc["arguments"]
    assert desc["request_disk"] == "99" and desc["+Foo"] == "1"
    docker = build(JobShape(image="coffeateam/coffea-dask:latest", container="docker"))
    assert (docker["universe"], docker["docker_image"]) == ("docker", "coffeateam/coffea-dask:latest")
    assert "MY.SingularityImage" not in docker
    htcondor2.Submit(desc)
    htcondor2.Submit(docker)


def test_scheduler_description_publishes_its_address_through_chirp():
    desc = scheduler_description(JobShape(), cluster_id="c0ffee", owner="bob", token_names=["condor"],
                                 bearer="condor", tls=False, idle_timeout=600)
    assert desc["MY.CmsafRole"] == '"scheduler"'
    assert desc["MY.WantIOProxy"] == "true"
    assert ("-m distributed.cli.dask_scheduler --protocol tcp,ws --port 0,0 --dashboard-address :0 "
            "--idle-timeout 600s --preload $_CONDOR_SCRATCH_DIR/cmsaf_scheduler_preload.py") in desc["arguments"]
    assert desc["transfer_input_files"] == "condor.token,cmsaf_scheduler_preload.py"
    htcondor2.Submit(desc)
    prefixed = scheduler_description(JobShape(), cluster_id="c0ffee", owner="bob", token_names=["condor"],
                                     bearer="condor", tls=False, idle_timeout=600,
                                     dashboard_prefix="/services/cmsaf/clusters/c0ffee/dashboard")
    assert "dask_scheduler --dashboard-prefix /services/cmsaf/clusters/c0ffee/dashboard --protocol" in prefixed["arguments"]


async def test_the_scheduler_jobs_published_addresses_reach_a_real_scheduler():
    async with Scheduler(protocol=["tcp", "ws"], port=[0, 0], host="127.0.0.1", dashboard_address=":0") as s:
        attrs = published_attributes([li.contact_address for li in s.listeners], s.services["dashboard"].port)
        address = classad.ExprTree(attrs["CmsafSchedulerAddress"]).eval()
        ws_address = classad.ExprTree(attrs["CmsafSchedulerWsAddress"]).eval()
        assert address.startswith("tcp://127.0.0.1:") and ws_address.startswith("ws://")
        assert classad.ExprTree(attrs["CmsafDashboardAddress"]).eval() == f"http://127.0.0.1:{s.services['dashboard'].port}"
        for target in (address, ws_address):
            async with Client(target, asynchronous=True) as client:
                assert await client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.id) == s.id


def test_tokens_are_files_never_description_values():
    tokens = {"condor": "eyJ.condor-secret.sig", "xrootd": "eyJ.xrootd-secret.sig"}
    tls = {"cert": "-----BEGIN CERTIFICATE-----x", "key": "-----BEGIN PRIVATE KEY-----y"}
    files = sandbox_files(tokens, tls)
    assert files == {"condor.token": tokens["condor"], "xrootd.token": tokens["xrootd"],
                     "dask-tls.crt": tls["cert"], "dask-tls.key": tls["key"]}
    desc = build(token_names=sorted(tokens), env={"DASK_DISTRIBUTED__WORKER__DAEMON": "False"})
    assert find_secret(desc, files.values()) is None
    assert desc["environment"] == '"DASK_DISTRIBUTED__WORKER__DAEMON=False"'
    with pytest.raises(JobShapeError, match="CMSAF_WORKER_CREDENTIAL would be readable by anyone"):
        build(env={"CMSAF_WORKER_CREDENTIAL": "s3cret"})
    # The guard finds a secret wherever it hides.
    assert find_secret(dict(desc, environment=f'"T={tokens["condor"]}"'), files.values()) == "environment"


def test_bearer_token_preference():
    assert bearer_token_name(["condor", "xrootd"], ["xrootd", "condor"]) == "xrootd"
    assert bearer_token_name(["condor"], ["xrootd", "condor"]) == "condor"
    assert bearer_token_name([], ["xrootd"]) is None


@pytest.mark.parametrize("args", [["3", "simple", "arguments"], ["one", "two with spaces", "three"],
                                  ["one", '"two"', "spacy 'quoted' argument"]])
def test_argument_quoting_matches_dask_jobqueue(args):
    assert quote_arguments(args) == jobqueue_quote_arguments(args)


def test_environment_quoting_and_names():
    assert quote_environment({"B": "two words", "A": "it's"}) == "\"A='it''s' B='two words'\""
    with pytest.raises(JobShapeError):
        quote_environment({"BAD NAME": "x"})


def test_constraints_and_injection():
    assert cluster_constraint(["b", "a"]) == 'member(CmsafCluster, {"a", "b"})'
    assert cluster_constraint(["a"], "worker") == '(member(CmsafCluster, {"a"})) && (CmsafRole == "worker")'
    with pytest.raises(JobShapeError, match="invalid cluster id"):
        cluster_constraint(['x" || true || "'])
    with pytest.raises(JobShapeError, match="invalid owner"):
        build(owner="alice bob")
    with pytest.raises(JobShapeError, match="invalid site attribute"):
        build(JobShape(site="T2_BA", site_attribute="Site) || (true"))
    assert history_constraint(["12.1", "3.0"]) == "(ClusterId == 12 && ProcId == 1) || (ClusterId == 3 && ProcId == 0)"


def ad(job, status, role="worker", cluster="c1", **extra):
    c, p = job.split(".")
    return {"ClusterId": int(c), "ProcId": int(p), "JobStatus": status, "CmsafCluster": cluster, "CmsafRole": role, **extra}


def test_observations_cover_every_status_history_and_held_limit():
    known = {"c1": {"5.0": {}, "5.1": {}, "5.2": {}, "5.3": {}, "5.4": {}, "5.5": {}, "5.6": {}}, "c2": {}}
    queue = [
        ad("5.0", 1), ad("5.1", 2), ad("5.2", 5, HoldReason="Disk quota exceeded", EnteredCurrentStatus=1000),
        ad("5.3", 5, HoldReason="Image not found", EnteredCurrentStatus=100),
        ad("6.0", 2),  # a worker of c1 the service does not know: reported, to be adopted
        ad("7.0", 2, cluster="other"),  # not polled: ignored
        ad("4.0", 2, role="scheduler"),
    ]
    history = [ad("5.4", 4, ExitCode=0), ad("5.5", 3, RemoveReason="walltime exceeded"),
               ad("5.6", 3, RemoveReason="cmsaf: scaled down")]
    assert missing_jobs(known, queue) == ["5.4", "5.5", "5.6"]
    result = observe(known, queue, history, now=1100, held_limit=600, scheduler_in_queue=True)
    c1 = result.clusters["c1"]
    phases = {n: (w.phase, w.reason) for n, w in c1.workers.items()}
    assert phases == {
        "5.0": (WorkerPhase.QUEUED, None),
        "5.1": (WorkerPhase.RUNNING, None),
        "5.2": (WorkerPhase.HELD, "Disk quota exceeded"),
        "5.3": (WorkerPhase.FAILED, "removed after being held longer than 600 s: Image not found"),
        "5.4": (WorkerPhase.EXITED, None),
        "5.5": (WorkerPhase.FAILED, "removed by HTCondor: walltime exceeded"),
        "5.6": (WorkerPhase.EXITED, None),  # our own removal is not a failure
        "6.0": (WorkerPhase.RUNNING, None),
    }
    assert result.remove_held == {"5.3": "removed after being held longer than 600 s: Image not found"}
    assert c1.scheduler_alive is True
    c2 = result.clusters["c2"]
    assert (c2.scheduler_alive, c2.scheduler_reason, c2.workers) == (False, "scheduler job left the queue", {})


def test_the_spooling_hold_is_queued_and_a_real_hold_replacing_it_is_held():
    spooling = dict(HoldReason="Spooling input data files", HoldReasonCode=16, HoldReasonSubCode=0,
                    EnteredCurrentStatus=0)
    known = {"c1": {"5.0": {}}}
    # held by the schedd while it receives the input files, far longer than the held limit: queued
    result = observe(known, [ad("5.0", 5, **spooling)], [], now=10_000, held_limit=60, scheduler_in_queue=False)
    assert (result.clusters["c1"].workers["5.0"].phase, result.remove_held) == (WorkerPhase.QUEUED, {})
    # the next look shows a real hold (same status, another code): held, with HTCondor's reason
    real = dict(spooling, HoldReasonCode=13, HoldReasonSubCode=2, EnteredCurrentStatus=9_990,
                HoldReason="Transfer input files failure at access point: reading from file /s/condor.token")
    result = observe(known, [ad("5.0", 5, **real)], [], now=10_000, held_limit=60, scheduler_in_queue=False)
    w = result.clusters["c1"].workers["5.0"]
    assert (w.phase, w.reason) == (WorkerPhase.HELD, real["HoldReason"])
    # a scheduler job in its spooling hold is not alive yet, and not failed either
    sched = observe({"c1": {}}, [ad("4.0", 5, role="scheduler", **spooling)], [], now=0, held_limit=0,
                    scheduler_in_queue=True).clusters["c1"]
    assert (sched.scheduler_alive, sched.scheduler_reason) == (False, "scheduler job is queued")


def test_removed_jobs_lingering_in_the_queue_are_judged_by_their_remove_reason():
    known = {"c1": {"5.0": {}, "5.1": {}}}
    queue = [ad("5.0", 3, RemoveReason="cmsaf: scaled down"), ad("5.1", 3, RemoveReason="via condor_rm (by user bob)")]
    workers = observe(known, queue, [], now=0, held_limit=0, scheduler_in_queue=False).clusters["c1"].workers
    assert {n: (w.phase, w.reason) for n, w in workers.items()} == {
        "5.0": (WorkerPhase.EXITED, None), "5.1": (WorkerPhase.FAILED, "removed by HTCondor: via condor_rm (by user bob)")}


def test_act_totals_say_what_a_removal_did_not_do():
    ids = ["5.0", "5.1", "5.2"]
    assert act_shortfall({"TotalSuccess": 2, "TotalAlreadyDone": 1}, ids) is None
    assert act_shortfall({"TotalSuccess": 1, "TotalNotFound": 2}, ids) is None  # gone already
    assert act_shortfall({"TotalSuccess": 1, "TotalPermissionDenied": 2}, ids) == (
        "HTCondor removed 1 of 3 jobs (2 permission denied)")
    assert act_shortfall({}, ids) == "HTCondor removed 0 of 3 jobs"  # nothing matched, nothing said
    assert act_shortfall({"TotalBadStatus": 1, "TotalError": 2}, ids) == (
        "HTCondor removed 0 of 3 jobs (1 in a state that cannot be removed, 2 failed)")


def test_unused_inputs_jobs_go_after_a_grace_period_the_latest_stays():
    queue = [ad("1.0", 1, role="inputs", QDate=0), ad("2.0", 1, CmsafInputs="1.0"),  # in use
             ad("3.0", 1, role="inputs", QDate=0),  # unused, old: goes
             ad("4.0", 1, role="inputs", QDate=950),  # unused but recent: its workers may be on their way
             ad("5.0", 1, role="inputs", QDate=0),  # unused, old, but the cluster's latest: stays
             ad("6.0", 3, role="inputs", QDate=0), ad("7.0", 3, CmsafInputs="3.0")]
    assert unused_inputs_jobs(queue, ["5.0"], now=1000, grace=600) == ["3.0"]


def test_the_inputs_job_never_runs_and_carries_the_workers_files_and_cluster():
    worker = build()
    inputs = inputs_description(worker)
    assert inputs == {
        "transfer_input_files": worker["transfer_input_files"], "encrypt_input_files": worker["encrypt_input_files"],
        "batch_name": "dask-c0ffee", "MY.CmsafCluster": '"c0ffee"', "MY.CmsafOwner": '"alice"',
        "universe": "vanilla", "executable": "/bin/true", "transfer_executable": "false",
        "should_transfer_files": "YES", "transfer_output_files": '""', "requirements": "false",
        "request_cpus": "1", "request_memory": "1", "request_disk": "1", "leave_in_queue": "false",
        "MY.CmsafRole": '"inputs"'}
    htcondor2.Submit(inputs)
    spool = "/var/lib/condor/spool/41/0/cluster41.proc0.subproc0"
    reading = reading_inputs_of(worker, "41.0", spool)
    files = ",".join(f"{spool}/{name}" for name in ("condor.token", "xrootd.token", "dask-tls.crt", "dask-tls.key"))
    assert reading == {**worker, "initialdir": "/", "transfer_input_files": files, "encrypt_input_files": files,
                       "output": f"{spool}/worker-$(ClusterId).$(ProcId).out",
                       "error": f"{spool}/worker-$(ClusterId).$(ProcId).err", "MY.CmsafInputs": '"41.0"'}
    htcondor2.Submit(reading)


def test_job_environments_are_built_from_the_allowlist_only():
    service_env = {
        "DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": "0.8", "OMP_NUM_THREADS": "1", "TZ": "UTC", "XRD_LOGLEVEL": "Info",
        "CMSAF_CRYPT_KEY": "k", "JUPYTERHUB_API_TOKEN": "t", "CMSAF_CLIENT_SECRET": "s", "IAM_REFRESH_TOKEN": "r",
        "IAM_ID_TOKEN": "i", "DASK_GATEWAY__AUTH__TOKEN": "g", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": "/k",
        "BEARER_TOKEN": "b", "PATH": "/usr/bin", "HOME": "/root", "CMSAF_TOKEN_DIR": "/tmp/x", "OAUTH_CLIENT_SECRET": "c",
    }
    kept, dropped = job_environment(service_env)
    assert kept == {"DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": "0.8", "OMP_NUM_THREADS": "1", "TZ": "UTC",
                    "XRD_LOGLEVEL": "Info"}
    assert set(dropped) == set(service_env) - set(kept)
    assert job_environment({"A": "1", "AB": "2", "B": "3"}, ["A", "B*"]) == ({"A": "1", "B": "3"}, ["AB"])
    with pytest.raises(JobShapeError, match="getenv would copy the service's environment into jobs"):
        build(JobShape(extra_directives={"getenv": "True"}))
    assert "getenv" not in build()


def test_a_job_gone_from_queue_and_history_is_failed():
    result = observe({"c1": {"9.0": {}}}, [], [], now=0, held_limit=0, scheduler_in_queue=False)
    w = result.clusters["c1"].workers["9.0"]
    assert (w.phase, w.reason) == (WorkerPhase.FAILED, "job left the queue and is not in the schedd's history")
    assert result.clusters["c1"].scheduler_alive is True


def condor_arguments(value: str) -> list[str]:
    """Parse HTCondor's "new" argument syntax (the inverse of quote_arguments, outer quotes included)."""
    assert value.startswith('"') and value.endswith('"')
    text, args, current, quoted, i = value[1:-1].replace('""', '"'), [], "", False, 0
    while i < len(text):
        ch = text[i]
        if ch == "'" and quoted and text[i + 1:i + 2] == "'":
            current, i = current + "'", i + 2
            continue
        if ch == "'":
            quoted = not quoted
        elif ch == " " and not quoted:
            if current:
                args.append(current)
            current = ""
        else:
            current += ch
        i += 1
    return args + ([current] if current else [])


@pytest.mark.slow
async def test_the_worker_job_command_runs_a_worker_named_by_its_job_id(tmp_path):
    """What the execute node runs, minus HTCondor: the shell script in a sandbox with the spooled files."""
    tls = generate_cluster_tls("c0ffee").as_dict()
    tokens = {"condor": "eyJ.condor.sig", "xrootd": "eyJ.xrootd.sig"}
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    for name, content in sandbox_files(tokens, tls).items():
        (sandbox / name).write_text(content)
    security = cluster_security(tls)
    server = Security(tls_ca_file=tls["cert"], tls_scheduler_cert=tls["cert"], tls_scheduler_key=tls["key"],
                      require_encryption=True)
    async with Scheduler(protocol="tls", host="127.0.0.1", port=0, dashboard_address=":0", security=server) as s:
        desc = build(JobShape(python=sys.executable, nanny=False, death_timeout=20), scheduler_address=s.address)
        argv = condor_arguments(desc["arguments"])
        assert argv[0] == "-c"
        script = argv[1].replace("$(ClusterId)", "42").replace("$(ProcId)", "7")  # the schedd's expansion
        env = {"PATH": os.environ["PATH"], "_CONDOR_SCRATCH_DIR": str(sandbox)}
        job = await asyncio.create_subprocess_exec(desc["executable"], "-c", script, env=env, cwd=sandbox)
        try:
            async with Client(s.address, security=security, asynchronous=True) as client:
                await client.wait_for_workers(1, timeout=60)
                assert [ws.name for ws in s.workers.values()] == ["42.7"]
                seen = await client.run(lambda: {k: os.environ.get(k) for k in (
                    "BEARER_TOKEN_FILE", "_condor_SCITOKENS_FILE", "CMSAF_TOKEN_DIR")})
                assert list(seen.values()) == [{"BEARER_TOKEN_FILE": f"{sandbox}/xrootd.token",
                                                 "_condor_SCITOKENS_FILE": f"{sandbox}/condor.token",
                                                 "CMSAF_TOKEN_DIR": str(sandbox)}]
                assert await client.submit(lambda x: x + 1, 41) == 42
            result = await push_tokens(s.address, security, {"condor": "eyJ.fresh.sig"})
            assert list(result.written) != [] and (sandbox / "condor.token").read_text() == "eyJ.fresh.sig"
        finally:
            job.terminate()
            await job.wait()


class ChirpRecorder:
    """The starter's side of Chirp, as far as a job setting its own attributes needs it."""

    def __init__(self, cookie: str):
        self.cookie = cookie
        self.attributes: dict[str, str] = {}

    @staticmethod
    def unquote(text: str) -> str:
        return re.sub(r"\\(.)", r"\1", text, flags=re.S)

    async def handle(self, reader, writer):
        authenticated = False
        while line := await reader.readline():
            command, _, rest = line.decode().rstrip("\n").partition(" ")
            if command == "cookie":
                authenticated = rest == self.cookie
                writer.write(b"0\n" if authenticated else b"-1\n")
            elif command == "set_job_attr" and authenticated:
                name, value = re.split(r"(?<!\\) ", rest, maxsplit=1)
                self.attributes[self.unquote(name)] = self.unquote(value)
                writer.write(b"0\n")
            else:
                writer.write(b"-1\n")
            await writer.drain()
        writer.close()


@pytest.mark.slow
async def test_the_scheduler_job_command_publishes_reachable_addresses_through_chirp(tmp_path):
    """The scheduler job's real command and preload, with a Chirp endpoint standing in for the starter."""
    tls = generate_cluster_tls("c0ffee").as_dict()
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    files = {**sandbox_files({"condor": "eyJ.condor.sig"}, tls), SCHEDULER_PRELOAD_FILE: PRELOAD_SOURCE}
    for name, content in files.items():
        (sandbox / name).write_text(content)
    chirp = ChirpRecorder(cookie="chirp-cookie")
    server = await asyncio.start_server(chirp.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    (sandbox / ".chirp.config").write_text(f"127.0.0.1 {port} chirp-cookie\n")

    desc = scheduler_description(JobShape(python=sys.executable), cluster_id="c0ffee", owner="bob",
                                 token_names=["condor"], bearer="condor", tls=True, idle_timeout=600)
    assert desc["transfer_input_files"].split(",") == sorted(files, key=list(files).index)
    [flag, script] = condor_arguments(desc["arguments"])
    env = {"PATH": os.environ["PATH"], "_CONDOR_SCRATCH_DIR": str(sandbox),
           "_CONDOR_CHIRP_CONFIG": str(sandbox / ".chirp.config")}
    job = await asyncio.create_subprocess_exec(desc["executable"], flag, script, env=env, cwd=sandbox)
    try:
        for _ in range(600):
            if "CmsafSchedulerAddress" in chirp.attributes or job.returncode is not None:
                break
            await asyncio.sleep(0.1)
        published = {k: classad.ExprTree(v).eval() for k, v in chirp.attributes.items()}
        assert set(published) == {"CmsafSchedulerAddress", "CmsafSchedulerWsAddress", "CmsafDashboardAddress"}
        assert published["CmsafSchedulerAddress"].startswith("tls://")
        assert published["CmsafSchedulerWsAddress"].startswith("wss://")
        async with Client(published["CmsafSchedulerAddress"], security=cluster_security(tls),
                          asynchronous=True, timeout=30) as client:
            token_dir = await client.run_on_scheduler(lambda: os.environ["CMSAF_TOKEN_DIR"])
            assert token_dir == str(sandbox)
    finally:
        server.close()
        if job.returncode is None:
            job.terminate()
        await job.wait()


def test_the_cli_shows_why_workers_are_held():
    from cmsaf_hub.client.cli import format_report, format_table
    from cmsaf_hub.client.report import ClusterReport

    held = ClusterReport.from_json({"id": "c1", "owner": "alice", "status": "running", "workers": {
        "requested": 2, "running": 1, "held": 1, "held_reasons": ["Transfer input files failure at access point"]}})
    fine = ClusterReport.from_json({"id": "c2", "owner": "alice", "status": "running", "workers": {"requested": 1}})
    lines = format_table([held, fine]).splitlines()
    assert len(lines) == 4 and lines[-1] == "c1: held: Transfer input files failure at access point"
    assert format_report(held) == "c1  running  workers 1/2\n  held: Transfer input files failure at access point"
    assert format_report(fine) == "c2  running  workers 0/1"

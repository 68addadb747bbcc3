"""The HTCondor seam: per-identity client processes, and the recording double used by backend tests.

``RecordingSeam`` stands in for :class:`CondorSeam` inside the real per-identity processes. It
records every call (with the process id and the token file the process would authenticate with)
as JSON lines, parses every submit description with the real ``htcondor2.Submit``, and answers
from a script file the test writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import functools
import json
import os
import socket
import stat
import time
from pathlib import Path

import jwt
import pytest

from cmsaf_hub.service.backends.condor_seam import CondorSeam, IdentityProcesses, SeamError, _ad_to_dict, classify_error


# --- a double of the bindings: what a real pool does, rule by rule ----------------------------
#
# Calibrated on a real HTCondor 25.13.2 personal pool (collector, negotiator, schedd, startd on
# 127.0.0.1, SciTokens from the dev IAM; tests/integration/), each rule says which real behaviour
# it stands for. Time is counted in queries (one query = one look at the queue), not seconds.

SPOOLING_HOLD = {"JobStatus": 5, "HoldReasonCode": 16, "HoldReasonSubCode": 0,
                 "HoldReason": "Spooling input data files"}


class FakePool:
    """A schedd's queue and history in ``<dir>/queue.json`` (shared by every client process)."""

    def __init__(self, directory: Path, script: dict):
        self.dir = Path(directory)
        self.script = script

    def transaction(self, change=None) -> dict:
        """Read (and with ``change``, update) the pool state under a lock."""
        with open(self.dir / "queue.json", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            state = json.loads(f.read() or '{"next": 100, "jobs": {}, "history": {}}')
            result = change(state) if change is not None else None
            if change is not None:
                f.seek(0)
                f.truncate()
                f.write(json.dumps(state))
        return state if change is None else result

    def identity(self, token: str | None) -> str:
        """Rule: the schedd maps ``<iss>,<sub>`` of the token to a local user (CERTIFICATE_MAPFILE);
        an unmapped token fails authentication (the call raises)."""
        user = self.script.get("identities", {}).get(token or "")
        if user is None and token and token.count(".") == 2:
            with contextlib.suppress(Exception):
                user = self.script.get("subs", {}).get(jwt.decode(token, options={"verify_signature": False})["sub"])
        if user is None:
            raise RuntimeError("AUTHENTICATE:1003:Failed to authenticate with any method")
        return user


class FakeSubmitResult:
    def __init__(self, cluster: int, count: int, staging: str | None):
        self._cluster, self._count, self.staging = cluster, count, staging

    def cluster(self) -> int:
        return self._cluster

    def first_proc(self) -> int:
        return 0

    def num_procs(self) -> int:
        return self._count


def _classad_value(text: str):
    import classad2

    value = classad2.ExprTree(text).eval()
    return value if isinstance(value, (str, int, float, bool)) else text


class FakeSchedd:
    """``htcondor2.Schedd`` as the real one answered, for the caller ``user``."""

    def __init__(self, pool: FakePool, user: str):
        self.pool, self.user = pool, user

    def submit(self, submit, count: int = 1, spool: bool = False) -> FakeSubmitResult:
        desc = dict(submit)
        attrs = {k.split(".", 1)[1] if k.startswith("MY.") else k[1:]: _classad_value(v)
                 for k, v in desc.items() if k.startswith(("MY.", "+"))}
        inputs = [f for f in desc.get("transfer_input_files", "").split(",") if f]

        def add(state):
            cluster = state["next"]
            state["next"] += 1
            now = time.time()
            for proc in range(count):
                job = {"ClusterId": cluster, "ProcId": proc, "JobStatus": 1, "QDate": now,
                       "EnteredCurrentStatus": now, "Iwd": desc.get("initialdir", "/"), "TransferInput": inputs,
                       # Rule: Owner is the user the schedd mapped the submitter's token to.
                       "Owner": self.user, "Requirements": desc.get("requirements", "true"),
                       "_seen_idle": 0, **attrs}
                if spool:
                    # Rule: a spooled submission is queued held by the schedd itself
                    # (HoldReasonCode 16, "Spooling input data files") until its files arrive.
                    job.update(SPOOLING_HOLD)
                state["jobs"][f"{cluster}.{proc}"] = job
            return cluster

        cluster = self.pool.transaction(add)
        return FakeSubmitResult(cluster, count, desc.get("initialdir") if spool else None)

    def spool(self, result: FakeSubmitResult) -> None:
        """Rule: spool() uploads each job's input files into its own spool directory, rewrites its
        Iwd there, and the schedd releases the job ("Data files spooled"): Idle."""
        files = {name: Path(result.staging, name).read_text() for name in os.listdir(result.staging)}

        def release(state):
            for jid, job in state["jobs"].items():
                if job["ClusterId"] == result.cluster():
                    iwd = self.pool.dir / "spool" / str(job["ClusterId"]) / str(job["ProcId"])
                    iwd.mkdir(parents=True, exist_ok=True)
                    for name in job["TransferInput"]:
                        if name not in files:
                            raise RuntimeError(f"SECMAN:2007:File transfer failed: {name} not found")
                        (iwd / name).write_text(files[name])
                    for key in SPOOLING_HOLD:
                        job.pop(key, None)
                    job.update(JobStatus=1, Iwd=str(iwd), EnteredCurrentStatus=time.time(),
                               ReleaseReason="Data files spooled")

        self.pool.transaction(release)

    def edit(self, job_spec, attr: str, value: str) -> None:
        def change(state):
            for job in state["jobs"].values():
                if str(job["ClusterId"]) == str(job_spec).split(".")[0]:
                    job[attr] = _classad_value(value)

        self.pool.transaction(change)

    def _advance(self, state) -> None:
        """One look at the queue = one negotiation cycle.

        Rule: a job is Idle (1) at least once before it runs (matched by the negotiator, then
        claimed); ``requirements = false`` never matches. Rule: when its input files are missing from
        its Iwd the shadow cannot transfer them: held with HoldReasonCode 13 (TransferInputError).
        Rule: a removed job lingers in the queue in state X (3) for ``linger`` looks, then is
        in the history."""
        linger = self.pool.script.get("linger", 2)
        for jid, job in list(state["jobs"].items()):
            if job["JobStatus"] == 3:
                job["_lingered"] = job.get("_lingered", 0) + 1
                if job["_lingered"] > linger:
                    state["history"][jid] = state["jobs"].pop(jid)
            elif job["JobStatus"] == 1 and job["Requirements"] != "false":
                if job["_seen_idle"] < 1:
                    job["_seen_idle"] += 1
                    continue
                missing = [f for f in job["TransferInput"] if not Path(job["Iwd"], f).exists()]
                if missing:
                    job.update(JobStatus=5, HoldReasonCode=13, HoldReasonSubCode=2, EnteredCurrentStatus=time.time(),
                               HoldReason=f"Transfer input files failure at access point: reading from file "
                                          f"{Path(job['Iwd'], missing[0])}: (errno 2) No such file or directory")
                else:
                    job.update(JobStatus=2, EnteredCurrentStatus=time.time())

    @staticmethod
    def _project(job: dict, projection: list[str], server_time: bool = True):
        """Rule: a query returns the projected attributes the job has, plus the schedd's
        ``ServerTime``, and no others (the history adds no ServerTime)."""
        import classad2

        ad = {k: v for k, v in job.items() if not k.startswith("_") and k != "TransferInput"
              and (not projection or k in projection)}
        if server_time:
            ad["ServerTime"] = int(time.time())
        return classad2.ClassAd(ad)

    @staticmethod
    def _matches(job: dict, constraint: str) -> bool:
        import classad2

        return classad2.ExprTree(constraint).eval(classad2.ClassAd(
            {k: v for k, v in job.items() if not k.startswith("_") and k != "TransferInput"})) is True

    def query(self, constraint: str = "true", projection: list[str] = ()):
        def look(state):
            self._advance(state)
            return [j for j in state["jobs"].values() if self._matches(j, constraint)]

        return [self._project(j, list(projection)) for j in self.pool.transaction(look)]

    def history(self, constraint, projection, match=-1):
        jobs = [j for j in self.pool.transaction()["history"].values() if self._matches(j, constraint)]
        return [self._project(j, list(projection), False) for j in jobs[:match if match > 0 else None]]

    def act(self, action, job_spec, reason=None):
        """Rule: act() reports totals and never raises for refused jobs: another user's job is
        TotalPermissionDenied unless the caller is a queue super user; an already removed job is
        TotalAlreadyDone; an unknown id is TotalNotFound. Holding a job held by the user or by
        spooling is TotalAlreadyDone; a removed or completed job cannot be held. Rule: the schedd
        appends " (by user <name>)" to the reason given (HoldReason, RemoveReason)."""
        name = getattr(action, "name", str(action))
        text = f"{reason[0] if isinstance(reason, tuple) else reason} (by user {self.user})"

        def apply(state):
            totals = dict.fromkeys(["TotalError", "TotalSuccess", "TotalNotFound", "TotalBadStatus",
                                    "TotalAlreadyDone", "TotalPermissionDenied"], 0)
            ids = job_spec if isinstance(job_spec, list) else [
                jid for jid, j in state["jobs"].items() if self._matches(j, str(job_spec))]
            supers = self.pool.script.get("super_users", [])
            for jid in ids:
                job = state["jobs"].get(jid)
                if job is None:
                    totals["TotalNotFound"] += 1
                elif job["Owner"] != self.user and self.user not in supers:
                    totals["TotalPermissionDenied"] += 1
                elif name == "Remove":
                    if job["JobStatus"] == 3:
                        totals["TotalAlreadyDone"] += 1
                        continue
                    job.update(JobStatus=3, RemoveReason=text, EnteredCurrentStatus=time.time(), _lingered=0)
                    totals["TotalSuccess"] += 1
                elif name == "Hold":
                    if job["JobStatus"] == 5 and job.get("HoldReasonCode") in (1, 16):
                        totals["TotalAlreadyDone"] += 1
                    elif job["JobStatus"] in (3, 4):
                        totals["TotalPermissionDenied"] += 1
                    else:
                        job.update(JobStatus=5, HoldReasonCode=1, HoldReasonSubCode=0, HoldReason=text,
                                   EnteredCurrentStatus=time.time())
                        totals["TotalSuccess"] += 1
                else:
                    totals["TotalError"] += 1
            totals["TotalJobAds"] = len(ids)
            return totals

        return self.pool.transaction(apply)


class FakeBindings:
    """The names of ``htcondor2`` that :class:`CondorSeam` uses, over a :class:`FakePool`."""

    JobAction = enum.Enum("JobAction", "Remove Hold Release")
    DaemonType = enum.Enum("DaemonType", "Schedd")
    AdType = enum.Enum("AdType", "Schedd")

    def __init__(self, pool: FakePool, token_file: str):
        self._pool, self._token_file = pool, token_file

    def Submit(self, description):  # noqa: N802 (the bindings' name)
        import htcondor2

        htcondor2.Submit(description)  # the real parser must accept the description
        return dict(description)

    def _user(self) -> str:
        token = Path(self._token_file).read_text() if os.path.exists(self._token_file) else None
        return self._pool.identity(token)

    def Schedd(self, location=None):  # noqa: N802
        return FakeSchedd(self._pool, self._user())

    def Collector(self):  # noqa: N802
        bindings = self

        class Collector:
            def locate(self, daemon_type, name=None):
                return {"Name": name}

            def query(self, ad_type, constraint, projection):
                return [classad2.ClassAd(ad) for ad in bindings._pool.script.get("schedds", [])]

        import classad2

        return Collector()


class RecordingSeam:
    """Records exact calls to files under ``record_dir``; answers from ``record_dir/script.json``.

    With ``{"fake_queue": true}`` in the script, every call runs the real :class:`CondorSeam` over
    :class:`FakeBindings` (its spool path included), against the rules of :class:`FakePool`;
    otherwise queries and history are answered from the script as written.
    """

    def __init__(self, record_dir: str):
        self.dir = Path(record_dir)

    def _script(self) -> dict:
        path = self.dir / "script.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _record(self, method: str, args: list) -> dict:
        token_file = os.environ.get("_condor_SCITOKENS_FILE", "")
        entry = {
            "pid": os.getpid(),
            "method": method,
            "args": args,
            "token": Path(token_file).read_text() if token_file and os.path.exists(token_file) else None,
            "token_file_mode": stat.S_IMODE(os.stat(token_file).st_mode) if os.path.exists(token_file) else None,
            "inherited": {k: os.environ[k] for k in ("BEARER_TOKEN_FILE", "_condor_SCHEDD_HOST") if k in os.environ},
            "condor_env": {k: v for k, v in os.environ.items() if k.startswith("_condor_")},
        }
        with open(self.dir / "calls.jsonl", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps(entry) + "\n")
        script = self._script()
        failure = script.get("fail", {}).get(method) or script.get("refuse_token", {}).get(entry["token"] or "")
        if failure:
            raise RuntimeError(failure)
        return entry

    def _real(self) -> CondorSeam | None:
        script = self._script()
        if not script.get("fake_queue"):
            return None
        return CondorSeam(bindings=FakeBindings(FakePool(self.dir, script), os.environ["_condor_SCITOKENS_FILE"]))

    def _next_cluster(self) -> int:
        with open(self.dir / "next_cluster", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            n = int(f.read() or 100)
            f.seek(0)
            f.truncate()
            f.write(str(n + 1))
        return n

    def submit(self, schedd, description, count, files):
        import htcondor2

        htcondor2.Submit(description)  # the real parser must accept the description
        self._record("submit", [schedd, description, count, sorted(files)])
        if (real := self._real()) is not None:
            return real.submit(schedd, description, count, files)
        cluster = self._next_cluster()
        return [f"{cluster}.{i}" for i in range(count)]

    def submit_sharing_inputs(self, schedd, inputs, description, count, files, reuse=None):
        import htcondor2

        htcondor2.Submit(inputs)
        htcondor2.Submit(description)
        self._record("submit_sharing_inputs", [schedd, inputs, description, count, sorted(files), reuse])
        if (real := self._real()) is not None:
            return real.submit_sharing_inputs(schedd, inputs, description, count, files, reuse)
        holder = reuse[0] if reuse else f"{self._next_cluster()}.0"
        cluster = self._next_cluster()
        return {"inputs": holder, "iwd": reuse[1] if reuse else f"/spool/{holder}",
                "jobs": [f"{cluster}.{i}" for i in range(count)]}

    def query(self, schedd, constraint, projection):
        self._record("query", [schedd, constraint, projection])
        script = self._script()
        time.sleep(script.get("delay", {}).get("query", 0))
        if (real := self._real()) is not None:
            return real.query(schedd, constraint, projection)
        return script.get("query", [])

    def history(self, schedd, constraint, projection, match):
        self._record("history", [schedd, constraint, projection, match])
        if (real := self._real()) is not None:
            return real.history(schedd, constraint, projection, match)
        return self._script().get("history", [])

    def act(self, schedd, action, job_spec, reason):
        self._record("act", [schedd, action, job_spec, reason])
        if (real := self._real()) is not None:
            return real.act(schedd, action, job_spec, reason)
        return self._script().get("act", {"TotalSuccess": len(job_spec) if isinstance(job_spec, list) else 1})

    def schedds(self, projection):
        self._record("schedds", [projection])
        return self._script().get("schedds", [])


def recorded_calls(record_dir: Path) -> list[dict]:
    path = Path(record_dir) / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_script(record_dir: Path, **script) -> None:
    (Path(record_dir) / "script.json").write_text(json.dumps(script))


@pytest.fixture
async def processes(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    procs = IdentityProcesses(
        state_dir=tmp_path / "state",
        condor_env={"_condor_SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS"},
        seam_factory=functools.partial(RecordingSeam, str(record)),
        max_processes=4,
    )
    procs.record_dir = record
    yield procs
    await procs.close()


async def test_each_identity_runs_only_in_its_own_process_with_its_own_token(processes, monkeypatch):
    # What a service process may have inherited must not reach the client processes.
    monkeypatch.setenv("BEARER_TOKEN_FILE", "/service/own.token")
    monkeypatch.setenv("_condor_SCHEDD_HOST", "inherited.example")
    order = ["alice", "bob", "alice", "bob", "alice", "alice", "bob"]
    tokens = {"alice": "jwt-of-alice", "bob": "jwt-of-bob"}
    await asyncio.gather(*(processes.call(u, tokens[u], "query", None, f"n == {i}", []) for i, u in enumerate(order)))

    calls = recorded_calls(processes.record_dir)
    assert len(calls) == len(order)
    by_constraint = {c["args"][1]: c for c in calls}
    pids = {u: {by_constraint[f"n == {i}"]["pid"] for i, x in enumerate(order) if x == u} for u in tokens}
    assert len(pids["alice"]) == 1 and len(pids["bob"]) == 1
    assert pids["alice"] != pids["bob"]
    for i, user in enumerate(order):
        call = by_constraint[f"n == {i}"]
        assert call["token"] == tokens[user]
        assert call["token_file_mode"] == 0o600
        assert call["inherited"] == {}
        assert call["condor_env"]["_condor_SEC_CLIENT_AUTHENTICATION_METHODS"] == "SCITOKENS"


async def test_refreshed_token_replaces_the_file_in_the_same_process(processes):
    await processes.call("alice", "first-token", "query", None, "true", [])
    await processes.call("alice", "second-token", "query", None, "true", [])
    first, second = recorded_calls(processes.record_dir)
    assert first["pid"] == second["pid"]
    assert (first["token"], second["token"]) == ("first-token", "second-token")


async def test_a_process_refuses_calls_addressed_to_another_identity(processes):
    await processes.call("alice", "jwt-of-alice", "query", None, "true", [])
    with pytest.raises(SeamError, match="refused by the process of 'alice'"):
        await processes.client("alice").request("bob", "jwt-of-bob", "query", (None, "true", []), ())
    # bob's token never reached alice's process
    assert [c["token"] for c in recorded_calls(processes.record_dir)] == ["jwt-of-alice"]


async def test_errors_come_back_classified_and_without_the_token(processes):
    write_script(processes.record_dir, fail={"act": "AUTHENTICATE: failed for token secret-jwt-123"})
    with pytest.raises(SeamError) as info:
        await processes.call("alice", "secret-jwt-123", "act", None, "Remove", ["1.0"], "r")
    assert info.value.kind == "auth"
    assert "secret-jwt-123" not in str(info.value) and "[redacted]" in str(info.value)


async def test_a_cancelled_call_does_not_leave_its_reply_for_the_next_one(processes):
    write_script(processes.record_dir, query=[{"answer": "slow"}], delay={"query": 30})
    slow = asyncio.ensure_future(processes.call("alice", "jwt-of-alice", "query", None, "slow", []))
    while not recorded_calls(processes.record_dir):
        await asyncio.sleep(0.05)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    write_script(processes.record_dir, query=[{"answer": "fresh"}])
    assert await processes.call("alice", "jwt-of-alice", "query", None, "fast", []) == [{"answer": "fresh"}]
    first, second = recorded_calls(processes.record_dir)
    assert first["pid"] != second["pid"]  # a new process, born with alice's identity again
    assert second["token"] == "jwt-of-alice"


async def test_least_recently_used_process_is_stopped_beyond_the_cap(processes):
    processes.max_processes = 2
    for user in ["alice", "bob", "alice", "carol"]:
        await processes.call(user, f"jwt-{user}", "query", None, "true", [])
    assert processes.identities() == ["alice", "carol"]


async def test_a_call_without_a_token_is_refused_before_any_process_starts(processes):
    with pytest.raises(SeamError, match="no condor token for alice"):
        await processes.call("alice", None, "query", None, "true", [])
    assert processes.identities() == []


@pytest.mark.parametrize(
    "message, kind",
    [
        ("SECMAN:2007:Failed to end classad message. AUTHENTICATE:1003:Failed to authenticate", "auth"),
        ("Failed to connect to schedd at <127.0.0.1:9618>", "unreachable"),
        ("Unable to locate local daemon", "unreachable"),
        ("HTCondorException: Failed communication with collector.", "unreachable"),
        ("Failed to submit: ERROR: Parse error in expression", "rejected"),
        ("something else", "error"),
    ],
)
def test_error_classification(message, kind):
    assert classify_error(message) == kind


async def test_real_bindings_report_an_unreachable_pool(tmp_path):
    """The real seam, in a real client process, against a collector port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = IdentityProcesses(
        state_dir=tmp_path,
        condor_env={"_condor_COLLECTOR_HOST": f"127.0.0.1:{port}", "_condor_TOOL_TIMEOUT_MULTIPLIER": "1"},
        seam_factory=CondorSeam,
    )
    try:
        with pytest.raises(SeamError) as info:
            await procs.call("alice", "jwt-of-alice", "schedds", ["Name"])
        assert info.value.kind == "unreachable"
        assert "jwt-of-alice" not in str(info.value)
    finally:
        await procs.close()


def test_classads_become_plain_values_that_cross_processes():
    import pickle

    import classad2

    ad = classad2.ClassAd({"JobStatus": 5, "HoldReason": "Disk quota exceeded", "CmsafCluster": "c1", "Mem": 2.5})
    ad["Held"] = classad2.ExprTree("JobStatus == 5")
    ad["Missing"] = classad2.ExprTree("undefined")
    ad["Ids"] = classad2.ExprTree('{"a", "b"}')
    plain = _ad_to_dict(ad)
    assert {k: plain[k] for k in ("JobStatus", "HoldReason", "CmsafCluster", "Mem", "Held", "Missing")} == {
        "JobStatus": 5, "HoldReason": "Disk quota exceeded", "CmsafCluster": "c1", "Mem": 2.5,
        "Held": True, "Missing": None}
    assert isinstance(plain["Ids"], str)
    assert pickle.loads(pickle.dumps(plain)) == plain


def fake_pool_seam(tmp_path, user_tokens: dict[str, str], **script):
    """The real CondorSeam over the double's bindings, calling as the holder of ``token_file``."""
    (tmp_path / "pool").mkdir(exist_ok=True)
    script = {"fake_queue": True, "identities": {t: u for u, t in user_tokens.items()}, **script}
    seams = {}
    for user, token in user_tokens.items():
        (tmp_path / f"{user}.token").write_text(token)
        seams[user] = CondorSeam(bindings=FakeBindings(FakePool(tmp_path / "pool", script), str(tmp_path / f"{user}.token")))
    return seams


def test_the_real_seam_spools_a_batchs_files_once_and_its_workers_read_them_from_there(tmp_path):
    from cmsaf_hub.service.backends.condor_jobs import JobShape, inputs_description, worker_description

    seams = fake_pool_seam(tmp_path, {"alice": "tok-a", "bob": "tok-b"})
    desc = worker_description(JobShape(), cluster_id="c1", owner="alice", scheduler_address="tls://h:1",
                              token_names=["condor"], bearer="condor", tls=True)
    files = {"condor.token": "tok-a", "dask-tls.crt": "CERT", "dask-tls.key": "KEY"}
    out = seams["alice"].submit_sharing_inputs(None, inputs_description(desc), desc, 3, files)
    assert (out["inputs"], out["jobs"]) == ("100.0", ["101.0", "101.1", "101.2"])
    assert out["iwd"] == str(tmp_path / "pool" / "spool" / "100" / "0")
    assert {p.name: p.read_text() for p in Path(out["iwd"]).iterdir()} == files  # spooled once, for all three
    alice = seams["alice"]
    projection = ["ClusterId", "ProcId", "JobStatus", "Owner", "CmsafRole", "CmsafInputs", "TransferInput", "Iwd"]
    first = {f"{a['ClusterId']}.{a['ProcId']}": a for a in alice.query(None, "true", projection)}
    assert {j: (a["JobStatus"], a["Owner"]) for j, a in first.items()} == {
        "100.0": (1, "alice"), "101.0": (1, "alice"), "101.1": (1, "alice"), "101.2": (1, "alice")}  # idle first
    assert first["101.1"]["CmsafInputs"] == "100.0" and first["101.1"]["Iwd"] == "/"
    then = {f"{a['ClusterId']}.{a['ProcId']}": a["JobStatus"] for a in alice.query(None, "true", ["ClusterId", "ProcId", "JobStatus"])}
    assert then == {"100.0": 1, "101.0": 2, "101.1": 2, "101.2": 2}  # the inputs job never runs
    [ad] = alice.query(None, "ProcId == 2", ["JobStatus"])
    assert ad.pop("ServerTime") > 0 and ad == {"JobStatus": 2}  # projections are honoured (+ ServerTime)
    # another user cannot remove alice's jobs, and act() says so in its totals instead of raising
    denied = seams["bob"].act(None, "Remove", ["101.0", "101.9"], "cmsaf: test")
    assert (denied["TotalPermissionDenied"], denied["TotalNotFound"], denied["TotalSuccess"]) == (1, 1, 0)
    done = alice.act(None, "Remove", ["101.0"], "cmsaf: test")
    assert done["TotalSuccess"] == 1 and alice.act(None, "Remove", ["101.0"], "again")["TotalAlreadyDone"] == 1
    # removed jobs linger in state X for a while, then are in the history
    looks = [[a["JobStatus"] for a in alice.query(None, "ClusterId == 101 && ProcId == 0", ["JobStatus"])] for _ in range(3)]
    assert looks == [[3], [3], []]
    assert alice.history(None, "ClusterId == 101 && ProcId == 0", ["RemoveReason"], 1) == [
        {"RemoveReason": "cmsaf: test (by user alice)"}]


def test_a_spooled_submission_is_held_by_the_schedd_until_spooled(tmp_path):
    seams = fake_pool_seam(tmp_path, {"alice": "tok-a"})
    bindings = seams["alice"]._htcondor
    schedd = bindings.Schedd()
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "in.txt").write_text("x")
    result = schedd.submit(bindings.Submit({"executable": "/bin/true", "transfer_input_files": "in.txt",
                                            "initialdir": str(staging)}), count=1, spool=True)
    held = [{k: v for k, v in a.items() if k != "ServerTime"}
            for a in schedd.query("true", ["JobStatus", "HoldReasonCode", "HoldReason"])]
    assert held == [{"JobStatus": 5, "HoldReasonCode": 16, "HoldReason": "Spooling input data files"}]
    assert schedd.act(bindings.JobAction.Hold, ["100.0"], ("too early", None))["TotalAlreadyDone"] == 1
    schedd.spool(result)
    assert [{k: v for k, v in a.items() if k != "ServerTime"} for a in schedd.query("true", ["JobStatus", "HoldReasonCode"])] == [
        {"JobStatus": 1}]


def test_an_unmapped_token_fails_authentication(tmp_path):
    seams = fake_pool_seam(tmp_path, {"alice": "tok-a"})
    (tmp_path / "alice.token").write_text("tok-unknown")
    with pytest.raises(RuntimeError, match="AUTHENTICATE:1003"):
        seams["alice"].query(None, "true", [])

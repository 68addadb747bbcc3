"""The HTCondor seam: per-identity client processes, and the recording double used by backend tests.

``RecordingSeam`` stands in for :class:`CondorSeam` inside the real per-identity processes. It
records every call (with the process id and the token file the process would authenticate with)
as JSON lines, parses every submit description with the real ``htcondor2.Submit``, and answers
from a script file the test writes.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from cmsaf_hub.service.backends.condor_seam import CondorSeam, IdentityProcesses, SeamError, _ad_to_dict, classify_error


class RecordingSeam:
    """Records exact calls to files under ``record_dir``; answers from ``record_dir/script.json``."""

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

    def _next_cluster(self) -> int:
        with open(self.dir / "next_cluster", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            n = int(f.read() or 100)
            f.seek(0)
            f.truncate()
            f.write(str(n + 1))
        return n

    # With ``{"fake_queue": true}`` in the script, submitted jobs run at once and the queue and
    # history are answered from them, constraints evaluated by the real ClassAd library.

    def _queue(self, update=None) -> dict:
        with open(self.dir / "queue.json", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            jobs = json.loads(f.read() or "{}")
            if update is not None:
                update(jobs)
                f.seek(0)
                f.truncate()
                f.write(json.dumps(jobs))
        return jobs

    @staticmethod
    def _matching(jobs: dict, constraint: str) -> list[dict]:
        import classad2

        expr = classad2.ExprTree(constraint)
        return [ad for ad in jobs.values() if expr.eval(classad2.ClassAd(ad)) is True]

    def submit(self, schedd, description, count, files):
        import htcondor2

        htcondor2.Submit(description)  # the real parser must accept the description
        self._record("submit", [schedd, description, count, sorted(files)])
        cluster = self._next_cluster()
        ids = [f"{cluster}.{i}" for i in range(count)]
        if self._script().get("fake_queue"):
            attrs = {k[3:]: json.loads(v) for k, v in description.items() if k.startswith("MY.Cmsaf")}

            def add(jobs):
                for i in range(count):
                    jobs[f"{cluster}.{i}"] = {"ClusterId": cluster, "ProcId": i, "JobStatus": 2, **attrs}

            self._queue(add)
        return ids

    def query(self, schedd, constraint, projection):
        self._record("query", [schedd, constraint, projection])
        script = self._script()
        time.sleep(script.get("delay", {}).get("query", 0))
        if script.get("fake_queue"):
            return [ad for ad in self._matching(self._queue(), constraint) if ad["JobStatus"] != 3]
        return script.get("query", [])

    def history(self, schedd, constraint, projection, match):
        self._record("history", [schedd, constraint, projection, match])
        if self._script().get("fake_queue"):
            return [ad for ad in self._matching(self._queue(), constraint) if ad["JobStatus"] == 3]
        return self._script().get("history", [])

    def act(self, schedd, action, job_spec, reason):
        self._record("act", [schedd, action, job_spec, reason])
        if self._script().get("fake_queue") and action == "Remove":
            def remove(jobs):
                chosen = job_spec if isinstance(job_spec, list) else [
                    f"{ad['ClusterId']}.{ad['ProcId']}" for ad in self._matching(jobs, job_spec)]
                for jid in chosen:
                    if jid in jobs:
                        jobs[jid].update(JobStatus=3, RemoveReason=reason)

            self._queue(remove)
        return {"TotalSuccess": len(job_spec) if isinstance(job_spec, list) else 1}

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

"""Isolation between the local backend's clusters, proven with real OS users (CI runs as root).

Alice's task runs on her own cluster (a real scheduler + nanny + worker, as her OS user) and tries
what an attacker with an account would: the service's environment, bob's cluster files and keys,
bob's dashboard and worker metrics ports, the process environments it can see. Each attempt must
fail with a precise error; bob's own task doing the same to his own cluster is the positive control.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import ssl
import stat
import tempfile
from pathlib import Path

import psutil
import pytest
from distributed import Client
from distributed.security import Security

from cmsaf_hub.service.backends.base import ClusterSpec
from cmsaf_hub.service.backends.local import LocalBackend
from cmsaf_hub.service.crypto import generate_cluster_tls
from devstack.hub import create_system_user, remove_system_user, shared_python

pytestmark = pytest.mark.slow

#: Planted in the service's (this test process's) environment: no cluster process may see it.
CANARY = "cmsaf-canary-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def os_users():
    """Two real OS accounts, removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("isolation tests need root (CI runs as root): they create OS users")
    names = {who: f"ci{who}{secrets.token_hex(3)}" for who in ("alice", "bob")}
    created = [name for name in names.values() if create_system_user(name)]
    try:
        yield names
    finally:
        for name in created:
            remove_system_user(name)


@pytest.fixture
async def backend(os_users, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", CANARY)  # what the service's hub token would be
    monkeypatch.setenv("CMSAF_SERVICE_CRYPT_KEY", CANARY)
    # outside pytest's 0700 tmp: the owners must traverse the state directory's parents
    root = Path(tempfile.mkdtemp(prefix="cmsaf-isolation-"))
    os.chmod(root, 0o711)
    python = shared_python(root / "env")
    assert python, "no Python that other users can run: see devstack.hub.shared_python"
    b = LocalBackend(state_dir=str(root / "clusters"), stop_grace=2, python=python)
    await b.start()
    try:
        yield b
    finally:
        await b.remove_all_clusters()
        shutil.rmtree(root)


def security(tls: dict) -> Security:
    return Security(tls_ca_file=tls["cert"], tls_client_cert=tls["cert"], tls_client_key=tls["key"],
                    require_encryption=True)


async def start_cluster(backend: LocalBackend, owner: str, cluster_id: str) -> tuple[ClusterSpec, Client]:
    tls = generate_cluster_tls(cluster_id).as_dict()
    spec = ClusterSpec(id=cluster_id, owner=owner, options={"cores": 1, "memory": 1.0}, tls=tls,
                       tokens={"xrootd": f"{owner}-token-{secrets.token_hex(4)}"})
    info = await backend.start_scheduler(spec)
    spec.backend_state = info.backend_state
    spec.backend_state["dashboard_address"] = info.dashboard_address
    await backend.submit_workers(spec, 1)
    client = await Client(info.address, security=security(tls), asynchronous=True, timeout=30)
    await client.wait_for_workers(1, timeout=60)
    return spec, client


def worker_http_port(client: Client) -> int:
    [worker] = client.scheduler_info()["workers"].values()
    return worker["services"]["dashboard"]


# --- what runs on the workers (as their owner) -------------------------------------------------


def make_probe():
    """The probe task, built in a closure so it travels by value: the clusters run in their
    owners' homes, where this test module does not import."""
    import os
    import socket
    import ssl

    def try_read(path: str) -> str:
        try:
            with open(path, "rb") as f:
                f.read()
            return "read"
        except OSError as e:
            return f"{type(e).__name__}: errno {e.errno}"

    def try_listdir(path: str) -> str:
        try:
            return f"listed {len(os.listdir(path))}"
        except OSError as e:
            return f"{type(e).__name__}: errno {e.errno}"

    def try_https(port: int, cert: str | None = None, key: str | None = None, path: str = "/metrics") -> str:
        """One HTTPS GET to a loopback port: the status line, or the TLS refusal's reason."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if cert:
            context.load_cert_chain(cert, key)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with context.wrap_socket(raw) as tls:
                    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    return tls.recv(64).split(b"\r\n")[0].decode()
        except ssl.SSLError as e:
            return f"{type(e).__name__}: {e.reason or e.strerror}"

    def try_plain_http(port: int) -> str:
        """Plain HTTP to a TLS port: what comes back (the server's refusal is a reset)."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return raw.recv(64).split(b"\r\n")[0].decode(errors="replace") or "closed"
        except OSError as e:
            return type(e).__name__

    def probe(targets: dict) -> dict:
        """Everything the task tries, as plain results (errors are results)."""
        uid = os.getuid()
        environs = {"own": 0, "refused": 0, "other_readable": [], "canary": False}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            path = f"/proc/{entry}/environ"
            try:
                owner = os.stat(f"/proc/{entry}").st_uid
                with open(path, "rb") as f:
                    data = f.read()
            except PermissionError:
                environs["refused"] += 1
                continue
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile
            environs["canary"] |= targets["canary"].encode() in data
            if owner == uid:
                environs["own"] += 1
            elif data:  # kernel threads have an empty environment
                environs["other_readable"].append(entry)
        return {
            "uid": uid,
            "cwd": os.getcwd(),
            "env_names": sorted(os.environ),
            "env_has_canary": any(targets["canary"] in v for v in os.environ.values()),
            "service_environ": try_read(f"/proc/{targets['service_pid']}/environ"),
            "files": {name: try_read(path) for name, path in targets["files"].items()},
            "listdir": try_listdir(targets["run_dir"] + "/tokens"),
            "dashboard_no_cert": try_https(targets["dashboard_port"]),
            "dashboard_plain": try_plain_http(targets["dashboard_port"]),
            "dashboard_own_cert": try_https(targets["dashboard_port"], *targets["own_cert"],
                                        path=targets.get("dashboard_metrics", "/metrics")),
            "worker_metrics_no_cert": try_https(targets["worker_port"]),
            "worker_metrics_own_cert": try_https(targets["worker_port"], *targets["own_cert"]),
            "environs": environs,
        }

    return probe


probe = make_probe()


def targets_in(victim: ClusterSpec, victim_worker_port: int, attacker: ClusterSpec) -> dict:
    run = f"{victim.backend_state['dir']}/run"
    own = f"{attacker.backend_state['dir']}/run"
    return {
        "canary": CANARY,
        "service_pid": os.getpid(),
        "run_dir": run,
        "files": {
            "tls.key": f"{run}/tls.key",
            "token": f"{run}/tokens/xrootd.token",
            "scheduler log": f"{victim.backend_state['dir']}/logs/scheduler.log",
            "pid registry": f"{victim.backend_state['dir']}/pids/scheduler",
        },
        "dashboard_port": int(victim.backend_state["dashboard_address"].rsplit(":", 1)[1]),
        "worker_port": victim_worker_port,
        "own_cert": (f"{own}/tls.pem", f"{own}/tls.key"),
    }


async def test_alices_task_reaches_nothing_of_bobs_cluster_nor_of_the_service(backend, os_users):
    alice, bob = os_users["alice"], os_users["bob"]
    alice_pw, bob_pw = pwd.getpwnam(alice), pwd.getpwnam(bob)
    # a module beside alice's notebooks (her home: a local session's notebook directory)
    module = Path(alice_pw.pw_dir) / "cmsaf_analysis_helpers.py"
    module.write_text("ANSWER = 42\n")
    os.chown(module, alice_pw.pw_uid, alice_pw.pw_gid)
    alice_spec, alice_client = await start_cluster(backend, alice, "isoalice1")
    bob_spec, bob_client = await start_cluster(backend, bob, "isobob001")
    try:
        assert await alice_client.submit(lambda: __import__("cmsaf_analysis_helpers").ANSWER, pure=False) == 42
        bob_worker_port = worker_http_port(bob_client)
        attack = await alice_client.submit(probe, targets_in(bob_spec, bob_worker_port, alice_spec), pure=False)
        control = await bob_client.submit(probe, targets_in(bob_spec, bob_worker_port, bob_spec), pure=False)
    finally:
        await alice_client.close()
        await bob_client.close()

    # each cluster runs as its owner, in the owner's home (where notebook modules import)
    assert (attack["uid"], control["uid"]) == (alice_pw.pw_uid, bob_pw.pw_uid)
    assert (attack["cwd"], control["cwd"]) == (alice_pw.pw_dir, bob_pw.pw_dir)
    # the process environment is the built one: none of the service's variables
    # (the nanny adds its pre-spawn settings and its pid to the worker's)
    nanny = {"MALLOC_TRIM_THRESHOLD_", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED",
             "__DASK_PARENT_PID"}
    inherited = {name for name in ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ") if name in os.environ}
    built = {"BEARER_TOKEN_FILE", "CMSAF_TOKEN_DIR", "HOME", "LOGNAME", "PATH", "SHELL", "USER"}
    assert set(attack["env_names"]) == set(control["env_names"]) == built | inherited | nanny
    assert not attack["env_has_canary"]
    # the service's environment: refused
    assert attack["service_environ"] == "PermissionError: errno 13"
    # bob's files: refused to alice, readable by bob (positive control)
    assert attack["files"] == {name: "PermissionError: errno 13" for name in attack["files"]}
    assert attack["listdir"] == "PermissionError: errno 13"
    assert control["files"]["tls.key"] == "read" and control["files"]["token"] == "read"
    assert control["listdir"] == "listed 1"
    # ...while the service's own parts (registry, logs) stay the service's, even to bob
    assert control["files"]["scheduler log"] == control["files"]["pid registry"] == "PermissionError: errno 13"
    # bob's dashboard and worker metrics: TLS demands bob's cluster certificate
    # (TLS 1.3: the client sees the server's alert, or its close if that comes first)
    eof = "SSLEOFError: EOF occurred in violation of protocol (_ssl.c:2393)"
    no_cert = {"SSLError: TLSV13_ALERT_CERTIFICATE_REQUIRED", eof}
    wrong_cert = {"SSLError: TLSV1_ALERT_UNKNOWN_CA", eof}  # alice's cluster certificate, not bob's
    assert attack["dashboard_no_cert"] in no_cert
    assert attack["dashboard_plain"] in ("ConnectionResetError", "closed")  # no HTTP answer at all
    assert attack["dashboard_own_cert"] in wrong_cert
    assert attack["worker_metrics_no_cert"] in no_cert
    assert attack["worker_metrics_own_cert"] in wrong_cert
    assert control["dashboard_own_cert"] == control["worker_metrics_own_cert"] == "HTTP/1.1 200 OK"
    # /proc/*/environ: only alice's own processes are readable, and none holds the service's secrets
    assert attack["environs"]["other_readable"] == [] and not attack["environs"]["canary"]
    assert attack["environs"]["refused"] > 0 and attack["environs"]["own"] > 0


async def test_cluster_directories_belong_to_their_owner_and_the_registry_to_the_service(backend, os_users):
    alice = os_users["alice"]
    spec, client = await start_cluster(backend, alice, "isomodes1")
    await client.close()
    d = Path(spec.backend_state["dir"])
    uid = pwd.getpwnam(alice).pw_uid

    def mode_owner(path: Path) -> tuple[str, int]:
        st = path.lstat()
        return oct(stat.S_IMODE(st.st_mode)), st.st_uid

    assert mode_owner(Path(backend.state_dir)) == ("0o711", 0)
    assert mode_owner(d) == ("0o711", 0)
    assert mode_owner(d / "pids") == mode_owner(d / "logs") == ("0o700", 0)
    assert mode_owner(d / "logs" / "scheduler.log") == ("0o600", 0)
    assert mode_owner(d / "run") == ("0o700", uid)
    assert mode_owner(d / "run" / "tls.key") == ("0o600", uid)
    assert mode_owner(d / "run" / "tokens") == ("0o700", uid)
    assert mode_owner(d / "run" / "tokens" / "xrootd.token") == ("0o600", uid)
    # the processes themselves run as alice
    sched_pid = spec.backend_state["scheduler"]["pid"]
    assert os.stat(f"/proc/{sched_pid}").st_uid == uid


async def test_listeners_bind_loopback_only_but_the_scheduler_relay(backend, os_users):
    """Scheduler (TLS comm, HTTPS dashboard), nanny and worker (comm, HTTPS) listen on 127.0.0.1;
    only the scheduler's wss:// relay listener binds every interface (distributed's WSListener
    takes no address), and it demands the cluster's certificate (tests/test_local_backend.py)."""
    spec, client = await start_cluster(backend, os_users["alice"], "isolisten")
    await client.close()
    listening: dict[str, set[tuple[str, int]]] = {}
    for name, pid in registered_processes(Path(spec.backend_state["dir"])).items():
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.setdefault(name, set()).add((conn.laddr.ip, conn.laddr.port))
    wss_port = int(spec.backend_state["ws_address"].rsplit(":", 1)[1])
    wildcard = {(name, port) for name, addrs in listening.items() for ip, port in addrs if ip != "127.0.0.1"}
    assert wildcard == {("scheduler", wss_port)}
    def ports(name: str) -> set[int]:
        return {port for _, port in listening[name]}

    assert len(ports("scheduler")) == 3  # TLS comm, wss relay (IPv4 and IPv6), HTTPS dashboard
    [worker] = [name for name in listening if name != "scheduler"]
    assert len(ports(worker)) == 3  # nanny comm, worker comm, worker HTTPS


def registered_processes(cluster_dir: Path) -> dict[str, int]:
    return {path.name: int(path.read_text().split()[0]) for path in (cluster_dir / "pids").iterdir()}

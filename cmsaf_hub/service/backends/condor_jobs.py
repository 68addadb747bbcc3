"""Pure functions that build HTCondor submit descriptions and constraints for Dask clusters.

Nothing here does I/O, so every rule about the shape of a job (resources, image, site, walltime,
Dask arguments, the attributes that name cluster/owner/role, where tokens live) is tested by
comparing dictionaries. Secrets never enter a description: tokens and TLS keys are *files* that the
seam transfers into the job's sandbox, and the job's environment only names their paths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ...reverse import BROKER_URL_ENV
from .base import BackendError

# Set by a scheduler job itself (through Chirp) once its scheduler listens.
from .condor_scheduler_preload import ATTR_DASHBOARD_ADDRESS, ATTR_SCHEDULER_ADDRESS, ATTR_SCHEDULER_WS_ADDRESS

#: Job ClassAd attributes that name what a job belongs to (queried on every poll and on restart).
ATTR_CLUSTER = "CmsafCluster"
ATTR_OWNER = "CmsafOwner"
ATTR_ROLE = "CmsafRole"

ROLE_SCHEDULER = "scheduler"
ROLE_WORKER = "worker"
#: A job that never runs: it holds the input files (tokens, TLS) of a batch of workers in its spool
#: directory, so that a batch is spooled once instead of once per job (see :func:`inputs_description`).
ROLE_INPUTS = "inputs"
#: On a worker job: the ``ClusterId.ProcId`` of the inputs job its sandbox files come from.
ATTR_INPUTS = "CmsafInputs"

#: TLS material as transferred into the sandbox (same file names on scheduler and workers).
TLS_CERT_FILE = "dask-tls.crt"
TLS_KEY_FILE = "dask-tls.key"
#: The cluster's worker credential as transferred into the sandbox of its jobs (scheduler, workers):
#: outbound-only workers register with it, the others present it to reach those (``hubrev://``).
WORKER_CREDENTIAL_FILE = "cmsaf-worker.credential"
#: The scheduler job's preload (cmsaf_hub/service/backends/condor_scheduler_preload.py), transferred as is.
SCHEDULER_PRELOAD_FILE = "cmsaf_scheduler_preload.py"

#: What the bulk poll needs to know about each job.
POLL_PROJECTION = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "HoldReason",
    "HoldReasonCode",
    "HoldReasonSubCode",
    "EnteredCurrentStatus",
    "QDate",
    "RemoveReason",
    "ExitCode",
    ATTR_CLUSTER,
    ATTR_OWNER,
    ATTR_ROLE,
    ATTR_INPUTS,
    ATTR_SCHEDULER_ADDRESS,
    ATTR_SCHEDULER_WS_ADDRESS,
    ATTR_DASHBOARD_ADDRESS,
]

#: Variables that hold secrets by convention: never allowed into a job's (public) environment.
SECRET_ENV = frozenset({"BEARER_TOKEN", "CMSAF_WORKER_CREDENTIAL", "JUPYTERHUB_API_TOKEN", "DASK_GATEWAY__AUTH__TOKEN"})

#: The environment a job may be given (``c.HTCondorBackend.job_env_allowlist``'s default): Dask and
#: numerical-library settings, locale and time zone. ``NAME*`` allows a prefix. Anything else the
#: service's cluster environment holds stays out of job ads, which every pool user can read.
DEFAULT_JOB_ENV_ALLOWLIST = (
    "DASK_*", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
    "PYTHONUNBUFFERED", "PYTHONHASHSEED", "LANG", "LC_ALL", "TZ", "X509_CERT_DIR", "XRD_*",
)
#: Never in a job's environment, allowlisted or not: names that say they hold a secret.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|CRYPT|PRIVATE|_KEY$|^KEY", re.IGNORECASE)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_ATTR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class JobShapeError(BackendError):
    """A user option or server setting cannot become a job; the message is safe to show."""


@dataclass(frozen=True)
class JobShape:
    """Everything that decides what one worker (or scheduler) job asks for and runs."""

    cores: int = 1
    memory_gib: float = 2.0
    disk_gib: float = 1.0
    #: Container image, or None to run on the worker node's own Python.
    image: str | None = None
    #: "singularity" (``+SingularityImage``) or "docker" (docker universe).
    container: str = "singularity"
    site: str | None = None
    #: Machine ClassAd attribute naming a worker node's site.
    site_attribute: str = "SiteName"
    #: Jobs running longer than this are removed by the schedd (0: no limit).
    walltime_seconds: int = 0
    python: str = "python3"
    death_timeout: int = 60
    #: Worker lifetime in seconds (0: unlimited) and its random stagger.
    lifetime: int = 0
    lifetime_stagger: int = 0
    nanny: bool = True
    extra_directives: Mapping[str, str] = field(default_factory=dict)
    #: The cluster's ``ws(s)://`` comm URL through the hub, for workers at an outbound-only site: they
    #: join through the hub and are reached through the service's broker (docs/outbound-workers.md).
    hub_comm_url: str | None = None
    #: The broker's own listener (``Broker.public_url``) for those workers; empty: through the hub.
    broker_url: str = ""


def classad_string(value: str) -> str:
    """A ClassAd string literal (quotes and backslashes escaped)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def check_name(kind: str, value: str) -> str:
    """Cluster ids and owners go into constraints: accept only plain names."""
    if not _SAFE_NAME.match(value):
        raise JobShapeError(f"invalid {kind} {value!r} for an HTCondor job attribute")
    return value


def quote_arguments(args: Iterable[str]) -> str:
    """HTCondor "new" argument syntax (without the surrounding double quotes).

    Double quotes and single quotes are doubled; arguments with spaces or quotes are wrapped in
    single quotes.
    """
    quoted = []
    for arg in args:
        q = arg.replace('"', '""').replace("'", "''")
        if not q or any(c in q for c in " \t'"):
            q = f"'{q}'"
        quoted.append(q)
    return " ".join(quoted)


def quote_environment(env: Mapping[str, str]) -> str:
    """HTCondor "new" environment syntax, wrapped in double quotes."""
    parts = []
    for key, value in sorted(env.items()):
        if not _ENV_NAME.match(key):
            raise JobShapeError(f"invalid environment variable name {key!r}")
        v = value.replace('"', '""').replace("'", "''")
        parts.append(f"{key}='{v}'" if any(c in v for c in " \t'") else f"{key}={v}")
    return '"' + " ".join(parts) + '"'


def job_environment(env: Mapping[str, str], allowlist: Iterable[str] = DEFAULT_JOB_ENV_ALLOWLIST
                    ) -> tuple[dict[str, str], list[str]]:
    """The environment of a cluster's jobs, built from ``allowlist`` only: ``(kept, dropped names)``.

    Jobs never inherit the service's environment (no ``getenv``); this is all they are given
    besides the sandbox paths their command exports. Names that say they hold a secret (token,
    secret, password, credential, key) are dropped even when allowlisted: secrets reach jobs as
    sandbox files only.
    """
    exact = {p for p in allowlist if not p.endswith("*")}
    prefixes = tuple(p[:-1] for p in allowlist if p.endswith("*"))
    kept, dropped = {}, []
    for name, value in sorted(env.items()):
        if (name in exact or name.startswith(prefixes)) and not _SECRET_NAME.search(name) and name not in SECRET_ENV:
            kept[name] = value
        else:
            dropped.append(name)
    return kept, dropped


def token_file_name(name: str) -> str:
    """The sandbox file holding the exchanged token ``name`` (as in sessions: ``<name>.token``)."""
    return f"{name}.token"


def bearer_token_name(token_names: Iterable[str], preferred: Iterable[str]) -> str | None:
    """Which token ``BEARER_TOKEN_FILE`` points at: the first preferred name present."""
    names = list(token_names)
    for name in preferred:
        if name in names:
            return name
    return names[0] if names else None


def sandbox_files(tokens: Mapping[str, str], tls: Mapping[str, str],
                  worker_credential: str | None = None) -> dict[str, str]:
    """``{file name: content}`` transferred into a cluster's jobs (tokens, TLS, the worker credential)."""
    files = {token_file_name(name): jwt for name, jwt in tokens.items()}
    if tls:
        files[TLS_CERT_FILE] = tls["cert"]
        files[TLS_KEY_FILE] = tls["key"]
    if worker_credential:
        files[WORKER_CREDENTIAL_FILE] = worker_credential
    return files


def _tls_args(tls: bool) -> list[str]:
    if not tls:
        return []
    return [
        "--tls-ca-file", f"$_CONDOR_SCRATCH_DIR/{TLS_CERT_FILE}",
        "--tls-cert", f"$_CONDOR_SCRATCH_DIR/{TLS_CERT_FILE}",
        "--tls-key", f"$_CONDOR_SCRATCH_DIR/{TLS_KEY_FILE}",
    ]


def _sandbox_exports(token_names: list[str], bearer: str | None, *, worker_credential: bool = False) -> str:
    """Shell lines pointing the job at its token (and worker credential) files inside the sandbox."""
    lines = ['export CMSAF_TOKEN_DIR="$_CONDOR_SCRATCH_DIR"']
    if worker_credential:
        lines.append(f'export CMSAF_WORKER_CREDENTIAL_FILE="$_CONDOR_SCRATCH_DIR/{WORKER_CREDENTIAL_FILE}"')
    if bearer is not None:
        lines.append(f'export BEARER_TOKEN_FILE="$_CONDOR_SCRATCH_DIR/{token_file_name(bearer)}"')
    if "condor" in token_names:
        lines.append('export _condor_SCITOKENS_FILE="$_CONDOR_SCRATCH_DIR/condor.token"')
    return "; ".join(lines)


def _shell_word(arg: str) -> str:
    """Quote for /bin/sh, leaving ``$_CONDOR_SCRATCH_DIR`` expandable."""
    if re.fullmatch(r"[A-Za-z0-9_./:=@%+,$-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def worker_command(shape: JobShape, scheduler_address: str, *, tls: bool) -> list[str]:
    """The ``dask worker`` command line of one job; its name is the HTCondor job id.

    At an outbound-only site (``shape.hub_comm_url``) the worker joins through the hub with
    ``python -m cmsaf_hub.reverse`` (no nanny: that wrapper restarts a worker whose scheduler
    connection broke) and needs no TLS files: the hub's own TLS carries it.
    """
    if shape.hub_comm_url:
        cmd = [
            shape.python, "-m", "cmsaf_hub.reverse", shape.hub_comm_url,
            "--name", "$(ClusterId).$(ProcId)",
            "--nthreads", str(shape.cores),
            "--memory-limit", str(int(shape.memory_gib * 2**30)),
            "--death-timeout", str(shape.death_timeout),
            "--local-directory", "$_CONDOR_SCRATCH_DIR",
        ]
        if shape.lifetime:
            cmd += ["--lifetime", f"{shape.lifetime}s", "--lifetime-stagger", f"{shape.lifetime_stagger}s"]
        return cmd
    cmd = [
        shape.python, "-m", "distributed.cli.dask_worker", scheduler_address,
        "--name", "$(ClusterId).$(ProcId)",
        "--nthreads", str(shape.cores),
        "--memory-limit", str(int(shape.memory_gib * 2**30)),
        "--death-timeout", str(shape.death_timeout),
        "--local-directory", "$_CONDOR_SCRATCH_DIR",
        "--nanny" if shape.nanny else "--no-nanny",
    ]
    if shape.lifetime:
        cmd += ["--lifetime", f"{shape.lifetime}s", "--lifetime-stagger", f"{shape.lifetime_stagger}s"]
    return cmd + _tls_args(tls)


def scheduler_command(shape: JobShape, *, tls: bool, idle_timeout: int, dashboard_prefix: str = "") -> list[str]:
    """A scheduler job: ``dask scheduler`` whose preload publishes its addresses through Chirp.

    ``dashboard_prefix`` is the path the service's forwarder serves the dashboard under, so that the
    dashboard's own links work through the hub."""
    prefix = ["--dashboard-prefix", dashboard_prefix] if dashboard_prefix else []
    cmd = [
        shape.python, "-m", "distributed.cli.dask_scheduler", *prefix,
        "--protocol", "tls,wss" if tls else "tcp,ws",
        "--port", "0,0",
        "--dashboard-address", ":0",
        "--idle-timeout", f"{idle_timeout}s",
        "--preload", f"$_CONDOR_SCRATCH_DIR/{SCHEDULER_PRELOAD_FILE}",
    ]
    return cmd + _tls_args(tls)


def _base_description(
    shape: JobShape,
    *,
    cluster_id: str,
    owner: str,
    role: str,
    command: list[str],
    token_names: list[str],
    bearer: str | None,
    env: Mapping[str, str],
    input_files: list[str],
) -> dict[str, str]:
    check_name("cluster id", cluster_id)
    check_name("owner", owner)
    exports = _sandbox_exports(token_names, bearer, worker_credential=WORKER_CREDENTIAL_FILE in input_files)
    script = exports + "; exec " + " ".join(_shell_word(a) for a in command)
    desc: dict[str, str] = {
        "universe": "vanilla",
        # Through the shell (like dask-jobqueue): HTCondor renames argv[0], which confuses Python,
        # and the shell expands $_CONDOR_SCRATCH_DIR into the sandbox path.
        "executable": "/bin/sh",
        "transfer_executable": "false",
        "arguments": '"' + quote_arguments(["-c", script]) + '"',
        "request_cpus": str(shape.cores),
        "request_memory": str(max(1, int(shape.memory_gib * 1024))),
        "request_disk": str(max(1, int(shape.disk_gib * 1024 * 1024))),
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT_OR_EVICT",
        "transfer_input_files": ",".join(input_files),
        # Encrypted on the wire even where the pool does not require encryption by default.
        "encrypt_input_files": ",".join(input_files),
        "transfer_output_files": '""',
        "output": f"{role}-$(ClusterId).$(ProcId).out",
        "error": f"{role}-$(ClusterId).$(ProcId).err",
        "leave_in_queue": "false",
        "batch_name": f"dask-{cluster_id}",
        f"MY.{ATTR_CLUSTER}": classad_string(cluster_id),
        f"MY.{ATTR_OWNER}": classad_string(owner),
        f"MY.{ATTR_ROLE}": classad_string(role),
    }
    public = sorted(set(env) & SECRET_ENV)
    if public:
        raise JobShapeError(f"{', '.join(public)} would be readable by anyone (condor_q -l): transfer it as a file")
    if env:
        desc["environment"] = quote_environment(env)
    if shape.image:
        if shape.container == "docker":
            desc["universe"] = "docker"
            desc["docker_image"] = shape.image
        else:
            desc["MY.SingularityImage"] = classad_string(shape.image)
    if shape.site:
        if not _ATTR_NAME.match(shape.site_attribute):
            raise JobShapeError(f"invalid site attribute {shape.site_attribute!r}")
        desc["requirements"] = f"(TARGET.{shape.site_attribute} == {classad_string(shape.site)})"
    if shape.walltime_seconds:
        desc["periodic_remove"] = (
            f"(JobStatus == 2) && ((time() - JobCurrentStartDate) > {int(shape.walltime_seconds)})"
        )
    for key, value in shape.extra_directives.items():
        if key.lower() == "getenv" and value.strip().lower() not in ("false", "no"):
            raise JobShapeError("getenv would copy the service's environment into jobs: use job_env_allowlist")
        desc[key] = value
    return desc


def worker_description(
    shape: JobShape,
    *,
    cluster_id: str,
    owner: str,
    scheduler_address: str,
    token_names: list[str],
    bearer: str | None,
    tls: bool,
    env: Mapping[str, str] | None = None,
    worker_credential: bool = False,
) -> dict[str, str]:
    """The submit description of a cluster's workers (queued ``count`` times in one call).

    ``worker_credential``: the cluster has one, transferred as a sandbox file. Workers at an
    outbound-only site need it (it registers them with the broker) and get it instead of the
    cluster's TLS key; workers in the pool get it besides their TLS files, to reach brokered
    (``hubrev://``) workers.
    """
    files = [token_file_name(n) for n in token_names]
    if shape.hub_comm_url:
        if not worker_credential:
            raise JobShapeError("a worker at an outbound-only site needs the cluster's worker credential")
        files.append(WORKER_CREDENTIAL_FILE)
        if shape.broker_url:
            env = {**(env or {}), BROKER_URL_ENV: shape.broker_url}
    else:
        if tls:
            files += [TLS_CERT_FILE, TLS_KEY_FILE]
        if worker_credential:
            files.append(WORKER_CREDENTIAL_FILE)
    return _base_description(
        shape,
        cluster_id=cluster_id,
        owner=owner,
        role=ROLE_WORKER,
        command=worker_command(shape, scheduler_address, tls=tls),
        token_names=token_names,
        bearer=bearer,
        env=env or {},
        input_files=files,
    )


def scheduler_description(
    shape: JobShape,
    *,
    cluster_id: str,
    owner: str,
    token_names: list[str],
    bearer: str | None,
    tls: bool,
    idle_timeout: int,
    env: Mapping[str, str] | None = None,
    dashboard_prefix: str = "",
    worker_credential: bool = False,
) -> dict[str, str]:
    """The submit description of a scheduler that runs as a job (placement ``htcondor``).

    ``worker_credential``: the cluster's worker credential goes into the sandbox as a file, so the
    scheduler can reach brokered (``hubrev://``) workers."""
    files = [token_file_name(n) for n in token_names] + ([TLS_CERT_FILE, TLS_KEY_FILE] if tls else [])
    if worker_credential:
        files.append(WORKER_CREDENTIAL_FILE)
    files.append(SCHEDULER_PRELOAD_FILE)
    desc = _base_description(
        shape,
        cluster_id=cluster_id,
        owner=owner,
        role=ROLE_SCHEDULER,
        command=scheduler_command(shape, tls=tls, idle_timeout=idle_timeout, dashboard_prefix=dashboard_prefix),
        token_names=token_names,
        bearer=bearer,
        env=env or {},
        input_files=files,
    )
    # The job publishes its address into its own ad through the Chirp I/O proxy.
    desc["MY.WantIOProxy"] = "true"
    return desc


def inputs_description(worker: Mapping[str, str]) -> dict[str, str]:
    """The job holding a batch of workers' input files in its spool directory; it never runs.

    The schedd spools input files per job (one file transfer each: 1,000 workers took 7.4 s on a
    loopback pool). Instead, this one job is spooled, and the batch's workers read the same files
    from its spool directory (see :func:`reading_inputs_of`), queued in one transaction without
    spooling. ``requirements = false`` keeps it idle; it carries the cluster's attributes, so it
    goes when the cluster stops or is found orphaned.
    """
    desc = {key: worker[key] for key in ("transfer_input_files", "encrypt_input_files", "batch_name",
                                         f"MY.{ATTR_CLUSTER}", f"MY.{ATTR_OWNER}") if key in worker}
    desc.update({
        "universe": "vanilla",
        "executable": "/bin/true",
        "transfer_executable": "false",
        "should_transfer_files": "YES",
        "transfer_output_files": '""',
        "requirements": "false",
        "request_cpus": "1",
        "request_memory": "1",
        "request_disk": "1",
        "leave_in_queue": "false",
        f"MY.{ATTR_ROLE}": classad_string(ROLE_INPUTS),
    })
    return desc


def reading_inputs_of(worker: Mapping[str, str], inputs_job: str, inputs_iwd: str) -> dict[str, str]:
    """``worker`` taking its sandbox files from the spool directory of ``inputs_job``.

    ``inputs_iwd`` is that job's ``Iwd`` after spooling: a directory on the schedd's host, owned by
    the same user, so the workers' shadows can read it. The submitting side checks that a job's
    ``initialdir`` exists locally, and the schedd may be remote: so the workers' initialdir is ``/``
    and their input files (and stdout/stderr) are named by absolute paths in that directory.
    """
    def inside(names: str) -> str:
        return ",".join(f"{inputs_iwd}/{name}" for name in names.split(",") if name)

    return {
        **worker,
        "initialdir": "/",
        "transfer_input_files": inside(worker.get("transfer_input_files", "")),
        "encrypt_input_files": inside(worker.get("encrypt_input_files", "")),
        "output": f"{inputs_iwd}/{worker['output']}",
        "error": f"{inputs_iwd}/{worker['error']}",
        f"MY.{ATTR_INPUTS}": classad_string(inputs_job),
    }


def cluster_constraint(cluster_ids: Iterable[str], role: str | None = None) -> str:
    """One constraint matching every job of the given clusters (optionally one role)."""
    ids = sorted({check_name("cluster id", c) for c in cluster_ids})
    if not ids:
        raise JobShapeError("no cluster ids to build a constraint from")
    listed = ", ".join(classad_string(c) for c in ids)
    expr = f"member({ATTR_CLUSTER}, {{{listed}}})"
    if role is not None:
        expr = f"({expr}) && ({ATTR_ROLE} == {classad_string(role)})"
    return expr


def any_cluster_constraint() -> str:
    """Every job this service ever submitted (restart reconciliation)."""
    return f"{ATTR_CLUSTER} =!= undefined"


def job_id(ad: Mapping[str, object]) -> str:
    """``ClusterId.ProcId`` of a job ad: also the Dask name of a worker job."""
    return f"{ad['ClusterId']}.{ad['ProcId']}"


def find_secret(description: Mapping[str, str], secrets: Iterable[str]) -> str | None:
    """The description key holding one of ``secrets`` (a guard run before every submit)."""
    needles = [s for s in secrets if s]
    for key, value in description.items():
        if any(s in str(value) for s in needles):
            return key
    return None

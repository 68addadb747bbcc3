"""The job-shape configuration of the HTCondor backend: what every worker job asks for and runs.

A mixin of :class:`~cmsaf_hub.service.backends.htcondor.HTCondorBackend` (configured as
``c.HTCondorBackend.<trait>``), kept apart so the backend module holds only I/O order. The
``job_shape`` hook merges this server-side configuration with a cluster's user options.
"""

from __future__ import annotations

from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode
from traitlets.config import LoggingConfigurable

from .base import BackendError, ClusterSpec
from .condor_jobs import JobShape


class CondorJobShapeConfig(LoggingConfigurable):
    """Server-side settings of worker jobs (images, sites, walltime, Dask worker arguments)."""

    python = Unicode("python3", help="Python (with distributed installed) inside the jobs.").tag(config=True)

    default_image = Unicode(
        "", help="Container image of jobs whose cluster options name none (empty: no container).",
    ).tag(config=True)

    image_allowlist = List(
        Unicode(), default_value=[],
        help="Images users may choose (exact names); the default image is always allowed.",
    ).tag(config=True)

    container_mode = Enum(
        ["singularity", "docker"], default_value="singularity",
        help='How images run: "singularity" (+SingularityImage) or "docker" (docker universe).',
    ).tag(config=True)

    sites = List(
        Unicode(), default_value=[],
        help="Sites users may pin workers to (e.g. T2_LNL_PD, T2_BA, T2_PI, T2_RM, T2_CERN).",
    ).tag(config=True)

    site_attribute = Unicode(
        "SiteName", help="Machine ClassAd attribute compared with the chosen site in requirements.",
    ).tag(config=True)

    outbound_sites = List(
        Unicode(), default_value=[],
        help="""Sites (of ``sites``) whose worker nodes accept no inbound connection. Workers pinned
        to one join through the hub's public URL (``hub_url``) with ``python -m cmsaf_hub.reverse``
        and are reached by the scheduler, clients and other workers through the service's broker
        (docs/outbound-workers.md); their job gets the cluster's worker credential as a sandbox file,
        not its TLS key. Workers at other sites keep direct TLS connections.""",
    ).tag(config=True)

    hub_url = Unicode(
        "",
        help="""The hub's public URL as worker nodes at ``outbound_sites`` reach it, e.g.
        https://hub.example/ (wss:// is used for https). Required when ``outbound_sites`` is set.""",
    ).tag(config=True)

    broker_url = Unicode(
        "",
        help="""The service's ``Broker.public_url`` as worker nodes at ``outbound_sites`` reach it, e.g.
        https://broker.hub.example:8443. Their workers then open their brokered connections there
        (``CMSAF_BROKER_URL`` in the job's environment) instead of through the hub's proxy.
        Empty: through ``hub_url``.""",
    ).tag(config=True)

    def hub_comm_url(self, cluster: ClusterSpec) -> str:
        """The cluster's scheduler relay through the hub (``wss://hub/<prefix>clusters/<id>/comm``)."""
        if not self.hub_url:
            raise BackendError("HTCondorBackend.hub_url is not set, but outbound-only sites need it")
        if not cluster.dashboard_prefix.endswith("/dashboard"):
            raise BackendError("the cluster's service prefix is unknown (no dashboard prefix)")
        base = self.hub_url.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return base + cluster.dashboard_prefix[: -len("/dashboard")] + "/comm"

    disk_gib = Float(2.0, help="Disk requested per job, GiB.").tag(config=True)

    max_walltime = Int(
        86400, help="Seconds a job may run before the schedd removes it (periodic_remove); 0: no limit.",
    ).tag(config=True)

    extra_directives = Dict(
        Unicode(), default_value={}, help="Extra submit commands added to every job (they win on conflict).",
    ).tag(config=True)

    death_timeout = Int(60, help="Seconds a worker waits for an unreachable scheduler before exiting.").tag(config=True)
    worker_lifetime = Int(0, help="Worker --lifetime in seconds (0: unlimited).").tag(config=True)
    worker_lifetime_stagger = Int(0, help="Worker --lifetime-stagger in seconds.").tag(config=True)
    worker_nanny = Bool(True, help="Run workers under a nanny process.").tag(config=True)


    def job_shape(self, cluster: ClusterSpec) -> JobShape:
        """Server-side config + the cluster's options -> the shape of its jobs."""
        options = cluster.options
        image = options.get("image") or self.default_image or None
        if image and image != self.default_image and image not in self.image_allowlist:
            raise BackendError(f"image {image!r} is not allowed on this facility")
        site = options.get("site") or None
        if site and site not in self.sites:
            raise BackendError(f"site {site!r} is not one of {', '.join(self.sites) or 'none'}")
        return JobShape(
            cores=int(options.get("cores", 1)),
            memory_gib=float(options.get("memory", 2.0)),
            disk_gib=self.disk_gib,
            image=image,
            container=self.container_mode,
            site=site,
            site_attribute=self.site_attribute,
            walltime_seconds=self.max_walltime,
            python=self.python,
            death_timeout=self.death_timeout,
            lifetime=self.worker_lifetime,
            lifetime_stagger=self.worker_lifetime_stagger,
            nanny=self.worker_nanny,
            extra_directives=dict(self.extra_directives),
            hub_comm_url=self.hub_comm_url(cluster) if site and site in self.outbound_sites else None,
            broker_url=self.broker_url if site and site in self.outbound_sites else "",
        )


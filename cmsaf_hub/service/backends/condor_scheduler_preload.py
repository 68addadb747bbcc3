"""Preload of a scheduler that runs as an HTCondor job: publish its addresses into its own job ad.

Transferred into the job's sandbox as a file and given to ``dask scheduler --preload``, so the job
image needs only ``distributed`` and a Chirp client (``htcondor2.htchirp`` or the ``htchirp``
package). The service reads the published attributes with its next queue query. Standalone on
purpose: it must not import cmsaf_hub.
"""

from __future__ import annotations

ATTR_SCHEDULER_ADDRESS = "CmsafSchedulerAddress"
ATTR_SCHEDULER_WS_ADDRESS = "CmsafSchedulerWsAddress"
ATTR_DASHBOARD_ADDRESS = "CmsafDashboardAddress"


def classad_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def published_attributes(addresses: list[str], dashboard_port: int | None) -> dict[str, str]:
    """Job attributes (ClassAd literals) naming the scheduler's first and websocket listeners."""
    attrs = {ATTR_SCHEDULER_ADDRESS: classad_string(addresses[0])}
    for address in addresses[1:]:
        if address.startswith(("ws://", "wss://")):
            attrs[ATTR_SCHEDULER_WS_ADDRESS] = classad_string(address)
    if dashboard_port:
        host = addresses[0].split("://", 1)[1].rsplit(":", 1)[0]
        attrs[ATTR_DASHBOARD_ADDRESS] = classad_string(f"http://{host}:{dashboard_port}")
    return attrs


def _chirp_client():
    try:
        from htcondor2.htchirp import HTChirp
    except ImportError:
        from htchirp import HTChirp
    return HTChirp()


def dask_setup(scheduler) -> None:
    dashboard = scheduler.services.get("dashboard")
    attrs = published_attributes(
        [listener.contact_address for listener in scheduler.listeners],
        dashboard.port if dashboard is not None else None,
    )
    with _chirp_client() as chirp:
        for name, value in attrs.items():
            chirp.set_job_attr(name, value)

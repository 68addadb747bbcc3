"""The notebook view of a cluster: status, worker progress and links, as HTML built from a report."""

from __future__ import annotations

from html import escape

from .report import ClusterReport

_STATUS_COLOURS = {"running": "#2e7d32", "failed": "#c62828", "stopped": "#616161"}


def logs_link(service_url: str, cluster_id: str) -> str:
    """Where the service serves a cluster's logs (the REST endpoint; the browser's hub login works there)."""
    return f"{service_url}api/v1/clusters/{cluster_id}/logs"


def render_cluster_html(report: ClusterReport, service_url: str, *, connected_workers: int) -> str:
    """One self-contained HTML block; every value from the service is escaped."""
    w = report.workers
    colour = _STATUS_COLOURS.get(report.status, "#ef6c00")
    reason = f" &ndash; {escape(report.reason)}" if report.reason else ""
    held = ""
    if w.held_reasons:
        items = "".join(f"<li>{escape(r)}</li>" for r in w.held_reasons)
        held = f"<details><summary>Held: why</summary><ul>{items}</ul></details>"
    adapt = ""
    if report.adapt:
        adapt = (
            f"<tr><th style='text-align:left'>Adaptive</th>"
            f"<td>{int(report.adapt.get('minimum', 0))} &ndash; {int(report.adapt.get('maximum', 0))}</td></tr>"
        )
    dashboard = (
        f"<a href='{escape(report.dashboard_link, quote=True)}' target='_blank'>Dashboard</a>"
        if report.dashboard_link
        else "Dashboard: not available yet"
    )
    logs = f"<a href='{escape(logs_link(service_url, report.id), quote=True)}' target='_blank'>Logs</a>"
    options = ", ".join(f"{escape(str(k))}={escape(repr(v))}" for k, v in sorted(report.options.items()))
    return f"""<div class="cmsaf-hub-cluster">
<h3 style="margin-bottom:0.2em">HubCluster {escape(report.id)}</h3>
<p style="margin:0"><b style="color:{colour}">{escape(report.status)}</b>{reason} &middot; {dashboard} &middot; {logs}</p>
<table>
<tr><th style='text-align:left'>Workers requested</th><td>{w.requested}</td></tr>
<tr><th style='text-align:left'>Pending in queue</th><td>{w.pending}</td></tr>
<tr><th style='text-align:left'>Held</th><td>{w.held}</td></tr>
<tr><th style='text-align:left'>Running</th><td>{w.running}</td></tr>
<tr><th style='text-align:left'>Failed</th><td>{w.failed}</td></tr>
<tr><th style='text-align:left'>Connected to scheduler</th><td>{connected_workers}</td></tr>
{adapt}
</table>
{held}
<p style="margin:0;font-size:smaller">Options: {options}</p>
</div>"""

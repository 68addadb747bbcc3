"""``cmsaf-dask``: list, create, scale, adapt, inspect and delete your Dask clusters from a shell.

Exit codes are stable, so scripts can branch on them (also listed by ``cmsaf-dask --help``):

====  =====================================================================
0     success
1     the cluster did not reach the asked state (failed, stopped, timed out)
2     usage error: bad arguments or invalid option values (nothing was sent)
3     not configured: no hub URL or no token
4     authentication refused (401/403): token missing, expired or revoked
5     hub unreachable: connection refused, DNS, TLS or timeout
6     no such cluster (404)
7     request refused by the service (other 4xx: quota, conflict, bad request)
8     service error (5xx)
====  =====================================================================

Every error is one line on stderr: ``cmsaf-dask: <message>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from .config import resolve_config
from .errors import (
    AuthenticationError,
    ClusterNotFoundError,
    ConfigurationError,
    HubError,
    HubUnreachableError,
    OptionsError,
    RequestRejectedError,
    ServiceError,
)
from .http import ServiceAPI, options_schema, wait_until_running
from .options import parse_text, validate_options
from .report import STATUSES, ClusterReport, select_statuses

PROG = "cmsaf-dask"

#: Exception type → exit code; the first matching entry wins (subclasses before bases).
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (OptionsError, 2),
    (ConfigurationError, 3),
    (AuthenticationError, 4),
    (HubUnreachableError, 5),
    (ClusterNotFoundError, 6),
    (RequestRejectedError, 7),
    (ServiceError, 8),
    (HubError, 1),
]
EXIT_OK = 0
EXIT_USAGE = 2

#: Options with their own flag; any other option the service publishes goes through ``-o name=value``.
OPTION_FLAGS = {
    "workers": "number of workers to start with",
    "cores": "cores (threads) per worker",
    "memory": "memory per worker, GiB",
    "image": "container image of the workers ('none' for the default)",
    "site": "where the workers run ('none' for the default)",
}


def exit_code_for(error: BaseException) -> int:
    for error_type, code in EXIT_CODES:
        if isinstance(error, error_type):
            return code
    raise error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage your Dask clusters on the CMS analysis facility.",
        epilog="exit codes: 0 ok, 1 cluster did not reach the asked state, 2 usage, 3 not configured, "
        "4 authentication refused, 5 hub unreachable, 6 no such cluster, 7 request refused, "
        "8 service error",
    )
    parser.add_argument("--hub-url", help="the hub's URL (default: $CMSAF_HUB_URL, or the session's service)")
    parser.add_argument("--token-file", help="file holding a hub API token (default: $CMSAF_TOKEN)")
    parser.add_argument("--ca-file", help="CA bundle for an https hub (default: $CMSAF_CA_FILE)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    listing = commands.add_parser("list", help="list your active clusters (pending, starting, running)")
    shown = listing.add_mutually_exclusive_group()
    shown.add_argument("--all", action="store_true", help="also stopping, stopped and failed clusters")
    shown.add_argument("--status", action="append", choices=STATUSES, help="only clusters in this status (repeatable)")

    create = commands.add_parser("create", help="create a cluster")
    for name, text in OPTION_FLAGS.items():
        create.add_argument(f"--{name}", metavar="VALUE", help=text)
    create.add_argument(
        "-o", "--option", action="append", default=[], metavar="NAME=VALUE",
        help="any other cluster option the service offers (repeatable)",
    )
    create.add_argument("--wait", action="store_true", help="return only once the cluster runs")
    create.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")

    scale = commands.add_parser("scale", help="ask for a number of workers (turns adaptivity off)")
    scale.add_argument("cluster_id")
    scale.add_argument("workers", type=int)

    adapt = commands.add_parser("adapt", help="let the service scale between two bounds")
    adapt.add_argument("cluster_id")
    adapt.add_argument("--minimum", type=int, default=0)
    adapt.add_argument("--maximum", type=int, required=True)

    logs = commands.add_parser("logs", help="print the scheduler's and workers' logs")
    logs.add_argument("cluster_id")

    dashboard = commands.add_parser("dashboard", help="print the dashboard URL")
    dashboard.add_argument("cluster_id")

    delete = commands.add_parser("delete", help="stop clusters and their workers")
    delete.add_argument("cluster_ids", nargs="+", metavar="cluster_id")
    return parser


def requested_options(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The ``(name, text)`` pairs given as flags, in order; ``-o`` entries must be ``NAME=VALUE``."""
    pairs = [(name, getattr(args, name)) for name in OPTION_FLAGS if getattr(args, name) is not None]
    for entry in args.option:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise OptionsError(f"-o expects NAME=VALUE, got {entry!r}")
        pairs.append((name, value))
    return pairs


# -- text output -----------------------------------------------------------------------------


def format_table(reports: Sequence[ClusterReport]) -> str:
    header = ("ID", "STATUS", "WORKERS", "PENDING", "HELD", "FAILED", "CREATED")
    rows = [header] + [
        (
            r.id,
            r.status if not r.reason else f"{r.status} ({r.reason})",
            f"{r.workers.running}/{r.workers.requested}",
            str(r.workers.pending),
            str(r.workers.held),
            str(r.workers.failed),
            r.created or "",
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    # why workers are held (the batch system's own words), under the table
    lines += [f"{r.id}: held: {reason}" for r in reports for reason in r.workers.held_reasons]
    return "\n".join(lines)


def format_logs(logs: Any) -> str:
    """``{"scheduler": "...", "<worker>": "..."}`` as sections; other shapes as JSON."""
    if isinstance(logs, dict) and all(isinstance(v, str) for v in logs.values()):
        return "\n".join(f"==> {name} <==\n{text.rstrip()}\n" for name, text in logs.items())
    return json.dumps(logs, indent=2)


def format_report(r: ClusterReport) -> str:
    return (
        f"{r.id}  {r.status}{f' ({r.reason})' if r.reason else ''}  "
        f"workers {r.workers.running}/{r.workers.requested}"
    ) + "".join(f"\n  held: {reason}" for reason in r.workers.held_reasons)


def format_running(r: ClusterReport) -> str:
    """A cluster that just started: its id, then where to look and where to connect."""
    return (f"{r.id}\n"
            f"  dashboard: {r.dashboard_link or '(none)'}\n"
            f"  scheduler: {r.scheduler_address or '(none)'}  (HubCluster.from_id({r.id!r}) connects)")


# -- commands ------------------------------------------------------------------------------


async def run_command(args: argparse.Namespace, api: ServiceAPI) -> tuple[Any, str]:
    """Do what ``args`` asks; return (JSON result, text result)."""
    if args.command == "list":
        keep = select_statuses("all" if args.all else args.status)
        reports = [r for r in map(ClusterReport.from_json, await api.list_clusters()) if r.status in keep]
        return [r.raw for r in reports], format_table(reports)

    if args.command == "create":
        schema = options_schema(await api.get_options())
        options = {name: parse_text(schema, name, text) for name, text in requested_options(args)}
        report = ClusterReport.from_json(await api.create_cluster(validate_options(schema, options)))
        if not args.wait:
            return report.raw, report.id
        report = await wait_until_running(api, report, args.timeout)
        return report.raw, format_running(report)

    if args.command == "scale":
        report = ClusterReport.from_json(await api.scale(args.cluster_id, args.workers))
        return report.raw, format_report(report)

    if args.command == "adapt":
        if args.maximum < args.minimum:
            raise OptionsError(f"--maximum {args.maximum} is below --minimum {args.minimum}")
        report = ClusterReport.from_json(await api.adapt(args.cluster_id, args.minimum, args.maximum))
        return report.raw, format_report(report)

    if args.command == "logs":
        logs = await api.logs(args.cluster_id)
        return logs, format_logs(logs)

    if args.command == "dashboard":
        report = ClusterReport.from_json(await api.get_cluster(args.cluster_id))
        if not report.dashboard_link:
            raise HubError(f"cluster {report.id} is {report.status}: no dashboard")
        return {"id": report.id, "dashboard_link": report.dashboard_link}, report.dashboard_link

    if args.command == "delete":
        for cluster_id in args.cluster_ids:
            await api.delete_cluster(cluster_id)
        return {"deleted": args.cluster_ids}, "\n".join(args.cluster_ids)

    raise AssertionError(f"unhandled command {args.command}")  # argparse restricts the choices


async def _main(args: argparse.Namespace) -> int:
    config = resolve_config(hub_url=args.hub_url, token_file=args.token_file, ca_file=args.ca_file)
    api = ServiceAPI(config)
    try:
        result, text = await run_command(args, api)
    finally:
        api.close()
    print(json.dumps(result, indent=2) if args.json else text)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmsaf-dask`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)  # exits with 2 on usage errors
    try:
        return asyncio.run(_main(args))
    except HubError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Scheduler preload of the local backend: records every listener's address for the service.

``dask scheduler --scheduler-file`` records only the first listener; the service needs the TLS
address (workers, clients) and the loopback ``ws://`` one (the hub's websocket relay). Written to
``addresses.json`` in the scheduler's working directory, atomically.
"""

from __future__ import annotations

import json
import os

ADDRESS_FILE = "addresses.json"


def dask_setup(scheduler) -> None:
    dashboard = scheduler.services.get("dashboard")
    record = {
        "addresses": [listener.contact_address for listener in scheduler.listeners],
        "dashboard_port": dashboard.port if dashboard is not None else None,
        "pid": os.getpid(),
    }
    tmp = ADDRESS_FILE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, ADDRESS_FILE)

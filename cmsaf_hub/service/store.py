"""Persistence of cluster and worker records (SQLAlchemy; SQLite by default, PostgreSQL by URL).

Every record lives in memory (reads never touch the database and never wait) and is written
through to the database by one dedicated thread, in order, so the event loop never blocks on I/O
and a write never overtakes an earlier one. Waiters can sleep until a cluster changes (long polls).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Any, Callable

import sqlalchemy as sa

from .models import ClusterRecord, ClusterStatus, ClusterTarget, WorkerRecord, WorkerStatus

metadata = sa.MetaData()

clusters_table = sa.Table(
    "clusters",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False, index=True),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("target", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("worker_target", sa.Integer, nullable=False),
    sa.Column("adapt_minimum", sa.Integer),
    sa.Column("adapt_maximum", sa.Integer),
    sa.Column("scheduler_address", sa.String(255)),
    sa.Column("dashboard_address", sa.String(255)),
    sa.Column("backend_state", sa.JSON, nullable=False),
    sa.Column("tls_cert", sa.Text, nullable=False),
    sa.Column("tls_key_encrypted", sa.LargeBinary, nullable=False),
    sa.Column("workers_failed_total", sa.Integer, nullable=False),
    sa.Column("workers_failed_in_row", sa.Integer, nullable=False),
    sa.Column("started", sa.Float),
    sa.Column("stopped", sa.Float),
    sa.Column("last_activity", sa.Float),
)

workers_table = sa.Table(
    "workers",
    metadata,
    sa.Column("cluster_id", sa.String(64), sa.ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("backend_state", sa.JSON, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

_CLUSTER_COLUMNS = [c.name for c in clusters_table.columns]
_WORKER_COLUMNS = [c.name for c in workers_table.columns]


def _row(record: Any, columns: list[str]) -> dict[str, Any]:
    values = {}
    for name in columns:
        value = getattr(record, name)
        values[name] = value.value if isinstance(value, enum.Enum) else value
    return values


def cluster_from_row(row: dict[str, Any]) -> ClusterRecord:
    data = dict(row)
    data["status"] = ClusterStatus(data["status"])
    data["target"] = ClusterTarget(data["target"])
    return ClusterRecord(**data)


def worker_from_row(row: dict[str, Any]) -> WorkerRecord:
    data = dict(row)
    data["status"] = WorkerStatus(data["status"])
    return WorkerRecord(**data)


assert set(_CLUSTER_COLUMNS) <= {f.name for f in fields(ClusterRecord)}
assert set(_WORKER_COLUMNS) == {f.name for f in fields(WorkerRecord)}


class Store:
    """In-memory records written through to SQL by a single thread."""

    def __init__(self, url: str, *, log: logging.Logger | None = None, echo: bool = False):
        self.url = url
        self.log = log or logging.getLogger(__name__)
        self.echo = echo
        self.clusters: dict[str, ClusterRecord] = {}
        self._engine: sa.Engine | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cmsaf-store")
        self._changed: dict[str, asyncio.Event] = {}
        #: Called with a cluster id whenever that cluster's record changes (e.g. to drop caches).
        self.listeners: list[Callable[[str], None]] = []

    def __repr__(self) -> str:
        return f"Store({sa.make_url(self.url).render_as_string(hide_password=True)!r})"

    async def _run(self, fn: Callable, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- lifecycle -------------------------------------------------------------------------------

    def _open_sync(self) -> list[ClusterRecord]:
        kwargs: dict[str, Any] = {"echo": self.echo}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False}
        self._engine = sa.create_engine(self.url, **kwargs)
        if self.url.startswith("sqlite"):
            @sa.event.listens_for(self._engine, "connect")
            def _pragmas(dbapi_conn, _record):
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA journal_mode=WAL")
                cur.close()
        metadata.create_all(self._engine)
        with self._engine.connect() as conn:
            records = {
                r["id"]: cluster_from_row(r) for r in conn.execute(sa.select(clusters_table)).mappings()
            }
            for r in conn.execute(sa.select(workers_table)).mappings():
                if r["cluster_id"] in records:
                    records[r["cluster_id"]].workers[r["name"]] = worker_from_row(r)
        return list(records.values())

    async def open(self) -> None:
        for record in await self._run(self._open_sync):
            self.clusters[record.id] = record
        self.log.info("Loaded %d clusters from the database", len(self.clusters))

    async def close(self) -> None:
        if self._engine is not None:
            await self._run(self._engine.dispose)
        self._executor.shutdown(wait=True)

    # -- reads (memory only) -----------------------------------------------------------------------

    def get(self, cluster_id: str) -> ClusterRecord | None:
        return self.clusters.get(cluster_id)

    def owned_by(self, owner: str) -> list[ClusterRecord]:
        return [c for c in self.clusters.values() if c.owner == owner]

    def active_owned_by(self, owner: str) -> list[ClusterRecord]:
        return [c for c in self.clusters.values() if c.owner == owner and c.status.active]

    def limited_owned_by(self, owner: str) -> list[ClusterRecord]:
        """The owner's clusters that count against their limits."""
        return [c for c in self.clusters.values() if c.owner == owner and c.counts_against_limits]

    # -- change notification -----------------------------------------------------------------------

    def notify(self, cluster_id: str) -> None:
        for listener in self.listeners:
            listener(cluster_id)
        event = self._changed.pop(cluster_id, None)
        if event is not None:
            event.set()

    async def wait_for_change(self, cluster_id: str, timeout: float) -> bool:
        """Sleep until the cluster's record changes or ``timeout`` passes; True if it changed."""
        event = self._changed.setdefault(cluster_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- writes ------------------------------------------------------------------------------------

    def _upsert_sync(self, table: sa.Table, key: dict[str, Any], values: dict[str, Any]) -> None:
        assert self._engine is not None
        with self._engine.begin() as conn:
            where = sa.and_(*(table.c[k] == v for k, v in key.items()))
            if conn.execute(sa.update(table).where(where).values(**values)).rowcount == 0:
                conn.execute(sa.insert(table).values(**values))

    def _delete_sync(self, table: sa.Table, key: dict[str, Any]) -> None:
        assert self._engine is not None
        with self._engine.begin() as conn:
            conn.execute(sa.delete(table).where(sa.and_(*(table.c[k] == v for k, v in key.items()))))

    async def add(self, record: ClusterRecord) -> None:
        """Record a new cluster (already in memory once this is called, before the write lands)."""
        self.clusters[record.id] = record
        await self.save(record)

    async def save(self, record: ClusterRecord) -> None:
        self.notify(record.id)
        await self._run(self._upsert_sync, clusters_table, {"id": record.id}, _row(record, _CLUSTER_COLUMNS))

    async def save_worker(self, worker: WorkerRecord) -> None:
        cluster = self.clusters.get(worker.cluster_id)
        if cluster is not None:
            cluster.workers[worker.name] = worker
        self.notify(worker.cluster_id)
        await self._run(
            self._upsert_sync,
            workers_table,
            {"cluster_id": worker.cluster_id, "name": worker.name},
            _row(worker, _WORKER_COLUMNS),
        )

    async def delete_worker(self, cluster_id: str, name: str) -> None:
        cluster = self.clusters.get(cluster_id)
        if cluster is not None:
            cluster.workers.pop(name, None)
        self.notify(cluster_id)
        await self._run(self._delete_sync, workers_table, {"cluster_id": cluster_id, "name": name})

    async def delete_cluster(self, cluster_id: str) -> None:
        """Forget a cluster entirely (retention of stopped clusters expired)."""
        self.clusters.pop(cluster_id, None)
        self.notify(cluster_id)
        await self._run(self._delete_sync, workers_table, {"cluster_id": cluster_id})
        await self._run(self._delete_sync, clusters_table, {"id": cluster_id})

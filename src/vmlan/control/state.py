"""The daemon's state in SQLite: network definitions, leases, forwards, DNS records, attachments.

One file, ``<state dir>/vmlan.db``, in WAL mode with ``synchronous=FULL``: every method that changes
something commits (and so fsyncs the WAL) before it returns, and the API answers only after that, so
a ``kill -9`` of the daemon never loses a change it acknowledged. Readers never block the writer.

What is kept, per network (by name):

- the definition: uuid, the XML as ``net-dumpxml`` shows it once defined (bridge name and MAC filled
  in, as libvirt writes its config), autostart, the backend mode asked for (auto/rootless/privileged),
  whether it is persistent, and whether it was running (with the boot it ran in);
- DHCP leases (mac, ip, hostname, expiry in wall-clock seconds, client id);
- port forwards added at run time (proto, host address and port, guest address and port);
- DNS records added at run time (name -> IPv4);
- guest attachments (target, MAC, link state, the socket): a daemon restarted in the same boot
  reconnects to the guests that were attached.

Everything runs on the event loop's thread; statements are short (no statement waits on the network).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmlan.control.backends import LeaseRecord

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    xml TEXT NOT NULL,
    autostart INTEGER NOT NULL DEFAULT 0,
    mode TEXT NOT NULL DEFAULT 'auto',
    persistent INTEGER NOT NULL DEFAULT 1,
    active_boot TEXT,
    backend TEXT
);
CREATE TABLE IF NOT EXISTS leases (
    network TEXT NOT NULL,
    mac TEXT NOT NULL,
    ip TEXT NOT NULL,
    hostname TEXT,
    expires REAL NOT NULL,
    client_id TEXT,
    PRIMARY KEY (network, mac)
);
CREATE TABLE IF NOT EXISTS forwards (
    network TEXT NOT NULL,
    proto TEXT NOT NULL,
    host_addr TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    guest_addr TEXT NOT NULL,
    guest_port INTEGER NOT NULL,
    PRIMARY KEY (network, proto, host_addr, host_port)
);
CREATE TABLE IF NOT EXISTS dns_records (
    network TEXT NOT NULL,
    name TEXT NOT NULL,
    ip TEXT NOT NULL,
    PRIMARY KEY (network, name, ip)
);
CREATE TABLE IF NOT EXISTS attachments (
    target TEXT PRIMARY KEY,
    network TEXT NOT NULL,
    mac TEXT NOT NULL,
    model TEXT,
    link_up INTEGER NOT NULL DEFAULT 1,
    owner_uid INTEGER NOT NULL,
    netdev TEXT NOT NULL,
    boot TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class NetworkRow:
    name: str
    uuid: str
    xml: str
    autostart: bool
    mode: str
    persistent: bool
    active_boot: str | None
    backend: str | None


@dataclass(frozen=True)
class ForwardRow:
    proto: str
    host_addr: str
    host_port: int
    guest_addr: str
    guest_port: int


@dataclass(frozen=True)
class AttachmentRow:
    target: str
    network: str
    mac: str
    model: str | None
    link_up: bool
    owner_uid: int
    netdev: str
    boot: str


class StateError(Exception):
    """The state file cannot be opened or is of an unknown schema (one line)."""


class StateStore:
    """See the module docstring. ``path`` is the database file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                elif row[0] != str(SCHEMA_VERSION):
                    raise StateError(f"{path}: state schema {row[0]} is not this vmlan's ({SCHEMA_VERSION})")
        except sqlite3.Error as exc:
            raise StateError(f"{path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (fsynced: synchronous=FULL) when the block ends."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @property
    def journal_mode(self) -> str:
        return str(self.db.execute("PRAGMA journal_mode").fetchone()[0])

    @property
    def synchronous(self) -> int:
        return int(self.db.execute("PRAGMA synchronous").fetchone()[0])

    # -- meta ------------------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                       (key, value))

    def next_counter(self, key: str) -> int:
        """A counter that only goes up, across restarts (attachment names)."""
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            value = int(row[0]) if row is not None else 0
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                       (key, str(value + 1)))
        return value

    # -- networks --------------------------------------------------------------------------------------
    def networks(self) -> list[NetworkRow]:
        rows = self.db.execute(
            "SELECT name, uuid, xml, autostart, mode, persistent, active_boot, backend FROM networks ORDER BY name"
        ).fetchall()
        return [NetworkRow(r[0], r[1], r[2], bool(r[3]), r[4], bool(r[5]), r[6], r[7]) for r in rows]

    def network(self, name: str) -> NetworkRow | None:
        for row in self.networks():
            if row.name == name:
                return row
        return None

    def put_network(self, row: NetworkRow) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO networks VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "uuid=excluded.uuid, xml=excluded.xml, autostart=excluded.autostart, mode=excluded.mode, "
                "persistent=excluded.persistent, active_boot=excluded.active_boot, backend=excluded.backend",
                (row.name, row.uuid, row.xml, int(row.autostart), row.mode, int(row.persistent), row.active_boot,
                 row.backend),
            )

    def set_autostart(self, name: str, autostart: bool) -> None:
        with self.transaction() as db:
            db.execute("UPDATE networks SET autostart=? WHERE name=?", (int(autostart), name))

    def set_active(self, name: str, boot: str | None, backend: str | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE networks SET active_boot=?, backend=? WHERE name=?", (boot, backend, name))

    def delete_network(self, name: str) -> None:
        """The definition and everything kept for it (leases too: libvirt drops its status files)."""
        with self.transaction() as db:
            for table in ("networks", "leases", "forwards", "dns_records", "attachments"):
                column = "name" if table == "networks" else "network"
                db.execute(f"DELETE FROM {table} WHERE {column}=?", (name,))

    # -- leases (the backends' LeaseStore) -------------------------------------------------------------
    def persist(self, network: str, lease: LeaseRecord) -> None:
        self.persist_many(network, [lease], [])

    def persist_many(self, network: str, leases: list[LeaseRecord], gone: list[str]) -> None:
        """Upsert ``leases`` and delete the MACs in ``gone``, in one transaction."""
        with self.transaction() as db:
            for lease in leases:
                db.execute(
                    "INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(network, mac) DO UPDATE SET "
                    "ip=excluded.ip, hostname=excluded.hostname, expires=excluded.expires, "
                    "client_id=excluded.client_id",
                    (network, lease.mac, lease.ip, lease.hostname, lease.expires, lease.client_id),
                )
            for mac in gone:
                db.execute("DELETE FROM leases WHERE network=? AND mac=?", (network, mac))

    def load(self, network: str) -> list[LeaseRecord]:
        rows = self.db.execute(
            "SELECT mac, ip, hostname, expires, client_id FROM leases WHERE network=? ORDER BY mac", (network,)
        ).fetchall()
        return [LeaseRecord(r[0], r[1], r[2], float(r[3]), r[4]) for r in rows]

    def forget_leases(self, network: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM leases WHERE network=?", (network,))

    # -- forwards --------------------------------------------------------------------------------------
    def forwards(self, network: str) -> list[ForwardRow]:
        rows = self.db.execute(
            "SELECT proto, host_addr, host_port, guest_addr, guest_port FROM forwards WHERE network=? "
            "ORDER BY proto, host_addr, host_port", (network,)
        ).fetchall()
        return [ForwardRow(r[0], r[1], int(r[2]), r[3], int(r[4])) for r in rows]

    def add_forward(self, network: str, fwd: ForwardRow) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO forwards VALUES (?, ?, ?, ?, ?, ?)",
                       (network, fwd.proto, fwd.host_addr, fwd.host_port, fwd.guest_addr, fwd.guest_port))

    def remove_forward(self, network: str, proto: str, host_addr: str, host_port: int) -> bool:
        with self.transaction() as db:
            cur = db.execute("DELETE FROM forwards WHERE network=? AND proto=? AND host_addr=? AND host_port=?",
                             (network, proto, host_addr, host_port))
        return cur.rowcount > 0

    # -- DNS records -----------------------------------------------------------------------------------
    def dns_records(self, network: str) -> list[tuple[str, str]]:
        rows = self.db.execute("SELECT name, ip FROM dns_records WHERE network=? ORDER BY name, ip",
                               (network,)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def add_dns_record(self, network: str, name: str, ip: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO dns_records VALUES (?, ?, ?)", (network, name, ip))

    def remove_dns_record(self, network: str, name: str, ip: str | None) -> int:
        with self.transaction() as db:
            if ip is None:
                cur = db.execute("DELETE FROM dns_records WHERE network=? AND name=?", (network, name))
            else:
                cur = db.execute("DELETE FROM dns_records WHERE network=? AND name=? AND ip=?", (network, name, ip))
        return cur.rowcount

    # -- attachments -----------------------------------------------------------------------------------
    def attachments(self, network: str | None = None) -> list[AttachmentRow]:
        query = "SELECT target, network, mac, model, link_up, owner_uid, netdev, boot FROM attachments"
        args: tuple[str, ...] = ()
        if network is not None:
            query += " WHERE network=?"
            args = (network,)
        rows = self.db.execute(query + " ORDER BY target", args).fetchall()
        return [AttachmentRow(r[0], r[1], r[2], r[3], bool(r[4]), int(r[5]), r[6], r[7]) for r in rows]

    def add_attachment(self, row: AttachmentRow) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO attachments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (row.target, row.network, row.mac, row.model, int(row.link_up), row.owner_uid, row.netdev,
                        row.boot))

    def set_attachment_link(self, target: str, up: bool) -> None:
        with self.transaction() as db:
            db.execute("UPDATE attachments SET link_up=? WHERE target=?", (int(up), target))

    def remove_attachment(self, target: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM attachments WHERE target=?", (target,))

    def remove_attachments(self, network: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM attachments WHERE network=?", (network,))

"""The state store: WAL with synchronous=FULL, round trips, and a kill -9 mid-write that loses nothing
the store acknowledged."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from vmlan.control.backends import LeaseRecord
from vmlan.control.state import AttachmentRow, ForwardRow, NetworkRow, StateStore


def test_wal_and_full_sync(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "vmlan.db")
    assert store.journal_mode == "wal"
    assert store.synchronous == 2  # FULL
    store.close()
    again = StateStore(tmp_path / "vmlan.db")
    assert again.journal_mode == "wal"
    again.close()


def test_round_trips(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "vmlan.db")
    row = NetworkRow("lab", "83274abb-f281-462c-9cac-d14b7e400291", "<network/>", True, "rootless", True, "b",
                     "rootless")
    store.put_network(row)
    assert store.network("lab") == row
    store.set_autostart("lab", False)
    store.set_active("lab", None, None)
    assert store.network("lab") == NetworkRow("lab", row.uuid, "<network/>", False, "rootless", True, None, None)
    store.persist("lab", LeaseRecord("52:54:00:00:00:02", "10.0.0.3", None, 1e9))
    store.persist_many("lab", [LeaseRecord("52:54:00:00:00:01", "10.0.0.2", "g1", 2e9, "01:aa")], [])
    store.persist("lab", LeaseRecord("52:54:00:00:00:02", "10.0.0.4", "g2", 3e9))
    assert store.load("lab") == [LeaseRecord("52:54:00:00:00:01", "10.0.0.2", "g1", 2e9, "01:aa"),
                                 LeaseRecord("52:54:00:00:00:02", "10.0.0.4", "g2", 3e9)]
    store.persist_many("lab", [], ["52:54:00:00:00:01"])
    assert [r.mac for r in store.load("lab")] == ["52:54:00:00:00:02"]
    store.add_forward("lab", ForwardRow("tcp", "", 2222, "10.0.0.4", 22))
    assert store.forwards("lab") == [ForwardRow("tcp", "", 2222, "10.0.0.4", 22)]
    assert store.remove_forward("lab", "tcp", "", 2222) and not store.remove_forward("lab", "tcp", "", 2222)
    store.add_dns_record("lab", "db", "10.0.0.9")
    store.add_dns_record("lab", "db", "10.0.0.9")
    assert store.dns_records("lab") == [("db", "10.0.0.9")]
    att = AttachmentRow("v525400000002", "lab", "52:54:00:00:00:02", "virtio", True, 0, "stream,...", "b")
    store.add_attachment(att)
    store.set_attachment_link("v525400000002", False)
    assert store.attachments("lab")[0].link_up is False
    assert store.next_counter("x") == 0 and store.next_counter("x") == 1
    store.delete_network("lab")
    assert store.network("lab") is None and store.load("lab") == [] and store.attachments() == []
    assert store.dns_records("lab") == []


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vmlan.control.backends import LeaseRecord
    from vmlan.control.state import NetworkRow, StateStore

    store = StateStore(Path(sys.argv[1]))
    n = 0
    while True:
        store.persist("lab", LeaseRecord(f"52:54:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
                                         f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", None, float(n)))
        store.put_network(NetworkRow(f"net{n}", f"00000000-0000-0000-0000-{n:012d}", "<network/>", False,
                                     "auto", True, None, None))
        print(n, flush=True)  # acknowledged: both writes committed
        n += 1
""")


def test_kill9_mid_write_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "vmlan.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = -1
    for line in proc.stdout:
        acked = int(line)
        if acked >= 150:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    rest = proc.stdout.read().split()  # acknowledged before the kill landed, still in the pipe
    if rest:
        acked = int(rest[-1])
    store = StateStore(db)
    leases = {r.ip for r in store.load("lab")}
    names = {r.name for r in store.networks()}
    for n in range(acked + 1):
        assert f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" in leases
        assert f"net{n}" in names
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

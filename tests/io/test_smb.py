"""SmbServer (QEMU's smb=DIR) against Debian's samba 4.17 and smbclient.

smbclient cannot reach a per-connection smbd by itself, so :class:`Relay` does what the user stack does:
accept a client on a loopback port and splice it to the socket ``SmbServer.connect()`` returns. Needs the
Debian packages samba and smbclient (dev.sh installs them); the test run as another user needs root.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import pwd
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmlan.io import smb
from vmlan.io.loop import new_event_loop
from vmlan.io.smb import SmbError, SmbServer, SmbUser

SRC = str(Path(__file__).resolve().parents[2] / "src")
BIG = 3 * 1024 * 1024 + 17  # several SMB2 reads/writes, not a multiple of anything


def wait_for(predicate: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.005)


class Relay:
    """The stack's part: a loopback listener whose connections are spliced to ``SmbServer.connect()``.

    The server lives on its own event loop thread (vmlan's loop, uvloop when installed), called from
    loop callbacks as the stack calls it.
    """

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = SmbServer(str(directory), loop=self.loop, **kwargs)
        self.refused: list[int] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.call(self.server.start)
        self.call(self.loop.add_reader, self.listener.fileno(), self._accept)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.setblocking(False)
        try:
            host = self.server.connect()
        except SmbError as exc:
            self.refused.append(exc.errno)
            conn.close()
            return
        self.loop.create_task(self._splice(conn, host))

    async def _splice(self, a: socket.socket, b: socket.socket) -> None:
        await asyncio.gather(self._pump(a, b), self._pump(b, a), return_exceptions=True)
        a.close()
        b.close()

    async def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := await self.loop.sock_recv(src, 65536):
                await self.loop.sock_sendall(dst, data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            src.close()
            dst.close()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.call(self.loop.remove_reader, self.listener.fileno())
        self.call(self.server.close)
        self.listener.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def share(tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir()
    (directory / "big.bin").write_bytes(os.urandom(BIG))
    (directory / "hello.txt").write_text("hello from the host\n")
    return directory


@pytest.fixture
def relay(share: Path) -> Iterator[Relay]:
    _need("smbclient")
    r = Relay(share)
    yield r
    r.close()


def _need(tool: str) -> None:
    if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        pytest.fail(f"{tool} not found: apt-get install samba smbclient (dev.sh does)", pytrace=False)


def smbclient(port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["smbclient", "-N", "-p", str(port), *args], capture_output=True, text=True,
                          timeout=timeout)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(server: SmbServer, conf: str, pids: set[int]) -> list[str]:
    """Anything of ``server`` still on the machine: processes, zombies of ours, its directory."""
    found = [f"process {pid}" for pid in smb.processes_using(conf)]
    for pid in pids:
        if os.path.exists(f"/proc/{pid}"):
            found.append(f"smbd {pid} (state {_state(pid)})")
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ppid(int(entry)) == os.getpid() and _state(int(entry)) == "Z":
            found.append(f"zombie {entry}")
    if os.path.exists(os.path.dirname(conf)):
        found.append(f"directory {os.path.dirname(conf)}")
    return found


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
    except OSError:
        return {}


def _state(pid: int) -> str:
    return _status(pid).get("State", "?")[:1]


def _ppid(pid: int) -> int:
    return int(_status(pid).get("PPid", "-1"))


# -- the configuration --------------------------------------------------------------------------------------
def test_configuration_is_private_and_testparm_has_nothing_to_say(share: Path) -> None:
    _need("testparm")
    with SmbServer(str(share)) as server:
        assert server.workdir is not None and server.conf_path is not None
        assert os.stat(server.workdir).st_mode & 0o777 == 0o700
        assert os.stat(server.conf_path).st_mode & 0o777 == 0o600
        out = subprocess.run(["testparm", "-s", server.conf_path], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        text = out.stdout + out.stderr
        for bad in ("WARNING", "Unknown parameter", "deprecated", "Ignoring", "ERROR"):
            assert bad.lower() not in text.lower(), text
        assert f"path = {share}" in out.stdout
        assert f"force user = {pwd.getpwuid(os.geteuid()).pw_name}" in out.stdout
        assert "map to guest = Bad User" in out.stdout


# -- through smbclient -------------------------------------------------------------------------------------
def test_smbclient_lists_fetches_and_uploads(relay: Relay, share: Path, tmp_path: Path) -> None:
    listing = smbclient(relay.port, "-L", "127.0.0.1")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert any(line.split()[:2] == ["qemu", "Disk"] for line in listing.stdout.splitlines()), listing.stdout

    fetched = tmp_path / "fetched.bin"
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(BIG))
    out = smbclient(relay.port, "//127.0.0.1/qemu", "-c", f"ls; get big.bin {fetched}; put {upload} up.bin")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hello.txt" in out.stdout
    assert sha256(fetched) == sha256(share / "big.bin")
    assert sha256(share / "up.bin") == sha256(upload)
    assert (share / "up.bin").stat().st_uid == os.geteuid()  # force user: the user running vmlan
    wait_for(lambda: relay.server.active == 0, what="every smbd reaped")
    assert relay.server.spawned == 2 and relay.server.exited_badly == 0


def test_two_clients_at_once(relay: Relay, share: Path, tmp_path: Path) -> None:
    clients = []
    for _ in range(2):
        proc = subprocess.Popen(["stdbuf", "-oL", "smbclient", "-N", "-p", str(relay.port), "//127.0.0.1/qemu"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        clients.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(b"ls\n")
        proc.stdin.flush()
        _read_until(proc, b"blocks available")
    assert relay.server.active == 2  # both sessions open, each with its own smbd
    for n, proc in enumerate(clients):
        assert proc.stdin is not None
        proc.stdin.write(f"get big.bin {tmp_path}/copy{n}\nquit\n".encode())
        proc.stdin.close()
    for n, proc in enumerate(clients):
        assert proc.wait(60) == 0
        assert sha256(tmp_path / f"copy{n}") == sha256(share / "big.bin")
    wait_for(lambda: relay.server.active == 0, what="both smbd reaped")


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 30) -> bytes:
    assert proc.stdout is not None
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} from smbclient: {data!r}"
        if select.select([proc.stdout], [], [], left)[0]:
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            assert chunk, f"smbclient ended: {data!r}"
            data += chunk
    return data


def test_close_leaves_no_process_zombie_or_file(relay: Relay) -> None:
    # -L starts samba-dcerpcd and rpcd_* (their own session, outliving smbd); close() must stop them too
    assert smbclient(relay.port, "-L", "127.0.0.1").returncode == 0
    server = relay.server
    conf = server.conf_path
    assert conf is not None
    assert smb.processes_using(conf), "samba-dcerpcd should be running after a share listing"
    # the listing's smbd exits after smbclient does, and is reaped by its pidfd on the loop: wait for that
    wait_for(lambda: relay.call(lambda: server.active) == 0, what="the listing's smbd to be reaped")
    sock = relay.call(server.connect)  # and one smbd still serving a connection at close
    pids = set(relay.call(lambda: set(server._procs)))
    assert len(pids) == 1
    relay.close()
    sock.close()
    assert leftovers(server, conf, pids) == []
    assert server.active == 0


def test_netbios_session_request_as_on_port_139(relay: Relay) -> None:
    """Guests reach port 139 too (QEMU exports both): the same smbd answers RFC 1002's session request."""
    sock = relay.call(relay.server.connect)
    sock.setblocking(True)
    sock.settimeout(20)
    request = b"\x81\x00\x00\x44" + _nb_name("*SMBSERVER", 0x20) + _nb_name("VMLANTEST", 0x00)
    sock.sendall(request)
    assert sock.recv(4) == b"\x82\x00\x00\x00"  # positive session response
    sock.close()
    wait_for(lambda: relay.server.active == 0, what="smbd exits when the connection closes")


def _nb_name(name: str, suffix: int) -> bytes:
    """RFC 1001 section 14.1 first-level encoding: 16 bytes, each nibble + 'A', as a 32-byte label."""
    raw = name.ljust(15).encode()[:15] + bytes([suffix])
    return b"\x20" + bytes(b for c in raw for b in (0x41 + (c >> 4), 0x41 + (c & 15))) + b"\x00"


# -- caps and errors ---------------------------------------------------------------------------------------
def test_cap_on_concurrent_smbd_refuses_then_recovers(share: Path) -> None:
    r = Relay(share, max_processes=1, spawn_rate=1e6)  # only the process cap here
    try:
        first = r.call(r.server.connect)
        with pytest.raises(SmbError) as refused:
            r.call(r.server.connect)
        assert refused.value.errno == errno.ECONNREFUSED
        assert r.server.refused == 1 and r.server.active == 1
        first.close()
        wait_for(lambda: r.server.active == 0, what="smbd reaped by its pidfd reader")
        r.call(r.server.connect).close()
        assert r.server.spawned == 2
    finally:
        r.close()


def test_spawn_rate_cap_refuses_a_connection_storm(share: Path) -> None:
    """A guest opening and closing connections in a loop would keep a CPU busy starting smbd (~60 ms each)."""
    server = SmbServer(str(share), max_processes=2, spawn_rate=0.01)  # a burst of 2, then one per 100 s
    with server:
        for _ in range(2):
            server.connect().close()
        wait_for(lambda: _reaped(server), what="both smbd reaped without a loop")
        with pytest.raises(SmbError) as refused:
            server.connect()
        assert str(refused.value) == "smb: more than 0.01 new connections per second"
        assert refused.value.errno == errno.ECONNREFUSED and server.refused == 1
        server._tokens_at -= 100  # a hundred seconds later
        server.connect().close()
        assert server.spawned == 3


def _reaped(server: SmbServer) -> bool:
    server.reap()
    return server.active == 0


def test_connect_is_quick_and_returns_a_nonblocking_socket(relay: Relay) -> None:
    started = time.perf_counter()
    sock = relay.call(relay.server.connect)
    elapsed = time.perf_counter() - started
    try:
        assert sock.getblocking() is False
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert elapsed < 0.5, elapsed  # typically ~1 ms: a loopback pair and a vfork
    finally:
        sock.close()


def test_missing_smbd_is_one_line(share: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SmbError) as given:
        SmbServer(str(share), smbd="/nonexistent/smbd").start()
    assert str(given.value) == "smbd not found at /nonexistent/smbd: install the Debian package samba"
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(smb, "SMBD_SEARCH", ())
    with pytest.raises(SmbError) as searched:
        SmbServer(str(share)).start()
    assert str(searched.value) == "smbd not found: install the Debian package samba"


@pytest.mark.parametrize("name, message", [
    ("missing", "smb={}: no such directory"),
    ("file", "smb={}: not a directory"),
    ("new\nline", "smb={}: samba cannot take this path (control characters, %, a trailing backslash or "
                  "surrounding blanks)"),
    ("50%u", "smb={}: samba cannot take this path (control characters, %, a trailing backslash or "
             "surrounding blanks)"),
])
def test_bad_directory_is_one_line(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "50%u").mkdir()
    path = str(tmp_path / name)
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    with pytest.raises(SmbError) as failed:
        SmbServer(path).start()
    assert str(failed.value) == message.format(path)
    assert "\n" not in str(failed.value) or "\n" in name
    assert {e for e in os.listdir(os.environ.get("TMPDIR", "/tmp")) if e.startswith("vmlan-smb.")} <= before


def test_not_started_or_closed_refuses_connections(share: Path) -> None:
    server = SmbServer(str(share))
    with pytest.raises(SmbError, match="not running"):
        server.connect()
    server.start()
    server.close()
    with pytest.raises(SmbError, match="not running"):
        server.connect()
    server.close()  # twice is fine


# -- whose files ---------------------------------------------------------------------------------------------
def _unprivileged() -> pwd.struct_passwd:
    """A plain system user that is not samba's guest account (nobody): as the guest account, the share's
    user only reads (samba 4.17 maps the guest's own files to the Guest SID and denies writes)."""
    if os.geteuid() != 0:
        pytest.fail("this test switches users: run it as root (CI does)", pytrace=False)
    for name in ("www-data", "daemon"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("no www-data or daemon user to run the server as", pytrace=False)


@pytest.fixture
def user_share() -> Iterator[tuple[pwd.struct_passwd, Path]]:
    """A share owned by a plain user, somewhere they can reach (tmp_path's parents are root's alone)."""
    _need("smbclient")
    user = _unprivileged()
    home = Path(tempfile.mkdtemp(prefix="vmlan-smb-test."))
    os.chmod(home, 0o755)
    share = home / "share"
    share.mkdir()
    (share / "theirs.txt").write_text("the user's file\n")
    for path in (share, share / "theirs.txt"):
        os.chown(path, user.pw_uid, user.pw_gid)
    yield user, share
    shutil.rmtree(home, ignore_errors=True)


def test_root_can_share_as_another_user(user_share: tuple[pwd.struct_passwd, Path], tmp_path: Path) -> None:
    user, share = user_share
    r = Relay(share, user=SmbUser.named(user.pw_name))
    try:
        upload = tmp_path / "upload.txt"
        upload.write_text("as another user\n")
        out = smbclient(r.port, "//127.0.0.1/qemu", "-c", f"get theirs.txt {tmp_path}/got.txt; put {upload} up.txt")
        assert out.returncode == 0, out.stdout + out.stderr
        assert (tmp_path / "got.txt").read_text() == "the user's file\n"
        assert (share / "up.txt").stat().st_uid == user.pw_uid
    finally:
        r.close()


SERVE_AS_USER = textwrap.dedent("""\
    import socket, sys, threading
    from vmlan.io.smb import SmbServer
    def pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    server = SmbServer(sys.argv[1])
    server.start()
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], server.conf_path, flush=True)
    def accept():
        while True:
            conn, _ = listener.accept()
            host = server.connect()
            host.setblocking(True)
            for a, b in ((conn, host), (host, conn)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()
    server.close()
    print("closed", server.spawned, server.active, flush=True)
""")


def test_vmlan_run_by_a_plain_user_shares_as_that_user(user_share: tuple[pwd.struct_passwd, Path],
                                                       tmp_path: Path) -> None:
    """No root anywhere: smbd runs as the user, files are theirs; no event loop (reaped at connect/close)."""
    user, share = user_share
    python = sys.executable if _world_usable(sys.executable) else "/usr/bin/python3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=SRC, TMPDIR="/tmp", HOME=str(share.parent))
    proc = subprocess.Popen(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                             "--", python, "-c", SERVE_AS_USER, str(share)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    try:
        first = proc.stdout.readline().split()
        assert len(first) == 2, proc.stderr.read()
        port, conf = int(first[0]), first[1]
        upload = tmp_path / "upload.txt"
        upload.write_text("uploaded\n")
        out = smbclient(port, "//127.0.0.1/qemu", "-c", f"get theirs.txt {tmp_path}/got.txt; put {upload} up.txt")
        assert out.returncode == 0, out.stdout + out.stderr
        assert (tmp_path / "got.txt").read_text() == "the user's file\n"
        assert (share / "up.txt").stat().st_uid == user.pw_uid
        listing = smbclient(port, "-L", "127.0.0.1")
        assert "qemu" in listing.stdout, listing.stdout + listing.stderr
        proc.stdin.close()
        assert proc.stdout.readline().split() == ["closed", "2", "0"], proc.stderr.read()
        assert proc.wait(30) == 0
        assert smb.processes_using(conf) == []
        assert not os.path.exists(os.path.dirname(conf))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _world_usable(path: str) -> bool:
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & 0o001 for p in real.parents) and bool(os.stat(real).st_mode & 0o004)

"""The command line as a user meets it: exit statuses, one-line errors, signals, cleanup."""

import fcntl
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

VMLAN = [sys.executable, "-m", "vmlan"]


def run(*args, timeout=20):
    return subprocess.run([*VMLAN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["run", "-netdev", "socket,id=a"],
            "vmlan: -netdev socket,id=a: exactly one of listen=, connect=, mcast= or udp= is required",
        ),
        (
            ["run", "-netdev", "stream,id=a,server=of,addr.type=unix,addr.path=/x"],
            "Parameter 'server' expects 'on' or 'off' (got 'of')",
        ),
        (["run", "-hub", "id=x"], "vmlan: -hub id=x: Parameter 'id' expects a number (got 'x')"),
        (["run", "-netdev"], "vmlan: -netdev: requires an argument"),
        (["run", "--frobnicate"], "vmlan: run: unrecognized option '--frobnicate'"),
        (["frobnicate"], "vmlan: unknown command 'frobnicate'"),
    ],
)
def test_bad_configuration_is_one_line_and_status_2(args, expected):
    proc = run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_refused_is_one_line_and_status_1():
    port = free_port()
    proc = run("run", "-netdev", f"socket,id=c,connect=127.0.0.1:{port}")
    assert proc.returncode == 1
    expected = f"vmlan: -netdev socket,id=c: connect to tcp:127.0.0.1:{port} failed: Connection refused"
    assert proc.stderr.strip() == expected


def test_address_in_use_is_one_line_and_status_1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run("run", "-netdev", f"socket,id=l,listen=127.0.0.1:{port}")
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("Address already in use")
    assert len(proc.stderr.strip().splitlines()) == 1


class Vmlan:
    """A ``vmlan run`` process whose stderr is read as it comes, so tests can wait for what it logs.
    Every one started is killed at the end of its test (the ``vmlan`` fixture), whatever happened."""

    started: list["Vmlan"] = []

    def __init__(self, *args, env=None):
        Vmlan.started.append(self)
        self.proc = subprocess.Popen([*VMLAN, "run", *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self):
        with self._cond:
            return "\n".join(self.lines)

    def wait_log(self, text, timeout=20):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"vmlan never logged {text!r}; status {self.proc.poll()}; log:\n"
                                         + "\n".join(self.lines))
                self._cond.wait(min(left, 0.1))

    def finish(self, signum=signal.SIGTERM, timeout=10):
        """Send ``signum`` and return (exit status, stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            out = self.proc.stdout.read()
            self.proc.wait(timeout)
        finally:
            self.proc.kill()
        self._reader.join(5)
        return self.proc.returncode, out, self.stderr


@pytest.fixture(autouse=True)
def _no_vmlan_left_behind():
    yield
    while Vmlan.started:
        vm = Vmlan.started.pop()
        if vm.proc.poll() is None:
            vm.proc.kill()
            vm.proc.wait(10)


def wait_path(path, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"vmlan exited with {proc.returncode} before {path} appeared"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.0005)


def test_default_run_serves_a_user_network_prints_qemu_options_and_cleans_up_on_sigterm(tmp_path):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    sock = tmp_path / "vmlan" / "lan0.sock"
    vm = Vmlan(env=env)
    vm.wait_log("ready: 2 netdev(s) on 1 hub(s)")
    vm.proc.send_signal(signal.SIGUSR1)
    vm.wait_log("lan0: type=stream,listening on unix:")
    status, out, err = vm.finish()
    assert status == 0, err
    assert f"-netdev stream,id=n0,server=off,addr.type=unix,addr.path={sock}" in out
    assert "-device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56" in out
    assert "user-mode network" in out and "10.0.2.15" in out
    assert "hub 0" in err and "user0: type=user," in err
    assert "user user0: user-mode network 10.0.2.0/24 (gateway 10.0.2.2, DNS 10.0.2.3, DHCP from 10.0.2.15)" in err
    assert f"attach a QEMU guest to lan0 with: -netdev stream,id=n0,server=off,addr.type=unix,addr.path={sock}" in err
    assert not sock.exists()


PEERS = 200
PEER_LINE = rb"^    s\.(\d+): unix:\S+  rx \d+ frames \d+ bytes \d+ dropped, tx \d+ frames \d+ bytes \d+ dropped$"


def test_a_dump_is_whole_when_the_next_sigusr1_interrupts_its_write_to_a_full_pipe(tmp_path):
    """vmlan blocked writing a dump to a full stderr pipe, a second SIGUSR1 arriving: the first dump
    used to end mid-line, the rest lost, the second beginning on that line (a reader counting dumps
    by their "hub 0" line then waited forever). Both dumps must arrive whole, one after the other."""
    path = tmp_path / "s.sock"
    netdev = f"stream,id=s,server=on,addr.type=unix,addr.path={path},max-peers=300"
    proc = subprocess.Popen([*VMLAN, "run", "-netdev", netdev], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fd = proc.stderr.fileno()
    out = bytearray()

    def read_until(what, timeout=30):
        deadline = time.monotonic() + timeout
        while not what(out):
            left = deadline - time.monotonic()
            assert left > 0 and proc.poll() is None, out.decode(errors="replace")[-2000:]
            if select.select([fd], [], [], left)[0]:
                out.extend(os.read(fd, 65536))

    def wait(what, timeout=30):
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.001)

    peers = []
    try:
        read_until(lambda b: b"ready: " in b)
        for n in range(1, PEERS + 1):  # each logs a line: read them as they come
            peers.append(socket.socket(socket.AF_UNIX))
            peers[-1].connect(str(path))
            read_until(lambda b, n=n: f"peer s.{n} connected".encode() in b)
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 4096)  # a dump of 200 peers is ~20 KB: five times what the pipe holds
        start = len(out)
        proc.send_signal(signal.SIGUSR1)
        read_until(lambda b: b"\nhub 0\n" in b[start - 1 :])
        # Stop reading: vmlan fills the pipe and sleeps in the write. Then the next SIGUSR1.
        wait(lambda: "pipe_write" in Path(f"/proc/{proc.pid}/wchan").read_text())  # anon_pipe_write on 6.x
        proc.send_signal(signal.SIGUSR1)
        wait(lambda: not _pending(proc.pid) & (1 << (signal.SIGUSR1 - 1)))  # delivered, into the write

        def dumps(b):
            return bytes(b[start - 1 :]).split(b"\nhub 0\n")[1:]

        read_until(lambda b: len(dumps(b)) == 2 and len(re.findall(PEER_LINE, dumps(b)[1], re.M)) == PEERS)
        for dump in dumps(out):
            lines = dump.splitlines()
            assert [int(m.group(1)) for m in map(re.compile(PEER_LINE).match, lines) if m] == list(
                range(1, PEERS + 1)), dump.decode(errors="replace")
            assert lines[-1].startswith(f"    s.{PEERS}: ".encode()), dump.decode(errors="replace")
    finally:
        for peer in peers:
            peer.close()
        proc.terminate()
        proc.communicate(timeout=20)


def _pending(pid):
    """The signals pending for ``pid`` (thread and process), as a mask."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)


def test_sigusr1_the_moment_the_first_socket_appears_never_kills_vmlan(tmp_path):
    """Signal handlers used to be installed after the sockets existed: SIGUSR1 sent as soon as the
    socket appeared killed vmlan most of the time (its default action)."""
    for attempt in range(20):
        path = tmp_path / f"s{attempt}.sock"
        vm = Vmlan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
        try:
            wait_path(path, vm.proc)
            vm.proc.send_signal(signal.SIGUSR1)
            vm.wait_log("ready: ")
            vm.wait_log("hub 0")  # the SIGUSR1 was handled: info network was printed
        finally:
            status, _out, err = vm.finish()
        assert status == 0, f"attempt {attempt}: vmlan exited {status}:\n{err}"
        assert "Traceback" not in err and not path.exists()


def test_sigterm_during_startup_is_a_clean_exit(tmp_path):
    path = tmp_path / "s.sock"
    port = free_port()
    vm = Vmlan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}",
               "-netdev", f"socket,id=c,connect=127.0.0.1:{port},reconnect-ms=100")
    wait_path(path, vm.proc)
    status, _out, err = vm.finish(signal.SIGTERM)
    assert status == 0, err
    assert "Traceback" not in err and not path.exists()


def test_sigint_with_connected_peers_exits_cleanly(tmp_path):
    path = tmp_path / "s.sock"
    vm = Vmlan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
    vm.wait_log("ready: ")
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(str(path))
    vm.wait_log("peer s.1 connected")
    status, _out, err = vm.finish(signal.SIGINT)
    assert status == 0, err
    assert "peer s.1 connected" in err and "peer s.1 left (shutting down)" in err
    assert "Traceback" not in err
    assert peer.recv(10) == b""
    assert not path.exists()


def test_max_peers_is_a_vmlan_option_with_a_one_line_error():
    proc = run("run", "-netdev", "socket,id=l,listen=127.0.0.1:1,max-peers=0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("vmlan: -netdev socket,id=l,listen=127.0.0.1:1,max-peers=0: "
                                   "Parameter 'max-peers' expects a value in 1..1048576 (got '0')")


def test_a_socket_directory_that_cannot_be_made_is_one_line_and_status_1():
    proc = run("run", "-netdev", "stream,id=s,server=on,addr.type=unix,addr.path=/proc/nonexistent/a.sock")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("vmlan: -netdev stream,id=s: cannot create the socket's directory:")
    assert "Traceback" not in proc.stderr


def test_the_default_socket_directory_must_be_private(tmp_path):
    shared = tmp_path / "vmlan"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # writable by anyone: another user could plant a socket there
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    proc = subprocess.run([*VMLAN, "run"], env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1
    assert "is not a private directory of this user" in proc.stderr and "Traceback" not in proc.stderr

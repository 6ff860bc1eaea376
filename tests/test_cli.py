"""The command line as a user meets it: exit statuses, one-line errors, signals, cleanup."""

import os
import signal
import socket
import subprocess
import sys
import time

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


def wait_path(path, timeout=10):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_default_run_prints_qemu_options_and_cleans_up_on_sigterm(tmp_path):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    sock = tmp_path / "vmlan" / "lan0.sock"
    proc = subprocess.Popen([*VMLAN, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_path(sock)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert f"-netdev stream,id=n0,server=off,addr.type=unix,addr.path={sock}" in out
    assert "-device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56" in out
    assert "hub 0" in err and "lan0: type=stream,listening on unix:" in err
    assert not sock.exists()


def test_sigint_with_connected_peers_exits_cleanly(tmp_path):
    path = tmp_path / "s.sock"
    proc = subprocess.Popen(
        [*VMLAN, "run", "-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_path(path)
        peer = socket.socket(socket.AF_UNIX)
        peer.connect(str(path))
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "peer s.1 connected" in err and "peer s.1 left (shutting down)" in err
    assert "Traceback" not in err
    assert peer.recv(10) == b""
    assert not path.exists()


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

"""The virsh-like CLI against a real daemon: tables, messages and XML as virsh prints them (golden
files in data/), one-line errors with exit status 1, the default network out of the box, and the
API socket closed to other users (a client run as nobody through setpriv)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vmlan.control import virsh

from .conftest import DaemonProcess

DATA = Path(__file__).parent / "data"


def test_default_network_out_of_the_box(daemon_proc: DaemonProcess) -> None:
    out = daemon_proc.vmlan("net-list", "--all").stdout
    assert out == (" Name      State    Autostart   Persistent\n"
                   "--------------------------------------------\n"
                   " default   active   yes         yes\n\n")
    xml = daemon_proc.vmlan("net-dumpxml", "default").stdout
    assert "<name>default</name>" in xml and "<bridge name='virbr0' stp='on' delay='0'/>" in xml
    assert "<range start='192.168.122.2' end='192.168.122.254'/>" in xml
    assert "<forward mode='nat'>\n    <nat>\n      <port start='1024' end='65535'/>" in xml


def test_golden_session(daemon_proc: DaemonProcess, tmp_path: Path) -> None:
    d = daemon_proc
    lab = tmp_path / "lab.xml"
    shutil.copy(DATA / "lab.xml", lab)
    assert d.vmlan("net-define", str(lab)).stdout == f"Network lab defined from {lab}\n\n"
    assert d.vmlan("net-list", "--all").stdout == (DATA / "net-list-all.out").read_text()
    assert d.vmlan("net-list").stdout == (" Name      State    Autostart   Persistent\n"
                                          "--------------------------------------------\n"
                                          " default   active   yes         yes\n\n")
    assert d.vmlan("net-list", "--inactive", "--name").stdout == "lab\n\n"
    assert d.vmlan("net-list", "--all", "--uuid").stdout.splitlines()[1] == "7d5a8f40-1c2b-4e57-9a61-3b0f5a6c9e21"
    assert d.vmlan("net-dumpxml", "lab").stdout == (DATA / "lab.dumpxml").read_text()
    assert d.vmlan("net-start", "lab").stdout == "Network lab started\n\n"
    assert d.vmlan("net-autostart", "lab").stdout == "Network lab marked as autostarted\n\n"
    assert d.vmlan("net-info", "lab").stdout == (DATA / "net-info.out").read_text()
    assert d.vmlan("net-dhcp-leases", "lab").stdout == (
        " Expiry Time   MAC address   Protocol   IP address   Hostname   Client ID or DUID\n"
        "-----------------------------------------------------------------------------------\n\n")
    assert d.vmlan("net-autostart", "lab", "--disable").stdout == "Network lab unmarked as autostarted\n\n"
    assert d.vmlan("net-destroy", "lab").stdout == "Network lab destroyed\n\n"
    assert d.vmlan("net-undefine", "lab").stdout == "Network lab has been undefined\n\n"


@pytest.mark.parametrize(("args", "message"), [
    (["net-start", "nope"], "error: Network not found: no network with matching name 'nope'\n"),
    (["net-info", "nope"], "error: Network not found: no network with matching name 'nope'\n"),
    (["net-destroy", "nope"], "error: Network not found: no network with matching name 'nope'\n"),
    (["net-start", "default"], "error: Requested operation is not valid: network is already active\n"),
    (["net-define", "/nonexistent.xml"], "error: Failed to open file '/nonexistent.xml': No such file or directory\n"),
])
def test_errors_are_one_line_exit_1(daemon_proc: DaemonProcess, args: list[str], message: str) -> None:
    result = daemon_proc.vmlan(*args, check=False)
    assert (result.returncode, result.stderr, result.stdout) == (1, message, "")


def test_define_error_is_libvirts(daemon_proc: DaemonProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<network><name>x</name><ip address='10.0.0.1' netmask='255.255.255.0'><dhcp>"
                   "<range start='10.0.0.20' end='10.0.0.10'/></dhcp></ip></network>")
    result = daemon_proc.vmlan("net-define", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr == "error: internal error: range 10.0.0.20 - 10.0.0.10 is reversed\n"


def test_no_daemon_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "VMLAN_SOCKET": str(tmp_path / "none.sock")}
    xml = tmp_path / "g.xml"
    xml.write_text("<interface type='network'><mac address='52:54:00:00:00:01'/><source network='x'/></interface>")
    for args in (["net-list"], ["domxml-to-native", "qemu-argv", str(xml)]):
        r = subprocess.run([sys.executable, "-m", "vmlan", *args], env=env, capture_output=True, text=True)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.startswith(f"error: failed to connect to the vmlan daemon at {tmp_path}/none.sock: ")
        assert r.stderr.count("\n") == 1


def test_domxml_to_native_without_networks_needs_no_daemon(tmp_path: Path) -> None:
    xml = tmp_path / "g.xml"
    xml.write_text("<domain><devices><interface type='user'><mac address='52:54:00:00:00:01'/>"
                   "<model type='virtio'/></interface></devices></domain>")
    env = {**os.environ, "VMLAN_SOCKET": str(tmp_path / "none.sock")}
    r = subprocess.run([sys.executable, "-m", "vmlan", "domxml-to-native", "qemu-argv", str(xml)], env=env,
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, "-netdev user,id=hostnet0 -device virtio-net-pci,netdev=hostnet0,id=net0,"
                                           "mac=52:54:00:00:00:01\n")


def test_a_non_owner_cannot_connect(tmp_path: Path) -> None:
    # The socket sits in a directory anyone may enter (pytest's own tmp dirs are root's alone): its mode
    # 0600 must stop nobody, and with the file opened up, SO_PEERCRED still must.
    public = Path(tempfile.mkdtemp(prefix="vmlan-peercred-"))
    try:
        public.chmod(0o755)
        sock = public / "api.sock"
        d = DaemonProcess(tmp_path, "--socket", str(sock))
        d.socket = sock
        d.start()
        try:
            nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
            probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\n"
                     " s.sendall(b'GET /networks HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n s.settimeout(10)\n"
                     " print('answer', s.recv(100))\nexcept OSError as e:\n print('refused', e.errno)\n")
            assert oct(sock.stat().st_mode & 0o777) == "0o600"
            r = subprocess.run([*nobody, sys.executable, "-c", probe, str(sock)], capture_output=True, text=True)
            assert r.stdout.strip() == "refused 13", (r.stdout, r.stderr)  # EACCES
            sock.chmod(0o666)
            r = subprocess.run([*nobody, sys.executable, "-c", probe, str(sock)], capture_output=True, text=True)
            # the daemon closes at once: the probe sees EOF, or EPIPE/ECONNRESET if its request was not sent yet
            assert r.stdout.strip() in ("answer b''", "refused 104", "refused 32"), (r.stdout, r.stderr)
            deadline = time.monotonic() + 10  # the daemon logs the refusal after closing the connection
            while "API: refused a connection from uid 65534" not in d.log.read_text():
                assert time.monotonic() < deadline, d.log.read_text()
                time.sleep(0.05)
            assert d.vmlan("net-list").returncode == 0  # the owner still gets in
        finally:
            d.stop()
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_tables_are_vsh_tables() -> None:
    assert virsh.table(["A", "Long header"], [["x\ty", "1"]]) == (
        " A        Long header\n"
        "-----------------------\n"
        " x\\x09y   1\n")
    os.environ["TZ"] = "UTC"
    import time

    time.tzset()
    leases = [{"expiry_time": 1700000000.0, "mac": "52:54:00:00:00:02", "protocol": "ipv4", "ip": "10.0.0.3",
               "prefix": 24, "hostname": None, "client_id": None},
              {"expiry_time": 1700000100.0, "mac": "52:54:00:00:00:01", "protocol": "ipv4", "ip": "10.0.0.2",
               "prefix": 24, "hostname": "g1", "client_id": "01:52:54:00:00:00:01"}]
    assert virsh.dhcp_leases(leases) == (
        " Expiry Time           MAC address         Protocol   IP address    Hostname   Client ID or DUID\n"
        "-----------------------------------------------------------------------------------------------------\n"
        " 2023-11-14 22:15:00   52:54:00:00:00:01   ipv4       10.0.0.2/24   g1         01:52:54:00:00:00:01\n"
        " 2023-11-14 22:13:20   52:54:00:00:00:02   ipv4       10.0.0.3/24   -          -\n")

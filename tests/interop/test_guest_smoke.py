"""Smoke tests of the guest harness, without vmlan: two guests linked directly by QEMU's own
``-netdev socket`` (listen/connect on 127.0.0.1) ping each other and move a file over HTTP."""

from __future__ import annotations

import socket

import pytest

from guest.harness import GuestError, GuestTimeout, MakeGuest, wait_tcp_listening

pytestmark = pytest.mark.guest


UDHCPD_CONF = """\
start 10.0.0.100
end 10.0.0.110
interface eth0
lease_file /tmp/udhcpd.leases
opt subnet 255.255.255.0
opt router 10.0.0.1
opt dns 10.0.0.1 10.0.0.3
opt search one.test two.test
opt mtu 1400
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_guests_over_qemu_socket(make_guest: MakeGuest) -> None:
    port = _free_port()
    g1 = make_guest("g1", ["socket", f"listen=127.0.0.1:{port}"], mac="52:54:00:00:00:01")
    # QEMU 7.2 does not retry a failed connect (the guest would boot with a dead link): wait for the
    # listener before starting the connecting guest.
    wait_tcp_listening(port)
    g2 = make_guest("g2", ["socket", f"connect=127.0.0.1:{port}"], mac="52:54:00:00:00:02")
    g1.wait_ready()
    g2.wait_ready()

    g1.check("ip addr add 10.0.0.1/24 dev eth0")
    g2.check("ip addr add 10.0.0.2/24 dev eth0")
    assert "52:54:00:00:00:02" in g2.check("ip link show eth0")
    g1.check("ping -c 1 -W 5 10.0.0.2")
    g2.check("ping -c 1 -W 5 10.0.0.1")

    g1.check("dd if=/dev/urandom of=/www/blob bs=1024 count=4096 2>/dev/null && httpd -p 80 -h /www")
    want = g1.check("sha256sum /www/blob").split()[0]
    # Debian's busybox wget segfaults with -T: bound it with timeout instead.
    g2.check("timeout 60 wget -q -O /tmp/blob http://10.0.0.1/blob", timeout=90)
    got = g2.check("sha256sum /tmp/blob").split()[0]
    assert len(want) == 64
    assert got == want

    # The image's default udhcpc script configures the interface and records the lease (against
    # busybox's udhcpd on the other guest).
    g1.check(f"cat >/tmp/udhcpd.conf <<'EOF'\n{UDHCPD_CONF}EOF")
    g1.check("touch /tmp/udhcpd.leases && udhcpd /tmp/udhcpd.conf")
    g2.check("ip -4 addr flush dev eth0")
    g2.check("timeout 30 udhcpc -i eth0 -f -q -n -t 4 -T 2 -O mtu -O search", timeout=60)
    lease = dict(
        line.split("=", 1)
        for line in g2.check(
            '. /tmp/udhcpc.env && for v in ip mask router dns mtu search; do eval echo "$v=\\$$v"; done'
        ).splitlines()
    )
    assert lease == {
        "ip": lease["ip"],
        "mask": "24",
        "router": "10.0.0.1",
        "dns": "10.0.0.1 10.0.0.3",
        "mtu": "1400",
        "search": "one.test two.test",
    }
    assert lease["ip"].startswith("10.0.0.1")
    assert f"inet {lease['ip']}/24" in g2.check("ip addr show eth0")
    assert "mtu 1400" in g2.check("ip link show eth0")
    assert "default via 10.0.0.1" in g2.check("ip route")
    assert "search one.test two.test" in g2.check("cat /etc/resolv.conf")


def test_run_reports_exit_status_and_output(make_guest: MakeGuest) -> None:
    g = make_guest("solo", ["socket", f"listen=127.0.0.1:{_free_port()}"])
    assert g.run("true") == (0, "")
    assert g.run("exit 3") == (3, "")
    assert g.run("false") == (1, "")
    status, output = g.run("echo out; echo err >&2; ls /nonexistent")
    assert status != 0
    assert output.splitlines()[:2] == ["out", "err"]
    # Quotes, a multi-line script and a syntax error do not desynchronise the console.
    assert g.run("printf '%s|' \"a b\" 'c\"d'; echo\nfor i in 1 2; do echo $i; done") == (
        0,
        'a b|c"d|\n1\n2\n',
    )
    assert g.run("if then fi")[0] != 0
    assert g.run("echo " + "x" * 5000)[1] == "x" * 5000 + "\n"  # longer than a tty line
    with pytest.raises(GuestError, match="exit status 7"):
        g.check("echo boom; exit 7")
    assert g.check("echo still alive") == "still alive\n"
    # A command that outlives its timeout is interrupted and the console stays usable.
    with pytest.raises(GuestTimeout, match="timed out after 2 s"):
        g.run("echo started; sleep 60", timeout=2)
    assert g.run("echo recovered") == (0, "recovered\n")
    # A guest that dies is reported as such, not as a timeout.
    with pytest.raises(GuestError, match="QEMU exited"):
        g.run("poweroff -f", timeout=30)


def test_qemu_startup_failure_is_reported(make_guest: MakeGuest) -> None:
    g = make_guest("broken", ["socket", "listen=999.0.0.1:1"])
    with pytest.raises(GuestError, match=r"(?s)QEMU exited.*not a valid IPv4 address"):
        g.wait_ready(timeout=30)

"""``vmlan ns`` piece by piece: options and addresses, resolv.conf, the id maps, exit statuses, the
messages between vmlan and its child, the SYN checksum filter, and the namespace side (unshare, the
TAP, rtnetlink, the bind mount, joining another process's namespace) run in namespaces of the test's.

The whole command, with real peers and as an unprivileged user, is tests/interop/test_ns.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from netns import wait_for
from vmlan.cli import main as cli_main
from vmlan.config.errors import ConfigError
from vmlan.ns import setup
from vmlan.ns.config import eui64_address, host_search_list, parse_ns_args, resolv_conf_text

SRC = str(Path(setup.__file__).resolve().parents[2])


# -- options and addresses --------------------------------------------------------------------------------
def test_defaults_are_slirp4netns_addresses_on_qemus_network() -> None:
    cfg = parse_ns_args(["--", "sh", "-c", "exit 0"])
    assert cfg.command == ("sh", "-c", "exit 0") and cfg.attach == ()
    assert (str(cfg.address), cfg.prefixlen, str(cfg.gateway), str(cfg.dns), cfg.mtu) == (
        "10.0.2.100", 24, "10.0.2.2", "10.0.2.3", 1500)
    assert cfg.user.id == "user0" and cfg.tap_id == "ns0" and (cfg.verbose, cfg.quiet) == (0, False)
    (ns,) = cfg.namespaces
    assert (ns.index, ns.mac_text, ns.attach, str(ns.slaac)) == (
        0, "52:54:00:12:34:56", None, "fec0::5054:ff:fe12:3456")
    assert cfg.ipv4 and cfg.ipv6


def test_each_namespace_gets_its_port_mac_and_addresses_cmds_first() -> None:
    cfg = parse_ns_args(["--attach", "41", "--attach=42", "--", "true"])
    assert cfg.attach == (41, 42) and cfg.command == ("true",)
    assert [(n.index, n.attach, str(n.address), n.mac_text, n.tap_id, str(n.slaac)) for n in cfg.namespaces] == [
        (0, None, "10.0.2.100", "52:54:00:12:34:56", "ns0", "fec0::5054:ff:fe12:3456"),
        (1, 41, "10.0.2.101", "52:54:00:12:34:57", "ns1", "fec0::5054:ff:fe12:3457"),
        (2, 42, "10.0.2.102", "52:54:00:12:34:58", "ns2", "fec0::5054:ff:fe12:3458")]
    only = parse_ns_args(["--attach", "41", "--attach", "42", "-netdev", "user,ipv6-net=fd00:1::/64,ipv6=on"])
    assert only.command == () and [str(n.slaac) for n in only.namespaces] == [
        "fd00:1::5054:ff:fe12:3456", "fd00:1::5054:ff:fe12:3457"]
    # the stack's own addresses are skipped, a network too small continues from dhcpstart
    clash = parse_ns_args(["--attach", "7", "-netdev", "user,dns=10.0.2.101", "true"])
    assert [str(n.address) for n in clash.namespaces] == ["10.0.2.100", "10.0.2.102"]
    small = parse_ns_args(["--attach", "7", "-netdev", "user,net=192.168.7.0/27", "true"])
    assert [str(n.address) for n in small.namespaces] == ["192.168.7.15", "192.168.7.16"]
    assert parse_ns_args(["-netdev", "user,ipv6=off", "true"]).namespaces[0].slaac is None


def test_the_eui64_address_is_the_kernels_slaac_address() -> None:
    assert str(eui64_address(IPv6Address("fec0::"), bytes.fromhex("1e027cd96051"))) == "fec0::1c02:7cff:fed9:6051"


def test_the_command_starts_at_the_first_argument_that_is_not_an_option() -> None:
    cfg = parse_ns_args(["-v", "-v", "iperf3", "-c", "10.0.2.2", "--", "x"])
    assert cfg.command == ("iperf3", "-c", "10.0.2.2", "--", "x") and cfg.verbose == 2
    assert parse_ns_args(["--", "-weird-name"]).command == ("-weird-name",)
    assert parse_ns_args(["-q", "--attach=42"]).attach == (42,) and parse_ns_args(["-q", "--attach", "42"]).quiet


def test_mtu_goes_to_the_stack_and_must_agree_with_the_netdevs() -> None:
    assert parse_ns_args(["--mtu", "65520", "true"]).user.mtu == 65520
    assert parse_ns_args(["--mtu=9000", "-netdev", "user,mtu=9000", "true"]).mtu == 9000
    assert parse_ns_args(["-netdev", "user,mtu=4000", "true"]).mtu == 4000
    with pytest.raises(ConfigError, match=r"^--mtu 9000: the -netdev user says mtu=4000$"):
        parse_ns_args(["--mtu", "9000", "-netdev", "user,mtu=4000", "true"])


def test_other_networks_move_every_address_and_a_small_one_falls_back_to_dhcpstart() -> None:
    cfg = parse_ns_args(["-netdev", "user,id=n,net=10.9.0.0/16,host=10.9.0.1,dns=10.9.0.53", "true"])
    assert (str(cfg.address), cfg.prefixlen, str(cfg.gateway), str(cfg.dns), cfg.user.id) == (
        "10.9.0.100", 16, "10.9.0.1", "10.9.0.53", "n")
    small = parse_ns_args(["-netdev", "user,net=192.168.7.0/27", "true"])  # .100 is outside a /27
    assert str(small.address) == str(small.user.dhcp_start) == "192.168.7.15"
    clash = parse_ns_args(["-netdev", "user,net=10.1.0.0/24,dns=10.1.0.100", "true"])
    assert str(clash.address) == "10.1.0.15"


def test_hostfwd_without_a_guest_address_targets_the_namespace() -> None:
    cfg = parse_ns_args(["-netdev", "user,hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:5353-10.0.2.7:53", "true"])
    assert [(f.proto, f.host_addr, f.host_port, f.guest_addr, f.guest_port) for f in cfg.user.hostfwd] == [
        ("tcp", "", 8080, "10.0.2.100", 80), ("udp", "127.0.0.1", 5353, "10.0.2.7", 53)]
    assert cfg.user.hostfwd_guest(cfg.user.hostfwd[0]) == IPv4Address("10.0.2.100")


def test_the_only_guest_gets_the_stack_wide_caps_unless_told_otherwise() -> None:
    limits = parse_ns_args(["true"]).user.limits
    assert (limits.tcp_per_guest, limits.udp_per_guest, limits.tcp_connecting_per_guest) == (
        limits.max_flows, limits.max_flows, limits.max_connecting) == (8192, 8192, 512)
    told = parse_ns_args(["-netdev", "user,guest-tcp=10,max-flows=100", "true"]).user.limits
    assert (told.tcp_per_guest, told.udp_per_guest, told.tcp_connecting_per_guest, told.max_flows) == (10, 100, 64, 100)


def test_a_user_netdev_named_like_the_tap_leaves_the_tap_another_id() -> None:
    assert parse_ns_args(["-netdev", "user,id=ns0", "true"]).tap_id == "ns0a"


@pytest.mark.parametrize(("args", "message"), [
    ([], "vmlan: ns: a command (after --) or --attach PID is required\n"),
    (["-v"], "vmlan: ns: a command (after --) or --attach PID is required\n"),
    (["--attach", "7", "--attach", "7", "true"], "vmlan: --attach 7: given twice\n"),
    (["-netdev", "user,ipv6-prefixlen=80", "true"],
     "vmlan: -netdev user,ipv6-prefixlen=80: vmlan ns configures IPv6 by SLAAC, which needs a /64 prefix "
     "(got fec0::/80; or ipv6=off)\n"),
    (["-netdev", "user,net=10.0.2.0/29,dhcpstart=10.0.2.6", "--attach", "7", "true"],
     "vmlan: ns: net=10.0.2.0/29 has no room for 2 namespaces\n"),
    (["--attach", "x"], "vmlan: Parameter '--attach' expects a number (got 'x')\n"),
    (["--attach", "0"], "vmlan: Parameter '--attach' expects a value in 1..4194304 (got '0')\n"),
    (["--mtu", "100", "true"], "vmlan: --mtu 100: Parameter 'mtu' expects a value in 576..65520 (got '100')\n"),
    (["--mtu"], "vmlan: --mtu: requires an argument\n"),
    (["--frob", "true"], "vmlan: ns: unrecognized option '--frob'\n"),
    (["-netdev", "stream,id=s,server=on", "true"],
     "vmlan: -netdev stream,id=s,server=on: vmlan ns takes only -netdev user (got type 'stream')\n"),
    (["-netdev", "user,net=10.0.2.0/33", "true"],
     "vmlan: -netdev user,net=10.0.2.0/33: Invalid netmask provided (must be in range 4-32) (net=10.0.2.0/33)\n"),
    (["-netdev", "user", "-netdev", "user", "true"], "vmlan: -netdev: vmlan ns takes one -netdev user\n"),
])
def test_bad_command_lines_exit_2_with_one_line(args: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["ns", *args]) == 2
    assert capsys.readouterr().err == message


def test_help_names_both_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["ns", "--help"]) == 0
    out = capsys.readouterr().out
    assert "vmlan ns [--mtu N] [-netdev user,...] [-v|-q] [--attach PID]... [--] CMD ARGS..." in out
    assert "vmlan ns [--mtu N] [-netdev user,...] [-v|-q] --attach PID [--attach PID]..." in out


# -- resolv.conf, id maps, statuses ----------------------------------------------------------------------
def test_resolv_conf_names_the_stacks_dns_and_a_search_list() -> None:
    host = "nameserver 192.0.2.53\nsearch corp.example lab.example\noptions edns0\n"
    assert resolv_conf_text(parse_ns_args(["true"]), host) == (
        "# vmlan ns: the user-mode stack's DNS forwarder\nnameserver 10.0.2.3\nnameserver fec0::3\n"
        "search corp.example lab.example\n")
    own = parse_ns_args(["-netdev", "user,dns=10.0.2.53,ipv6-dns=fec0::53,dnssearch=a.example,dnssearch=b.example",
                         "true"])
    assert resolv_conf_text(own, host).splitlines()[1:] == ["nameserver 10.0.2.53", "nameserver fec0::53",
                                                            "search a.example b.example"]
    assert resolv_conf_text(parse_ns_args(["-netdev", "user,domainname=d.example", "true"]), host).endswith(
        "search d.example\n")
    assert resolv_conf_text(parse_ns_args(["-netdev", "user,ipv6=off", "true"]), "") == (
        "# vmlan ns: the user-mode stack's DNS forwarder\nnameserver 10.0.2.3\n")
    assert resolv_conf_text(parse_ns_args(["-netdev", "user,ipv4=off", "true"]), "") == (
        "# vmlan ns: the user-mode stack's DNS forwarder\nnameserver fec0::3\n")


def test_the_last_search_or_domain_line_of_a_resolv_conf_wins() -> None:
    assert host_search_list("search a b\ndomain c\n") == ["c"]
    assert host_search_list("domain c\nsearch a b\n# search x\n") == ["a", "b"]
    assert host_search_list("nameserver 1.1.1.1\n") == []


def test_id_maps_are_written_as_unshare_r_writes_them() -> None:
    assert setup.id_map_writes(65534, 65533) == [
        ("setgroups", "deny"), ("uid_map", "0 65534 1\n"), ("gid_map", "0 65533 1\n")]


@pytest.mark.parametrize(("script", "expected"), [
    ("import os; os._exit(0)", 0),
    ("import os; os._exit(3)", 3),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + signal.SIGTERM),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),
])
def test_exit_status_is_what_a_shell_reports(script: str, expected: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", script])
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = 0  # reaped here
    assert setup.exit_status(status) == expected


# -- IPv6: what SLAAC needs, and when the namespace is ready -----------------------------------------------
def _addr(addr: str, flags: int, index: int = 2, prefixlen: int = 64) -> dict[str, object]:
    return {"index": index, "prefixlen": prefixlen, "flags": flags & 0xFF, "IFA_FLAGS": flags, "IFA_ADDRESS": addr}


DEFAULT6 = {"dst_len": 0, "RTA_OIF": 2, "RTA_GATEWAY": "fe80::2"}
PREFIX = IPv6Network("fec0::/64")


@pytest.mark.parametrize(("addrs", "routes", "expected"), [
    ([_addr("fec0::1", 0x200)], [DEFAULT6], "fec0::1"),  # IFA_F_MANAGETEMPADDR only: DAD done
    ([_addr("fec0::1", 0x04 | 0x40)], [DEFAULT6], "fec0::1"),  # optimistic (and so tentative): usable
    ([_addr("fec0::1", 0x40)], [DEFAULT6], None),  # tentative
    ([_addr("fec0::1", 0x08)], [DEFAULT6], None),  # DAD failed
    ([_addr("fec0::1", 0)], [], None),  # no default route yet
    ([_addr("fec0::1", 0)], [{"dst_len": 0, "RTA_OIF": 3, "RTA_GATEWAY": "fe80::2"}], None),  # another interface's
    ([_addr("fe80::1", 0), _addr("fd00::1", 0)], [DEFAULT6], None),  # link-local, another prefix
    ([_addr("fec0::1", 0, index=3)], [DEFAULT6], None),
    ([_addr("fe80::1", 0), _addr("fec0::7", 0x80)], [{"dst_len": 64, "RTA_OIF": 2}, DEFAULT6], "fec0::7"),
])
def test_the_namespace_is_ready_with_a_usable_slaac_address_and_a_default_route(
        addrs: list[dict[str, object]], routes: list[dict[str, object]], expected: str | None) -> None:
    found = setup.usable_ipv6(addrs, routes, 2, PREFIX)
    assert (str(found) if found is not None else None) == expected


def test_ipv6_settings_are_written_and_a_refusal_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "tap0").mkdir()
    for name, _ in setup.IPV6_SYSCTLS:
        (tmp_path / "tap0" / name).write_text("9\n")
    assert setup.set_ipv6_sysctls("tap0", str(tmp_path)) == []
    assert {name: (tmp_path / "tap0" / name).read_text() for name, _ in setup.IPV6_SYSCTLS} == {
        "disable_ipv6": "0", "accept_ra": "1", "autoconf": "1", "addr_gen_mode": "0", "accept_dad": "0"}
    assert setup.set_ipv6_sysctls("tap1", str(tmp_path)) == [
        "cannot set net.ipv6.conf.tap1.disable_ipv6=0: No such file or directory"]


# -- messages --------------------------------------------------------------------------------------------
@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def test_the_tap_message_carries_a_working_descriptor(pair: tuple[socket.socket, socket.socket]) -> None:
    child, parent = pair
    r, w = os.pipe()
    setup.send_message(child, setup.MSG_TAP, "tap0", w)
    os.close(w)
    kind, text, fd = setup.recv_message(parent)
    assert (kind, text) == (setup.MSG_TAP, "tap0") and fd is not None
    os.write(fd, b"through")
    os.close(fd)
    assert os.read(r, 16) == b"through"
    os.close(r)


def test_warnings_errors_and_eof_come_as_such(pair: tuple[socket.socket, socket.socket]) -> None:
    child, parent = pair
    setup.send_message(child, setup.MSG_WARNING, "no resolv.conf")
    setup.send_message(child, setup.MSG_ERROR, "unshare: Operation not permitted")
    setup.send_message(child, setup.MSG_TAP, "tap0")  # the descriptor missing
    r, w = os.pipe()
    setup.send_message(child, setup.MSG_ERROR, "stray fd", r)  # a descriptor where none belongs: closed
    child.close()
    assert setup.recv_message(parent) == (setup.MSG_WARNING, "no resolv.conf", None)
    assert setup.recv_message(parent) == (setup.MSG_ERROR, "unshare: Operation not permitted", None)
    assert setup.recv_message(parent) == (setup.MSG_ERROR, "the TAP descriptor did not arrive", None)
    assert setup.recv_message(parent) == (setup.MSG_ERROR, "stray fd", None)
    assert setup.recv_message(parent) == (b"", "", None)
    os.close(r)
    os.close(w)
    parent.setblocking(False)


def test_recv_message_raises_blocking_io_when_nothing_is_there(pair: tuple[socket.socket, socket.socket]) -> None:
    pair[1].setblocking(False)
    with pytest.raises(BlockingIOError):
        setup.recv_message(pair[1])


# -- the namespace side, for real (root: each script runs in namespaces it creates) ----------------------
def _run(script: str, *args: str) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests create namespaces as root (CI runs them as root); the unprivileged "
                    "paths are in tests/interop/test_ns.py", pytrace=False)


def test_child_side_builds_tap0_its_addresses_and_a_private_resolv_conf() -> None:
    _require_root()
    with open("/etc/resolv.conf", "rb") as fh:
        host_before = fh.read()
    result = _run("""
        import json, os
        from ipaddress import IPv4Address, IPv6Address, IPv6Network
        from pyroute2 import IPRoute
        from vmlan.ns import setup
        host_net = os.stat("/proc/self/ns/net").st_ino
        setup.enter_new_namespaces(0, 0)
        fd, offloads = setup.open_ns_tap("tap0")
        assert setup.configure_interfaces("tap0", IPv4Address("10.0.2.100"), 24, IPv4Address("10.0.2.2"),
                                          65520) == []
        setup.bind_resolv_conf("nameserver 10.0.2.3\\n")
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname="tap0")[0]
            link = ipr.get_links(idx)[0]
            lo = ipr.get_links(ipr.link_lookup(ifname="lo")[0])[0]
            addrs = [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=2)]
            routes = [(r.get("RTA_GATEWAY"), r["dst_len"]) for r in ipr.get_routes(family=2) if r.get("RTA_GATEWAY")]
        print(json.dumps({"offloads": offloads, "mtu": link.get("IFLA_MTU"), "up": bool(link["flags"] & 1),
                          "lo_up": bool(lo["flags"] & 1), "addrs": addrs, "routes": routes,
                          "resolv": open("/etc/resolv.conf").read(), "tmp_is_ours": os.path.ismount("/tmp"),
                          "new_net": os.stat("/proc/self/ns/net").st_ino != host_net}))
        """)
    assert result == {"offloads": setup.OFFLOADS, "mtu": 65520, "up": True, "lo_up": True,
                      "addrs": [["10.0.2.100", 24]], "routes": [["10.0.2.2", 0]],
                      "resolv": "nameserver 10.0.2.3\n", "tmp_is_ours": os.path.ismount("/tmp"), "new_net": True}
    with open("/etc/resolv.conf", "rb") as fh:
        assert fh.read() == host_before


def test_child_side_with_ipv6_sets_the_mac_and_what_slaac_needs_and_waits_for_the_address() -> None:
    """No stack here: the wait gives up after its timeout; an address and a default route added while it
    waits (what an RA would bring) end it at once, woken by rtnetlink."""
    _require_root()
    result = _run("""
        import json, subprocess, threading, time
        from ipaddress import IPv4Address, IPv6Network
        from vmlan.ns import setup
        setup.enter_new_namespaces(0, 0)
        fd, offloads = setup.open_ns_tap("tap0")
        warnings = setup.configure_interfaces("tap0", None, 24, IPv4Address("10.0.2.2"), 1500,
                                              bytes.fromhex("525400123457"), True)
        conf = {n: open(f"/proc/sys/net/ipv6/conf/tap0/{n}").read().strip() for n, _ in setup.IPV6_SYSCTLS}
        link = subprocess.run(["ip", "-o", "link", "show", "tap0"], capture_output=True, text=True).stdout
        v4 = subprocess.run(["ip", "-4", "-o", "addr", "show", "tap0"], capture_output=True, text=True).stdout
        t0 = time.monotonic()
        none = setup.wait_for_ipv6("tap0", IPv6Network("fec0::/64"), timeout=0.3)
        waited = time.monotonic() - t0
        def later():
            time.sleep(0.3)
            subprocess.run(["ip", "-6", "addr", "add", "fec0::9/64", "dev", "tap0", "nodad"], check=True)
            subprocess.run(["ip", "-6", "route", "add", "default", "via", "fe80::2", "dev", "tap0"], check=True)
        threading.Thread(target=later).start()
        t0 = time.monotonic()
        found = setup.wait_for_ipv6("tap0", IPv6Network("fec0::/64"), timeout=30)
        print(json.dumps({"warnings": warnings, "conf": conf, "mac": "52:54:00:12:34:57" in link, "v4": v4,
                          "none": none, "waited": waited, "found": str(found), "took": time.monotonic() - t0}))
        """)
    assert result["warnings"] == [] and result["mac"] and result["v4"] == "" and result["none"] is None
    assert result["conf"] == dict(setup.IPV6_SYSCTLS)
    assert 0.3 <= float(str(result["waited"])) < 5
    assert result["found"] == "fec0::9" and float(str(result["took"])) < 10


def test_a_missing_resolv_conf_is_a_setup_error_not_a_file_created() -> None:
    _require_root()
    result = _run("""
        import json, os
        from vmlan.ns import setup
        setup.enter_new_namespaces(0, 0)
        try:
            setup.bind_resolv_conf("nameserver 10.0.2.3\\n", target="/nonexistent-vmlan/resolv.conf")
        except setup.SetupError as exc:
            print(json.dumps({"error": str(exc), "exists": os.path.exists("/nonexistent-vmlan")}))
        """)
    assert result == {"error": "cannot bind-mount over /nonexistent-vmlan/resolv.conf: No such file or directory",
                      "exists": False}


def test_the_helper_side_joins_another_processs_namespace() -> None:
    _require_root()
    target = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
    try:
        ours = os.stat("/proc/self/ns/net").st_ino
        wait_for(lambda: os.stat(f"/proc/{target.pid}/ns/net").st_ino != ours, what="unshare -n")
        result = _run("""
            import json, os, socket, sys
            from vmlan.ns import setup
            pid = int(sys.argv[1])
            setup.join_namespaces_of(pid, os.pidfd_open(pid))
            fd, offloads = setup.open_ns_tap("tap0")
            print(json.dumps({"net": os.stat("/proc/self/ns/net").st_ino, "tap": socket.if_nametoindex("tap0") > 0}))
            """, str(target.pid))
        assert result == {"net": os.stat(f"/proc/{target.pid}/ns/net").st_ino, "tap": True}
    finally:
        target.kill()
        target.wait()


def test_joining_a_process_that_is_gone_says_so() -> None:
    _require_root()
    proc = subprocess.Popen(["sleep", "infinity"])
    pidfd = os.pidfd_open(proc.pid)
    proc.kill()
    proc.wait()
    with pytest.raises(setup.SetupError, match=rf"^cannot open the network namespace of process {proc.pid}: "
                                                "No such file or directory$"):
        setup.join_namespaces_of(proc.pid, pidfd)
    os.close(pidfd)

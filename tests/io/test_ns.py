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
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netns import wait_for
from vmlan.cli import main as cli_main
from vmlan.config.errors import ConfigError
from vmlan.ns import setup
from vmlan.ns.config import host_search_list, parse_ns_args, resolv_conf_text

SRC = str(Path(setup.__file__).resolve().parents[2])


# -- options and addresses --------------------------------------------------------------------------------
def test_defaults_are_slirp4netns_addresses_on_qemus_network() -> None:
    cfg = parse_ns_args(["--", "sh", "-c", "exit 0"])
    assert cfg.command == ("sh", "-c", "exit 0") and cfg.attach is None
    assert (str(cfg.address), cfg.prefixlen, str(cfg.gateway), str(cfg.dns), cfg.mtu) == (
        "10.0.2.100", 24, "10.0.2.2", "10.0.2.3", 1500)
    assert cfg.user.id == "user0" and cfg.tap_id == "ns0" and (cfg.verbose, cfg.quiet) == (0, False)


def test_the_command_starts_at_the_first_argument_that_is_not_an_option() -> None:
    cfg = parse_ns_args(["-v", "-v", "iperf3", "-c", "10.0.2.2", "--", "x"])
    assert cfg.command == ("iperf3", "-c", "10.0.2.2", "--", "x") and cfg.verbose == 2
    assert parse_ns_args(["--", "-weird-name"]).command == ("-weird-name",)
    assert parse_ns_args(["-q", "--attach=42"]).attach == 42 and parse_ns_args(["-q", "--attach", "42"]).quiet


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
    (["--attach", "7", "true"], "vmlan: ns: --attach PID and a command exclude each other\n"),
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
    assert "vmlan ns [--mtu N] [-netdev user,...] [-v|-q] [--] CMD ARGS..." in out and "--attach PID" in out


# -- resolv.conf, id maps, statuses ----------------------------------------------------------------------
def test_resolv_conf_names_the_stacks_dns_and_a_search_list() -> None:
    host = "nameserver 192.0.2.53\nsearch corp.example lab.example\noptions edns0\n"
    assert resolv_conf_text(parse_ns_args(["true"]), host) == (
        "# vmlan ns: the user-mode stack's DNS forwarder\nnameserver 10.0.2.3\nsearch corp.example lab.example\n")
    own = parse_ns_args(["-netdev", "user,dns=10.0.2.53,dnssearch=a.example,dnssearch=b.example", "true"])
    assert resolv_conf_text(own, host).splitlines()[1:] == ["nameserver 10.0.2.53", "search a.example b.example"]
    assert resolv_conf_text(parse_ns_args(["-netdev", "user,domainname=d.example", "true"]), host).endswith(
        "search d.example\n")
    assert resolv_conf_text(parse_ns_args(["true"]), "") == (
        "# vmlan ns: the user-mode stack's DNS forwarder\nnameserver 10.0.2.3\n")


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
        from ipaddress import IPv4Address
        from pyroute2 import IPRoute
        from vmlan.ns import setup
        host_net = os.stat("/proc/self/ns/net").st_ino
        setup.enter_new_namespaces(0, 0)
        fd, offloads = setup.open_ns_tap("tap0")
        setup.configure_interfaces("tap0", IPv4Address("10.0.2.100"), 24, IPv4Address("10.0.2.2"), 65520)
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

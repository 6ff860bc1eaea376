"""TAP and bridge links: options, the ACL file, scripts, and real TAPs in network namespaces.

The hub runs on an event loop thread that joined a namespace of the test's own (tests/netns.py), so
the TAPs it opens, the bridges it joins and the scripts it runs all live there; the other ends are
more namespaces joined by the TAPs themselves (an up script moves each TAP into its namespace and
gives it an address) or by veth pairs on a Linux bridge. Everything is deleted at the end.
QEMU guests on these links are in tests/interop/test_tap.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blob import expected_sha256
from netns import HubThread, Namespaces, Recorder, sh, tag, wait_for
from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.tap import (
    DEFAULT_DOWNSCRIPT,
    DEFAULT_SCRIPT,
    BridgeNetdev,
    TapNetdev,
    parse_bridge_netdev,
    parse_tap_netdev,
)
from vmlan.io.bridge import AclError, BridgeLink, acl_allows, read_acl
from vmlan.io.errors import LinkError
from vmlan.io.tap import IFF_VNET_HDR, OFFLOADS, TapLink, TapPort, open_tap

BLOB = str(Path(__file__).resolve().parents[1] / "blob.py")


def tap(text: str) -> TapNetdev:
    return parse_tap_netdev(parse_qemuopts(text))


def bridge(text: str) -> BridgeNetdev:
    return parse_bridge_netdev(parse_qemuopts(text))


# -- options ---------------------------------------------------------------------------------------------
def test_tap_options_and_defaults() -> None:
    assert tap("tap,id=t0") == TapNetdev("t0", 0, "", DEFAULT_SCRIPT, False, DEFAULT_DOWNSCRIPT, False, None, None)
    cfg = tap("tap,id=t1,ifname=vm%d,script=/s/up,downscript=no,vnet_hdr=off,hubid=3")
    assert (cfg.ifname, cfg.script, cfg.script_required, cfg.downscript, cfg.vnet_hdr, cfg.hubid) == (
        "vm%d", "/s/up", True, "", False, 3)
    assert tap("tap,id=t2,script=,vnet_hdr=on").script == "" and tap("tap,id=t2,vnet_hdr=on").vnet_hdr is True
    assert tap("tap,id=t3,fd=7") == TapNetdev("t3", 0, "", "", False, "", False, 7, None)
    assert tap("tap,id=t3,fd=7").info == "fd=7"
    assert tap("tap,id=t4,script=no").info == "ifname=tap%d,script=no,downscript=/etc/vmlan-ifdown"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tap,id=t,fd=3,ifname=x", "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and "
         "vhostfds= are invalid with fd="),
        ("tap,id=t,fd=3,vnet_hdr=on", "are invalid with fd="),
        ("tap,id=t,fd=3,script=no", "are invalid with fd="),
        ("tap,id=t,fd=x", "Parameter 'fd' expects a file descriptor number (got 'x')"),
        ("tap,id=t,ifname=waytoolongname16", "Parameter 'ifname' expects a network interface name"),
        ("tap,id=t,ifname=a/b", "Parameter 'ifname' expects a network interface name"),
        ("tap,id=t,ifname=a%s", "may hold one '%d' template"),
        ("tap,id=t,vnet_hdr=maybe", "Parameter 'vnet_hdr' expects 'on' or 'off' (got 'maybe')"),
        ("tap,id=t,vhost=on", "Parameter 'vhost' of netdev type 'tap' is not supported by vmlan (got 'on')"),
        ("tap,id=t,queues=4", "Parameter 'queues' of netdev type 'tap' is not supported by vmlan"),
        ("tap,id=t,helper=/x", "Parameter 'helper' of netdev type 'tap' is not supported by vmlan"),
        ("tap,id=t,bogus=1", "Invalid parameter 'bogus' for netdev type 'tap'"),
        ("tap,ifname=x", "Parameter 'id' is missing"),
        ("tap,id=t,ifname=a,ifname=b", "Parameter 'ifname' given more than once"),
        ("bridge,id=b,br=", "Parameter 'br' expects a network interface name"),
        ("bridge,id=b,helper=", "Parameter 'helper' must name a program"),
        ("bridge,id=b,ifname=x", "Invalid parameter 'ifname' for netdev type 'bridge'"),
        ("bridge,id=b,vhost=on", "Parameter 'vhost' of netdev type 'bridge' is not supported by vmlan"),
    ],
)
def test_bad_options_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        (bridge if text.startswith("bridge") else tap)(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bridge_options() -> None:
    assert bridge("bridge,id=b0") == BridgeNetdev("b0", 0, "br0", "")
    cfg = bridge("bridge,id=b1,br=lab0,helper=/usr/lib/qemu/qemu-bridge-helper,hubid=2")
    assert (cfg.br, cfg.helper, cfg.hubid) == ("lab0", "/usr/lib/qemu/qemu-bridge-helper", 2)
    assert cfg.info == "helper=/usr/lib/qemu/qemu-bridge-helper,br=lab0"


# -- the ACL file ----------------------------------------------------------------------------------------
def acl(tmp_path: Path, text: str, name: str = "bridge.conf") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_acl_allow_deny_include_and_comments(tmp_path: Path) -> None:
    acl(tmp_path, "allow lab1\n", "more.conf")
    path = acl(tmp_path, """\
        # a comment
          # an indented comment

        allow br0
        allow\tbr2   \t
        deny br2
        include more.conf
        include /nonexistent/skipped.conf
        allow br3 # not a comment: this names "br3 # not a comment..."
        """)
    rules = read_acl(path)
    assert [(r.allow, r.bridge) for r in rules][:4] == [(True, "br0"), (True, "br2"), (False, "br2"), (True, "lab1")]
    assert acl_allows(rules, "br0") and acl_allows(rules, "lab1")
    assert not acl_allows(rules, "br2")  # a matching deny wins over an allow
    assert not acl_allows(rules, "br3") and not acl_allows(rules, "other")  # denied unless allowed
    everything = read_acl(acl(tmp_path, "allow all\ndeny br9\n", "all.conf"))
    assert acl_allows(everything, "anything") and not acl_allows(everything, "br9")
    assert not acl_allows(read_acl(acl(tmp_path, "allow all\ndeny all\n", "none.conf")), "br0")
    assert not acl_allows([], "br0")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow\n", "bridge.conf:1: Invalid config line: allow"),
        ("allow br0\npermit br1\n", "bridge.conf:2: Unknown command `permit'"),
        ("include bridge.conf\n", "include nesting deeper than 8 (or an include loop)"),
    ],
)
def test_acl_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AclError) as info:
        read_acl(acl(tmp_path, text))
    assert message in str(info.value)


# -- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    yield ns
    ns.close()


@pytest.fixture
def hub_in(namespaces: Namespaces) -> Iterator[Callable[[str], HubThread]]:
    started: list[HubThread] = []

    def make(netns: str) -> HubThread:
        h = HubThread(netns)
        started.append(h)
        return h

    yield make
    for h in reversed(started):
        h.close()


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def ifup(tmp_path: Path, name: str, netns: str, addr: str, log: Path) -> str:
    """An up script that moves the TAP into ``netns`` and gives that side ``addr``."""
    return script(tmp_path / f"{name}-ifup", f"""\
        echo "up $# $1" >> {log}
        ip link set "$1" netns {netns} || exit 3
        ip -n {netns} addr add {addr}/24 dev "$1" || exit 4
        ip -n {netns} link set "$1" up || exit 5
        """)


def ifdown(tmp_path: Path, name: str, netns: str, log: Path) -> str:
    """A down script that records whether the TAP still exists when it runs."""
    return script(tmp_path / f"{name}-ifdown", f"""\
        if ip -n {netns} link show "$1" >/dev/null 2>&1; then echo "down $1 present" >> {log}
        else echo "down $1 absent" >> {log}; fi
        """)


def in_ns(netns: str, *argv: str, timeout: float = 120) -> str:
    proc = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} in {netns}: {proc.stderr or proc.stdout}"
    return proc.stdout


def ping(netns: str, host: str, count: int = 3) -> None:
    assert in_ns(netns, sys.executable, BLOB, "ping", host, str(count)).strip() == f"{count} packets received"


def serve_blob(netns: str, port: int, size: int, seed: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, BLOB, "serve", str(port), str(size),
                             str(seed)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def link_exists(netns: str, ifname: str) -> bool:
    return subprocess.run(["ip", "-n", netns, "link", "show", ifname], capture_output=True).returncode == 0


# -- scripts ---------------------------------------------------------------------------------------------
def test_failing_up_script_is_one_line_and_the_tap_is_gone(tmp_path, namespaces, hub_in):
    hns = namespaces.add("h")
    h = hub_in(hns)
    bad = script(tmp_path / "vmlan-ifup", "exit 1\n")
    link = TapLink(tap(f"tap,id=t0,ifname=vt{tag()},script={bad},downscript=no"), h.hub, h.loop)
    with pytest.raises(LinkError) as info:
        h.call(link.start)
    assert str(info.value) == f"-netdev tap,id=t0: network script {bad} failed with status 1"
    assert not link_exists(hns, link.cfg.ifname) and link.port is None
    killed = script(tmp_path / "killed", "kill -9 $$\n")
    with pytest.raises(LinkError, match=f"network script {killed} was killed by signal 9$"):
        h.call(TapLink(tap(f"tap,id=t1,script={killed},downscript=no"), h.hub, h.loop).start)
    missing = tmp_path / "missing-ifup"
    with pytest.raises(LinkError, match=f"could not launch network script {missing}: No such file or directory$"):
        h.call(TapLink(tap(f"tap,id=t2,script={missing},downscript=no"), h.hub, h.loop).start)
    noexec = tmp_path / "noexec"
    noexec.write_text("#!/bin/sh\n")
    with pytest.raises(LinkError, match=r"could not launch network script .*: Permission denied$"):
        h.call(TapLink(tap(f"tap,id=t3,script={noexec},downscript=no"), h.hub, h.loop).start)


def test_script_gets_the_name_and_only_the_tap_descriptor(tmp_path, namespaces, hub_in):
    h = hub_in(namespaces.add("h"))
    report = tmp_path / "fds"
    up = tmp_path / "ifup.py"
    up.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""\
        import os, sys
        links = {{}}
        for fd in sorted(int(fd) for fd in os.listdir("/proc/self/fd")):
            if fd > 2 and os.path.lexists(f"/proc/self/fd/{{fd}}"):
                links[fd] = os.readlink(f"/proc/self/fd/{{fd}}")
        with open({str(report)!r}, "w") as out:
            out.write(repr((sys.argv[1:], links)))
        """))
    up.chmod(0o755)
    keep_open = os.open("/dev/null", os.O_RDONLY)  # inheritable, like a careless caller's descriptor
    os.set_inheritable(keep_open, True)
    try:
        link = h.start(TapLink(tap(f"tap,id=t0,script={up},downscript=no"), h.hub, h.loop))
    finally:
        os.close(keep_open)
    args, links = eval(report.read_text())
    assert args == [link.port.ifname] and link.port.ifname.startswith("tap")
    tun = [fd for fd, target in links.items() if target == "/dev/net/tun"]
    assert tun == [link.port.fd]
    # Besides the TAP, only what listdir itself held open a moment: no other inherited descriptor.
    assert all(target == "/dev/net/tun" or target.startswith("/proc/") for target in links.values()), links


def test_default_scripts_run_only_if_they_exist(namespaces, hub_in):
    assert not os.path.exists(DEFAULT_SCRIPT) and not os.path.exists(DEFAULT_DOWNSCRIPT)
    hns = namespaces.add("h")
    h = hub_in(hns)
    link = h.start(TapLink(tap("tap,id=t0"), h.hub, h.loop))
    assert link_exists(hns, link.port.ifname)
    assert link.describe().startswith(f"ifname={link.port.ifname},script=/etc/vmlan-ifup,downscript=/etc/vmlan-ifdown")


# -- two TAPs on one hub -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("vnet_a", "vnet_b"), [("", ""), ("", ",vnet_hdr=off"), (",vnet_hdr=off", ",vnet_hdr=off")])
def test_two_namespaces_talk_through_two_taps(vnet_a, vnet_b, tmp_path, namespaces, hub_in):
    """A and B each behind a TAP of one hub: ping, and 20 MB of TCP with a matching digest. With vnet
    headers on both the kernel's 64 KiB segments cross the hub as they are; with one side without,
    the hub cuts them for it."""
    hns, a, b = namespaces.add("h"), namespaces.add("a"), namespaces.add("b")
    h = hub_in(hns)
    log = tmp_path / "scripts.log"
    la = h.start(TapLink(tap(f"tap,id=ta,ifname=ta{tag()},script={ifup(tmp_path, 'a', a, '10.77.0.1', log)},"
                             f"downscript={ifdown(tmp_path, 'a', a, log)}{vnet_a}"), h.hub, h.loop))
    lb = h.start(TapLink(tap(f"tap,id=tb,script={ifup(tmp_path, 'b', b, '10.77.0.2', log)},downscript=no{vnet_b}"),
                         h.hub, h.loop))
    pa, pb = la.port, lb.port
    assert pa.vnet_hdr == (vnet_a == "") and pb.vnet_hdr == (vnet_b == "")
    ping(a, "10.77.0.2")
    size = 20_000_000
    server = serve_blob(b, 8000, size, 7)
    try:
        got = in_ns(a, sys.executable, BLOB, "fetch", "10.77.0.2", "8000")
    finally:
        server.kill()
        server.wait()
    assert got.split() == [str(size), expected_sha256(size, 7)]
    if pb.vnet_hdr:  # B's kernel sent TSO super-frames (gso_size = its MSS)
        assert pb.rx_gso > 0 and pb.gso_max > 1514 and pb.gso_size in (1448, 1460), (pb.rx_gso, pb.gso_max)
        if pa.vnet_hdr:
            assert pa.tx_gso > 0  # and A's kernel took them as they were
        else:
            assert pa.counters.tx_frames > pb.counters.rx_frames  # cut up on the way
    else:
        assert pb.rx_gso == 0 and pb.gso_max == 0
    assert pa.counters.tx_dropped == 0 and pb.counters.rx_dropped == 0
    names = (pa.ifname, pb.ifname)
    h.call(la.close)
    h.call(lb.close)
    assert log.read_text().splitlines() == [f"up 1 {names[0]}", f"up 1 {names[1]}", f"down {names[0]} present"]
    assert wait_for(lambda: not link_exists(a, names[0]) and not link_exists(b, names[1]), what="the TAPs to go")


def tun_flags(netns: str, ifname: str) -> int:
    return int(in_ns(netns, "cat", f"/sys/class/net/{ifname}/tun_flags"), 16)


@pytest.mark.parametrize(("opt", "vnet"), [("", True), (",vnet_hdr=on", True), (",vnet_hdr=off", False)])
def test_vnet_hdr_unset_on_off(opt, vnet, namespaces, hub_in):
    hns = namespaces.add("h")
    h = hub_in(hns)
    link = h.start(TapLink(tap(f"tap,id=t0,script=no,downscript=no{opt}"), h.hub, h.loop))
    assert link.port.vnet_hdr is vnet and link.port.offload_ok is vnet
    assert bool(tun_flags(hns, link.port.ifname) & IFF_VNET_HDR) is vnet
    assert link.offloads == (OFFLOADS if vnet else 0)
    features = in_ns(hns, "ethtool", "-k", link.port.ifname) if vnet and _has("ethtool") else ""
    if features:
        assert "tcp-segmentation-offload: on" in features
    assert link.describe().endswith(",vnet_hdr=on,offload=csum+tso4+tso6" if vnet else ",vnet_hdr=off")


def _has(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None


def test_fd_inherited_tap_and_descriptors_that_are_not(tmp_path, namespaces, hub_in):
    hns, a = namespaces.add("h"), namespaces.add("a")
    h = hub_in(hns)
    name = f"pt{tag()}"
    sh(f"ip -n {hns} tuntap add dev {name} mode tap vnet_hdr")  # a persistent TAP, opened by the caller
    dev = h.call(open_tap, name, True)
    assert dev.ifname == name and dev.vnet_hdr
    link = h.start(TapLink(tap(f"tap,id=t0,fd={dev.fd}"), h.hub, h.loop))
    assert link.port.ifname == name and link.port.vnet_hdr and link.describe().startswith(f"fd={dev.fd},vnet_hdr=on")
    sh(f"ip -n {hns} link set {name} netns {a}", f"ip -n {a} addr add 10.78.0.1/24 dev {name}",
       f"ip -n {a} link set {name} up")
    rec = h.attach(Recorder(keep=True))
    subprocess.run(["ip", "netns", "exec", a, sys.executable, BLOB, "ping", "10.78.0.9", "1"], capture_output=True)
    assert wait_for(lambda: any(f[12:14] == b"\x08\x06" for f in rec.frames), what="an ARP request from the fd=")
    h.call(link.close)
    assert link_exists(a, name)  # persistent: closing our descriptor leaves it
    r, w = os.pipe()
    try:
        with pytest.raises(LinkError, match=rf"fd={r} is not an attached TUN/TAP descriptor \(TUNGETIFF: "):
            h.call(TapLink(tap(f"tap,id=t1,fd={r}"), h.hub, h.loop).start)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(LinkError, match=f"-netdev tap,id=t2: fd={r}: Bad file descriptor"):
        h.call(TapLink(tap(f"tap,id=t2,fd={r}"), h.hub, h.loop).start)
    tun_name = f"tu{tag()}"
    sh(f"ip -n {hns} tuntap add dev {tun_name} mode tun")
    fd = h.call(_open_tun, tun_name)
    with pytest.raises(LinkError, match="is a TUN \\(layer 3\\) device, not a TAP"):
        h.call(TapLink(tap(f"tap,id=t3,fd={fd}"), h.hub, h.loop).start)
    os.close(fd)


def _open_tun(name: str) -> int:
    import fcntl
    import struct

    from vmlan.io.tap import IFF_NO_PI, IFF_TUN, TUNSETIFF

    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def test_a_deleted_interface_closes_the_port(namespaces, hub_in):
    hns = namespaces.add("h")
    h = hub_in(hns)
    link = h.start(TapLink(tap("tap,id=t0,script=no,downscript=no"), h.hub, h.loop))
    port: TapPort = link.port
    sh(f"ip -n {hns} link set {port.ifname} up")
    h.call(port.transmit, b"\xff" * 6 + b"\x02" + b"\x00" * 5 + b"\x88\xb5" + bytes(46), port, None)
    sh(f"ip -n {hns} link del {port.ifname}")
    h.call(port.transmit, b"\xff" * 6 + b"\x02" + b"\x00" * 5 + b"\x88\xb5" + bytes(46), port, None)
    assert wait_for(lambda: h.call(lambda: port.closed), what="the port to close")
    assert link.port is None and port not in h.hub.ports


def test_bad_vnet_headers_are_dropped_and_counted(namespaces, hub_in):
    """What the kernel reads from the TAP is trusted no more than a guest: a header with unknown
    flags is dropped (counted), a good one passes with its Offload."""
    hns = namespaces.add("h")
    h = hub_in(hns)
    link = h.start(TapLink(tap("tap,id=t0,script=no,downscript=no"), h.hub, h.loop))
    port = link.port
    rec = h.attach(Recorder(offload_ok=True))
    frame = b"\x02" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(46)
    # Feed the reader directly (its buffer then its parse), as if read(2) had returned these bytes.
    for header in (bytes([0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0]), bytes([1, 0, 0, 0, 0, 0, 14, 0, 16, 0]), bytes(10)):
        data = header + frame
        h.call(_feed, port, data)
    assert port.rx_bad_header == 1 and port.counters.rx_dropped == 1
    assert [(n, o is not None and o.csum_start) for n, o in rec.sizes] == [(60, 14), (60, False)]


def _feed(port: TapPort, data: bytes) -> None:
    """Run the port's read loop on ``data`` as one frame read from the kernel."""
    r, w = os.pipe()
    try:
        os.write(w, data)
        real = port._file
        import io

        port._file = io.FileIO(r, "rb", closefd=False)
        os.set_blocking(r, False)
        port._on_readable()
    finally:
        port._file = real
        os.close(r)
        os.close(w)


# -- bridge ----------------------------------------------------------------------------------------------
@pytest.fixture
def lab(tmp_path: Path, namespaces: Namespaces):
    """Namespace H with bridge BR (MTU 1400) and veth ports to namespaces N1 (10.79.0.11) and N2 (.12)."""
    hns, n1, n2 = namespaces.add("h"), namespaces.add("n1"), namespaces.add("n2")
    br = f"vbr{namespaces.tag}"
    sh(f"ip -n {hns} link add {br} type bridge", f"ip -n {hns} link set {br} mtu 1400 up")
    for i, ns in ((1, n1), (2, n2)):
        sh(f"ip -n {hns} link add v{i}{namespaces.tag} mtu 1400 type veth peer name eth0 mtu 1400 netns {ns}",
           f"ip -n {hns} link set v{i}{namespaces.tag} master {br} up",
           f"ip -n {ns} addr add 10.79.0.1{i}/24 dev eth0", f"ip -n {ns} link set eth0 up")
    return hns, br, n1, n2


def bridge_link_info(netns: str, ifname: str) -> dict[str, str]:
    import json

    (info,) = json.loads(in_ns(netns, "ip", "-j", "-d", "link", "show", ifname))
    return info


def test_bridge_port_joins_two_namespaces_to_the_hub(tmp_path, namespaces, hub_in, lab):
    hns, br, n1, n2 = lab
    h = hub_in(hns)
    conf = acl(tmp_path, f"allow {br}\n")
    blink = h.start(BridgeLink(bridge(f"bridge,id=b0,br={br}"), h.hub, h.loop, acl=conf))
    ifname = blink.port.ifname
    info = bridge_link_info(hns, ifname)
    assert info["mtu"] == 1400 and info["master"] == br and "UP" in info["flags"]
    assert info["address"].startswith("fe:") and info["address"] == blink.mac
    assert blink.port.vnet_hdr and blink.describe() == (
        f"helper=builtin,br={br},ifname={ifname},vnet_hdr=on,offload=csum+tso4+tso6")
    # A third namespace behind a plain TAP of the same hub: N1 and N2 reach it through the bridge.
    n3 = namespaces.add("n3")
    h.start(TapLink(tap(f"tap,id=t3,script={ifup(tmp_path, 'n3', n3, '10.79.0.13', tmp_path / 'log')},"
                        "downscript=no"), h.hub, h.loop))
    sh(f"ip -n {n3} link set dev $(ip -n {n3} -o link show | awk -F': ' '/tap/{{print $2}}') mtu 1400")
    for ns in (n1, n2):
        ping(ns, "10.79.0.13")
    size = 8_000_000
    server = serve_blob(n3, 8000, size, 3)
    try:
        got = in_ns(n1, sys.executable, BLOB, "fetch", "10.79.0.13", "8000")
    finally:
        server.kill()
        server.wait()
    assert got.split() == [str(size), expected_sha256(size, 3)]
    h.call(blink.close)
    assert wait_for(lambda: not link_exists(hns, ifname), what="the bridge TAP to go")


def test_bridge_refused_by_the_acl_or_missing(tmp_path, namespaces, hub_in, lab):
    hns, br, _n1, _n2 = lab
    h = hub_in(hns)
    conf = acl(tmp_path, f"allow all\ndeny {br}\n")
    before = in_ns(hns, "ip", "-o", "link", "show")
    with pytest.raises(LinkError) as info:
        h.call(BridgeLink(bridge(f"bridge,id=b0,br={br}"), h.hub, h.loop, acl=conf).start)
    assert str(info.value) == f"-netdev bridge,id=b0: bridge '{br}': access denied by acl file {conf}"
    with pytest.raises(LinkError) as info:
        h.call(BridgeLink(bridge("bridge,id=b1"), h.hub, h.loop, acl=str(tmp_path / "absent.conf")).start)
    assert str(info.value) == (f"-netdev bridge,id=b1: failed to parse default acl file `{tmp_path}/absent.conf': "
                               "No such file or directory")
    everything = acl(tmp_path, "allow all\n", "all.conf")
    with pytest.raises(LinkError, match=r"failed to get mtu of bridge `nobr0': No such device$"):
        h.call(BridgeLink(bridge("bridge,id=b2,br=nobr0"), h.hub, h.loop, acl=everything).start)
    with pytest.raises(LinkError, match="`lo' is not a bridge"):
        h.call(BridgeLink(bridge("bridge,id=b3,br=lo"), h.hub, h.loop, acl=everything).start)
    assert in_ns(hns, "ip", "-o", "link", "show") == before  # no TAP left behind by a failure


def test_bridge_helper_protocol(tmp_path, namespaces, hub_in, lab):
    """helper=: vmlan runs it as QEMU runs qemu-bridge-helper and takes the descriptor it sends back."""
    hns, br, n1, _n2 = lab
    h = hub_in(hns)
    args_log = tmp_path / "helper.args"
    helper = tmp_path / "helper"
    helper.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""\
        import socket, sys
        from vmlan.io.bridge import attach_to_bridge
        from vmlan.io.tap import open_tap
        open({str(args_log)!r}, "w").write(" ".join(sys.argv[1:]))
        opts = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
        dev = open_tap("", "--use-vnet" in sys.argv or None)
        attach_to_bridge(dev.ifname, opts["--br"])
        sock = socket.socket(fileno=int(opts["--fd"]))
        socket.send_fds(sock, [b"\\0"], [dev.fd])
        """))
    helper.chmod(0o755)
    link = h.start(BridgeLink(bridge(f"bridge,id=b0,br={br},helper={helper}"), h.hub, h.loop,
                              acl=str(tmp_path / "unused.conf")))
    argv = args_log.read_text().split()
    assert argv[0] == "--use-vnet" and argv[1].startswith("--fd=") and argv[2] == f"--br={br}"
    assert link.port.vnet_hdr and bridge_link_info(hns, link.port.ifname)["master"] == br
    rec = h.attach(Recorder(keep=True))
    subprocess.run(["ip", "netns", "exec", n1, sys.executable, BLOB, "ping", "10.79.0.99", "1"], capture_output=True)
    assert wait_for(lambda: any(f[12:14] == b"\x08\x06" for f in rec.frames), what="N1's ARP through the helper's TAP")
    refusing = script(tmp_path / "refusing", "echo 'access denied by acl file' >&2\nexit 1\n")
    with pytest.raises(LinkError) as info:
        h.call(BridgeLink(bridge(f"bridge,id=b1,br={br},helper={refusing}"), h.hub, h.loop).start)
    assert str(info.value) == "-netdev bridge,id=b1: failed to recv file descriptor: access denied by acl file"
    # With spaces, the helper is a shell command and gets --br= only if it has none.
    h.start(BridgeLink(bridge(f"bridge,id=b2,br=ignored0,helper={helper} --br={br}"), h.hub, h.loop))
    shell_argv = args_log.read_text().split()
    assert shell_argv[:2] == [f"--br={br}", "--use-vnet"] and shell_argv[2].startswith("--fd=") and len(shell_argv) == 3


def test_tap_port_takes_an_open_descriptor(namespaces, hub_in):
    """The constructor the namespace helper uses: TapPort(name, fd, loop, vnet_hdr=...), both directions."""
    hns = namespaces.add("h")
    h = hub_in(hns)
    dev = h.call(open_tap, "", False)
    port = TapPort("ns0", dev.fd, h.loop, vnet_hdr=False, ifname=dev.ifname)
    rec = h.attach(Recorder(keep=True))
    h.attach(port)
    h.call(port.start)
    assert not port.offload_ok and port.describe() == f"ifname={dev.ifname},vnet_hdr=off"
    sh(f"ip -n {hns} link set {dev.ifname} up")

    def packet_socket() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
        s.bind((dev.ifname, 0x88B5))
        s.settimeout(10)
        return s

    sock = h.call(packet_socket)  # made on the hub's thread: in its namespace
    try:
        out = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x07" + b"\x88\xb5" + b"to the kernel" + bytes(33)
        assert h.call(port.transmit, out, rec, None)
        assert sock.recv(2048) == out
        back = b"\x02\x00\x00\x00\x00\x07" + b"\x02\x00\x00\x00\x00\x08" + b"\x88\xb5" + b"from it" + bytes(39)
        sock.send(back)
        assert wait_for(lambda: back in rec.frames, what="the frame the kernel sent")
    finally:
        sock.close()
    h.call(port.close)
    assert port.closed and port not in h.hub.ports


QEMU_HELPER = "/usr/lib/qemu/qemu-bridge-helper"


def test_bridge_through_qemus_own_helper(tmp_path, namespaces, hub_in, lab):
    """helper= with QEMU 7.2's qemu-bridge-helper itself. It reads only /etc/qemu/bridge.conf, so a
    wrapper runs it in a private mount namespace where /etc is an overlay holding our ACL: the host's
    /etc is never touched. A bridge its ACL allows works; one it denies fails with its words."""
    assert os.path.exists(QEMU_HELPER), f"{QEMU_HELPER} missing: apt-get install qemu-system-common"
    hns, br, n1, _n2 = lab
    h = hub_in(hns)
    wrapper = script(tmp_path / "helper-in-a-mount-ns", f"""\
        exec unshare --mount --propagation private sh -c '
            mkdir -p {tmp_path}/upper {tmp_path}/work
            mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp_path}/upper,workdir={tmp_path}/work /etc \\
                || exit 9
            mkdir -p /etc/qemu && printf "allow {br}\\ndeny denied0\\n" > /etc/qemu/bridge.conf
            exec {QEMU_HELPER} "$@"' sh "$@"
        """)
    link = h.start(BridgeLink(bridge(f"bridge,id=b0,br={br},helper={wrapper}"), h.hub, h.loop))
    info = bridge_link_info(hns, link.port.ifname)
    assert info["master"] == br and info["address"].startswith("fe:") and info["mtu"] == 1400
    assert link.port.vnet_hdr  # --use-vnet: the helper asked for IFF_VNET_HDR
    rec = h.attach(Recorder(keep=True))
    subprocess.run(["ip", "netns", "exec", n1, sys.executable, BLOB, "ping", "10.79.0.99", "1"], capture_output=True)
    assert wait_for(lambda: any(f[12:14] == b"\x08\x06" for f in rec.frames), what="N1's ARP through QEMU's helper")
    with pytest.raises(LinkError) as refused:
        h.call(BridgeLink(bridge(f"bridge,id=b1,br=denied0,helper={wrapper}"), h.hub, h.loop).start)
    assert str(refused.value) == "-netdev bridge,id=b1: failed to recv file descriptor: access denied by acl file"
    assert not os.path.exists("/etc/qemu")

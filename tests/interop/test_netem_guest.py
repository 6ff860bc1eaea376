"""``-object filter-netem`` on a real guest's netdev: bulk TCP both ways through loss, delay and reordering.

Two filter-dumps tell what netem did, as the wire saw it (lan.py: a dump sees frames before the rx
filter and after the tx filter): the guest's netdev records what the guest sent before netem and what
reached the guest after it; the user stack's netdev records what reached the stack after netem and what
the stack sent before it. Comparing the two is the emulator's record, frame by frame.
"""

from __future__ import annotations

import socket
import struct
from collections import defaultdict
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP, Ether
from scapy.utils import RawPcapReader

from servers import DnsServer, HttpServer
from tests.interop.guestnet import MB, UDHCPC, monitor, user_lan, wait_until

pytestmark = pytest.mark.guest

MB20 = 20 * MB
SNAPLEN = 96  # Ethernet + IPv4 + TCP with options: enough to tell every frame from the others
GUEST_MAC = "52:54:00:12:34:56"


def raw_frames(path: Path) -> list[bytes]:
    with RawPcapReader(str(path)) as reader:
        return [bytes(data) for data, _meta in reader]


def compare(before: list[bytes], after: list[bytes]) -> tuple[int, int, int]:
    """(sent, lost, jumped) between the frames offered to netem and those it let through, in order.

    A frame is known by its first SNAPLEN bytes (IP ID, TCP sequence and timestamps make each one
    unique; identical copies are matched first come, first served). "jumped" counts the frames that
    arrived before one sent earlier than them: the ones netem's reorder sent at once past the delayed.
    """
    positions: dict[bytes, list[int]] = defaultdict(list)
    for i, frame in enumerate(before):
        positions[frame].append(i)
    taken: dict[bytes, int] = defaultdict(int)
    order = []
    for frame in after:
        seen = positions.get(frame)
        assert seen is not None and taken[frame] < len(seen), "netem let through a frame nobody sent"
        order.append(seen[taken[frame]])
        taken[frame] += 1
    jumped = 0
    lowest = len(before)
    for index in reversed(order):
        if index > lowest:
            jumped += 1
        lowest = min(lowest, index)
    return len(before), len(before) - len(after), jumped


@pytest.mark.timeout(900)
def test_20_mb_each_way_through_loss_delay_and_reordering(make_guest, vmlan_run, tmp_path):
    """``loss=2,delay=5,reorder=10,seed=1`` on the guest's netdev, both directions: 20 MB down and 20 MB
    up through 10.0.2.2 arrive with matching sha256, and the dumps show that frames were lost and
    reordered in each direction at about the rates asked for.

    The old stack's tree had no filter-netem (the option was refused).
    """
    g_pcap, u_pcap = tmp_path / "guest.pcap", tmp_path / "stack.pcap"
    with DnsServer() as dns, HttpServer() as http:
        vm, nds = user_lan(vmlan_run, tmp_path, f"dns-server=127.0.0.1:{dns.port}", extra=[
            "-object", "filter-netem,id=n,netdev=vm0,loss=2,delay=5,reorder=10,seed=1",
            "-object", f"filter-dump,id=dg,netdev=vm0,file={g_pcap},maxlen={SNAPLEN}",
            "-object", f"filter-dump,id=du,netdev=u0,file={u_pcap},maxlen={SNAPLEN}",
        ])
        g = make_guest("g", nds[0], mac=GUEST_MAC)
        g.check(UDHCPC, timeout=120)
        url = f"http://10.0.2.2:{http.port}/blob/{MB20}/21"
        got = g.check(f"timeout 600 wget -q -O - {url} | sha256sum", timeout=620).split()[0]
        assert got == http.expected_sha256(MB20, 21)
        g.check("dd if=/dev/urandom of=/tmp/up bs=1048576 count=20 2>/dev/null")
        want = g.check("sha256sum /tmp/up").split()[0]
        put = "printf 'PUT /up HTTP/1.0\\r\\n\\r\\n'; cat /tmp/up"  # busybox wget cannot upload (test_usernet)
        g.check(f"({put}) | timeout 600 nc 10.0.2.2 {http.port} >/dev/null", timeout=620)
        up = http.wait_upload("/up", timeout=60)
        assert (up.size, up.sha256) == (MB20, want)
        snap = monitor(vm)
        text = vm.stop()  # closes the dumps: every frame is in the files now
    assert "internal error" not in text and not snap.internal_errors

    guest_mac = bytes.fromhex(GUEST_MAC.replace(":", ""))
    g_frames, u_frames = raw_frames(g_pcap), raw_frames(u_pcap)
    from_guest = [f for f in g_frames if f[6:12] == guest_mac]  # before netem (rx)
    to_guest = [f for f in g_frames if f[6:12] != guest_mac]  # after netem (tx)
    at_stack = [f for f in u_frames if f[6:12] == guest_mac]  # after netem
    from_stack = [f for f in u_frames if f[6:12] != guest_mac]  # before netem
    for name, before, after in (("guest -> stack", from_guest, at_stack), ("stack -> guest", from_stack, to_guest)):
        sent, lost, jumped = compare(before, after)
        print(f"\nnetem {name}: {sent} frames, {lost} lost ({100 * lost / sent:.2f} %), "
              f"{jumped} overtook earlier ones ({100 * jumped / sent:.2f} %)")
        assert sent > 5000, f"{name}: only {sent} frames"
        assert 0.01 * sent < lost < 0.035 * sent, f"{name}: {lost} of {sent} lost with loss=2"
        assert 0.03 * sent < jumped < 0.12 * sent, f"{name}: {jumped} of {sent} reordered with reorder=10"


def test_info_network_shows_the_netem_counters(vmlan_run, tmp_path):
    """SIGUSR1's info network has a line per filter-netem with its counters (NetemFilter.describe(),
    "one line for info network"), so a user can see what the emulator dropped and reordered.

    A peer sends 200 ARP requests for the gateway through ``loss=50``: about half reach the stack.
    """
    path = tmp_path / "p.sock"
    vm = vmlan_run("-netdev", "user,id=u0,dns-server=127.0.0.1:53",
                   "-netdev", f"stream,id=p,server=on,addr.type=unix,addr.path={path}",
                   "-object", "filter-netem,id=lossy,netdev=p,loss=50,queue=rx,seed=3")
    frame = bytes(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=GUEST_MAC, psrc="0.0.0.0", pdst="10.0.2.2"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.connect(str(path))
        peer.sendall((struct.pack(">I", len(frame)) + frame) * 200)
        snap = wait_until(lambda: (s := monitor(vm)) and "rx 200 frames" in s.text and s, 20, "the 200 frames")
    replies = snap.counter("arp_replies")
    assert 50 < replies < 150, snap.text
    lines = [line for line in snap.text.splitlines() if "netem lossy" in line]
    assert lines, f"no netem line in info network:\n{snap.text}"
    assert f"lost {200 - replies}" in lines[0] and "offered 200" in lines[0], lines

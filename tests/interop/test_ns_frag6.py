"""IPv6 fragments with real peers: a ``vmlan ns`` namespace's kernel fragments at MTU 1500 what is larger
(busybox ``ping6 -s 4000``, an 8000-byte UDP datagram), the stack reassembles, answers or relays to the
test's UDP echo server on the host's ``::1``, and fragments its answers back, which the namespace's kernel
reassembles. ``-v`` prints info usernet at exit: the counters say fragments went both ways.

Runs go through tests/interop/test_ns.py's machinery (as root and as nobody, with its teardown checks).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.interop import test_ns as base
from tests.interop.test_ns import Who, assert_clean, cmd, vmlan_dir_exists

# test_ns.py's fixtures, used here by name
tun_for_everyone, vmlan_ns, who = base.tun_for_everyone, base.vmlan_ns, base.who


@pytest.fixture
def udp_echo6() -> Iterator[tuple[int, list[tuple[int, str]]]]:
    """A UDP echo server on ``[::1]:PORT``; yields the port and what it saw (sizes, clients)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind(("::1", 0))
    sock.settimeout(0.1)
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            seen.append((len(data), peer[0]))
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        stop.set()
        thread.join()
        sock.close()


BIG = """
    import json, socket, subprocess, sys
    port = int(sys.argv[1])
    ping = subprocess.run(["busybox", "ping6", "-c", "2", "-W", "5", "-s", "4000", "fec0::2"],
                          capture_output=True, text=True).stdout
    payload = bytes(range(256)) * 31 + bytes(range(64))  # 8000 bytes
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.settimeout(10)
    u.connect(("fec0::2", port))
    u.send(payload)  # once: over loopback and a TAP nothing is lost that the stack did not drop
    try:
        echoed = u.recv(65535)
    except TimeoutError:
        echoed = b""
    print(json.dumps({"ping": ping, "sent": len(payload), "back": len(echoed), "same": echoed == payload}),
          flush=True)
    """


def test_ping6_of_4000_bytes_and_8000_byte_udp_cross_the_stack_in_fragments(
        who: Who, vmlan_ns: Any, udp_echo6: tuple[int, list[tuple[int, str]]]) -> None:
    before = vmlan_dir_exists(who)
    port, seen = udp_echo6
    run = vmlan_ns(who, "-v", *cmd(who, BIG, str(port)))
    probe = run.probe()
    result = json.loads(run.wait_line(r'^\{"ping"', timeout=60).string)
    assert run.finish() == 0, run.stderr
    assert "2 packets received" in result["ping"] and "4008 bytes from fec0::2" in result["ping"], result["ping"]
    assert (result["sent"], result["back"], result["same"]) == (8000, 8000, True), result
    assert seen and seen[0] == (8000, "::1")  # whole on the host's socket: the stack reassembled it
    counters = run.wait_line(r"^  counters: .*", "err").string
    got = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
    # ping: 2 requests of 3 fragments; UDP: 6 fragments. Each reply went back fragmented.
    assert got.get("fragments6", 0) >= 2 * 3 + 6 and got.get("fragmented6", 0) >= 3, counters
    assert got.get("frag_reassembled", 0) >= 3 and "frag_overlaps" not in got, counters
    assert_clean(run, probe, before)

"""Caps per guest and for the stack (config.Limits), and the TCP memory budget (tcpnat.py)."""

from __future__ import annotations

import dataclasses
import errno

from scapy.layers.inet import TCP

from tests.engines.usernet.stacknet import (
    GUEST2,
    GUEST2_MAC,
    HOST,
    GuestTcp,
    StackNet,
    build_config,
    echo,
    ip_bytes,
    kinds,
    only,
    open_tcp,
    reader_of,
    udp,
)
from vmlan.engines.usernet import actions as A
from vmlan.engines.usernet.tcpnat import MEMORY_CHECK, MIN_BUFFER

GUESTFWD = "10.0.2.100"


def limited(options: str = "", **limits: int) -> StackNet:
    cfg = build_config(options)
    return StackNet(cfg=dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, **limits)))


def test_guest_tcp_counts_connections_of_every_kind() -> None:
    net = StackNet("guest-tcp=3,hostfwd=tcp::2222-:22")
    a = net.guest(dhcp=True)
    GuestTcp(net, a, HOST, 8080, sport=1).syn()  # NAT
    GuestTcp(net, a, "10.0.2.3", 53, sport=2).syn()  # the stack's own DNS service
    assert net.stack.hostfwd_tcp(0, ("127.0.0.1", 1), net.now) is not None  # a forward to the guest
    net.frames()
    g = GuestTcp(net, a, HOST, 8080, sport=4)
    g.syn()
    assert only(g.mine(net.frames())).flags == "RA"
    assert net.stack.hostfwd_tcp(0, ("127.0.0.1", 2), net.now) is None
    assert net.stack.guests.by_port[a.port].tcp == 3


def test_connections_waiting_for_the_host_are_capped_per_guest() -> None:
    net = limited(tcp_connecting_per_guest=4)
    a = net.guest()
    for sport in range(1, 7):
        GuestTcp(net, a, HOST, 8080, sport=sport).syn()
    connects = net.actions()
    assert kinds(connects) == ["TCP_CONNECT"] * 4
    assert [str(f[TCP].flags) for f in net.frames()] == ["RA", "RA"]
    net.stack.tcp_connected(connects[0][1], net.now)  # one connect finished: room for one more
    net.frames()
    GuestTcp(net, a, HOST, 8080, sport=7).syn()
    assert kinds(net.actions()) == ["TCP_CONNECT"]
    net.stack.tcp_failed(connects[1][1], errno.ECONNREFUSED, net.now)  # so does a failed one
    net.actions()
    net.frames()
    GuestTcp(net, a, HOST, 8080, sport=8).syn()
    assert kinds(net.actions()) == ["TCP_CONNECT"]
    assert net.stack.guests.by_port[a.port].connecting == 4


def test_connections_waiting_for_the_host_are_capped_for_the_stack() -> None:
    net = limited(max_connecting=3)
    a = net.guest("a")
    b = net.guest("b", GUEST2_MAC, GUEST2)
    for sport in (1, 2):
        GuestTcp(net, a, HOST, 8080, sport=sport).syn()
    GuestTcp(net, b, HOST, 8080, sport=1).syn()
    assert kinds(net.actions()) == ["TCP_CONNECT"] * 3
    g = GuestTcp(net, b, HOST, 8080, sport=2)
    g.syn()
    assert net.actions() == [] and only(g.mine(net.frames())).flags == "RA"


def test_max_flows_counts_tcp_udp_and_pings_of_all_guests() -> None:
    net = StackNet("max-flows=10")
    a = net.guest("a")
    b = net.guest("b", GUEST2_MAC, GUEST2)
    room = 10 - len(net.stack.flows)  # the stack-wide timers are flows too
    assert room >= 4
    GuestTcp(net, a, HOST, 8080, sport=1).syn()
    net.send_ip(a, udp(HOST, 9, b"x"))
    net.send_ip(b, echo("192.0.2.9", src=GUEST2))
    for sport in range(2, 2 + room - 3):
        GuestTcp(net, b, HOST, 8080, sport=sport).syn()
    assert len(net.actions()) == room
    assert len(net.stack.flows) == 10
    g = GuestTcp(net, a, HOST, 8080, sport=99)
    g.syn()
    net.send_ip(a, udp(HOST, 9, b"x", sport=2))
    net.send_ip(b, echo("192.0.2.9", src=GUEST2, ident=2))
    assert net.actions() == []
    assert only(g.mine(net.frames())).flags == "RA"
    c = net.stack.counters
    assert (c.tcp_refused_cap, c.udp_dropped_cap, c.ping_dropped_cap) == (1, 1, 1)


def test_hostfwd_clients_is_a_cap_per_rule_and_honours_max_flows() -> None:
    net = StackNet("hostfwd=tcp::2222-:22,hostfwd-clients=2,max-flows=64")
    net.guest(dhcp=True)
    assert [net.stack.hostfwd_tcp(0, ("127.0.0.1", p), net.now) is not None for p in (1, 2, 3)] == [True, True, False]


def test_guestfwd_commands_are_capped_per_guest_and_for_the_stack() -> None:
    net = limited(f"guestfwd=tcp:{GUESTFWD}:80-cmd:cat,guestfwd=tcp:{GUESTFWD}:81-127.0.0.1:9", cmd_per_guest=2,
                  max_cmd=3)
    a = net.guest("a")
    b = net.guest("b", GUEST2_MAC, GUEST2)
    for sport in (1, 2, 3):
        GuestTcp(net, a, GUESTFWD, 80, sport=sport).syn()
    connects = net.actions()
    assert [x[3] for x in connects] == ["cat", "cat"]
    assert [str(f[TCP].flags) for f in net.frames()] == ["RA"]
    GuestTcp(net, a, GUESTFWD, 81, sport=4).syn()  # a forward to an address is no command: not capped
    assert only(net.actions())[3] == ("127.0.0.1", 9)
    GuestTcp(net, b, GUESTFWD, 80, sport=1).syn()
    GuestTcp(net, b, GUESTFWD, 80, sport=2).syn()  # the stack's third and fourth commands
    assert kinds(net.actions()) == ["TCP_CONNECT"]
    assert [str(f[TCP].flags) for f in net.frames()] == ["RA"]
    net.stack.tcp_connected(connects[0][1], net.now)
    net.frames()
    net.stack.tcp_reset(connects[0][1], net.now)  # the command exited: room for another
    net.actions()
    net.frames()
    GuestTcp(net, b, GUESTFWD, 80, sport=3).syn()
    assert kinds(net.actions()) == ["TCP_CONNECT"]
    assert sum(g.cmd for g in net.stack.guests.by_port.values()) == 3


def right_edge(seg: TCP) -> int:
    return int(seg.ack) + int(seg.window) * 128  # the guests here announce wscale 7: so does the stack


def test_memory_budget_shrinks_windows_under_pressure_and_recovers_when_drained() -> None:
    """tcp-mem=1 (MiB): ten connections each holding ~100 KiB of guest data the host has not taken and
    150 KB of host data the guest has not acknowledged are 2.5 MB. The memory check shrinks every
    connection's buffers to an equal share: no send space, windows that stop reopening (an offered window
    is never retracted, RFC 9293 3.8.6), small windows for new connections. Once drained below half of
    the budget, every connection gets its configured size back."""
    net = StackNet("tcp-mem=1")
    a = net.guest()
    conns = [open_tcp(net, a, sport=40000 + n) for n in range(10)]
    chunk = b"g" * 1400
    for g, fid in conns:
        for _ in range(73):
            g.send("PA", chunk)
        assert net.stack.tcp_fill(fid, reader_of(b"h" * 150_000), net.now) == 150_000
    writes = [x for x in net.actions() if x[0] == A.TCP_WRITE]
    assert sum(len(x[2]) for x in writes) == 10 * 73 * 1400  # handed to the host, not yet written
    frames = net.frames()
    for g, _fid in conns:
        g.absorb(g.mine(frames))
    assert net.stack.counters.memory_pressure == 0
    net.advance(MEMORY_CHECK + 0.01)
    assert net.stack.counters.memory_pressure == 1 and net.stack.tcp.pressure
    assert all(net.stack.tcp_send_space(fid) == 0 for _g, fid in conns)
    # a connection opened under pressure starts small
    t = GuestTcp(net, a, HOST, 8080, sport=41000)
    t.syn()
    net.stack.tcp_connected(only(net.actions())[1], net.now)
    synack = t.take_synack(net.frames())
    assert synack.window <= MIN_BUFFER  # the SYN-ACK's window is never scaled (RFC 7323 2.2)
    t.send("A")
    new_fid = net.stack.tcp.by_key[(ip_bytes(a.ip), 41000, ip_bytes(HOST), 8080)].fid
    assert net.stack.tcp_send_space(new_fid) == MIN_BUFFER
    # the host takes all of conn 0's data: its window does not reopen beyond what was offered
    g, fid = conns[0]
    for x in writes:
        if x[1] == fid:
            net.stack.tcp_written(fid, len(x[2]), net.now)
    g.send("PA", chunk)
    net.advance(0.1)
    edge_under_pressure = max(right_edge(seg) for seg in g.mine(net.frames()))
    assert edge_under_pressure - g.seq < 1 << 20  # the window did not reopen to the configured 1 MiB
    assert only(net.actions())[2] == chunk
    net.stack.tcp_written(fid, len(chunk), net.now)
    # drain: the host writes everything, the guests acknowledge everything
    for x in writes:
        if x[1] != fid:
            net.stack.tcp_written(x[1], len(x[2]), net.now)
    for _ in range(60):
        frames = net.frames()
        for g, _fid in conns:
            g.absorb(g.mine(frames))
            g.reassemble(g.rcv_nxt)
            g.send("A")
        net.advance(0.05)
    net.frames()
    assert sum(f.conn.buffered for f in net.stack.tcp.by_key.values()) == 0
    assert not net.stack.tcp.pressure
    for _g, fid in conns:
        assert net.stack.tcp_send_space(fid) == net.cfg.tcp.snd_buffer
    g, fid = conns[0]
    g.send("PA", chunk)
    assert only(net.actions())[2] == chunk
    net.stack.tcp_written(fid, len(chunk), net.now)
    net.advance(0.1)
    assert max(right_edge(seg) for seg in g.mine(net.frames())) - g.seq >= (1 << 20) - 128  # reopened
    assert net.stack.faults.counts == {}


def test_memory_pressure_ends_when_the_connections_holding_the_memory_are_gone() -> None:
    """Connections holding the memory are reset: the next connection gets its full buffers (the pressure
    flag stayed set with no connection left to look at, and the next one started at MIN_BUFFER)."""
    net = StackNet("tcp-mem=1")
    a = net.guest()
    conns = [open_tcp(net, a, sport=40000 + n) for n in range(5)]
    for _g, fid in conns:
        assert net.stack.tcp_fill(fid, reader_of(b"h" * 250_000), net.now) == 250_000
    net.frames()
    net.advance(MEMORY_CHECK + 0.01)
    assert net.stack.tcp.pressure
    for g, _fid in conns:
        g.send("R")
    net.actions()
    net.advance(MEMORY_CHECK + 0.01)
    net.frames()  # retransmissions sent before the resets
    _g, fid = open_tcp(net, a, sport=41000)
    assert not net.stack.tcp.pressure
    assert net.stack.tcp_send_space(fid) == net.cfg.tcp.snd_buffer

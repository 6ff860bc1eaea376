"""TCP NAT (tcpnat.py): guest connections terminated by engines/tcp and relayed to host sockets by flow id.

The guest's SYN is answered only once the host connect() succeeded; a refusal becomes a RST, an
unreachable host or network an ICMP error quoting the SYN. A guest RST aborts the host socket
(TCP_CLOSE abortive=True: SO_LINGER 0), a host reset becomes a RST to the guest.
"""

from __future__ import annotations

import dataclasses
import errno
import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, IPerror, TCPerror
from scapy.layers.l2 import Ether

from tests.engines.usernet.stacknet import (
    GUEST,
    GUEST2,
    GUEST2_MAC,
    HOST,
    HOST_MAC,
    OUTSIDE,
    GuestTcp,
    StackNet,
    build_config,
    check_frame,
    kinds,
    mss_option,
    only,
    open_tcp,
    reader_of,
    wire_frames,
)
from vmlan.engines.usernet import actions as A
from vmlan.wire.checksum import pseudo_header_sum_v4
from vmlan.wire.vnet import FLAG_DATA_VALID, FLAG_NEEDS_CSUM, Offload


@pytest.mark.parametrize(("options", "mss"), [("", 1460), ("mtu=1400", 1360), ("mtu=9000", 8960)])
def test_tcp_syn_waits_for_host_connect_then_synack(options: str, mss: int) -> None:
    net = StackNet(options)
    a = net.guest()
    g = GuestTcp(net, a, HOST, 8080, mss=65000)
    g.syn()
    connect = only(net.actions())
    assert connect[0] == A.TCP_CONNECT and connect[2:] == (4, ("127.0.0.1", 8080))
    assert net.frames() == []  # no SYN-ACK before the host connect() finished
    net.advance(1.0)
    g.send("S", seq=g.isn, ack=0, options=[("MSS", 65000), ("WScale", 7)])  # the guest retransmits its SYN
    assert net.frames() == [] and net.actions() == []
    net.stack.tcp_connected(connect[1], net.now)
    synack = g.take_synack(net.frames())
    assert mss_option(synack) == mss
    assert any(k == "WScale" for k, _ in synack.options)
    assert net.stack.counters.tcp_flows == 1


def test_tcp_to_outside_keeps_the_address() -> None:
    net = StackNet()
    a = net.guest()
    GuestTcp(net, a, OUTSIDE, 443).syn()
    assert only(net.actions())[2:] == (4, (OUTSIDE, 443))


def test_tcp_relay_both_directions_and_close() -> None:
    net = StackNet()
    a = net.guest()
    g, fid = open_tcp(net, a)
    # guest -> host
    g.send("PA", b"hello, host")
    write = only(net.actions())
    assert write[0] == A.TCP_WRITE and write[1] == fid and write[2] == b"hello, host"
    net.stack.tcp_written(fid, len(write[2]), net.now)
    net.advance(0.2)  # the delayed ACK
    acks = g.mine(net.frames())
    assert acks and acks[-1].ack == g.seq
    # host -> guest: more than the initial window, acknowledged as it arrives
    blob = random.Random(1).randbytes(100_000)
    reader = reader_of(blob)
    assert net.stack.tcp_fill(fid, reader, net.now) == len(blob)
    base = g.rcv_nxt
    got = b""
    for _ in range(200):
        segments = g.mine(net.frames())
        for seg in segments:
            assert len(seg.payload) <= 1460 and "A" in seg.flags and seg.ack == g.seq
        g.absorb(segments)
        got = g.reassemble(base)
        if len(got) >= len(blob):
            break
        if segments:
            g.send("A")
        else:
            net.advance(0.25)
    assert got == blob
    g.send("A")
    assert net.actions() == []
    # guest closes its side: the host socket is shut down for writing
    g.send("FA")
    assert net.actions() == [(A.TCP_SHUTDOWN, fid)]
    net.advance(0.2)
    assert any(seg.ack == g.seq for seg in g.mine(net.frames()))  # the FIN is acknowledged
    # host EOF (the reader returns 0): FIN to the guest
    assert net.stack.tcp_fill(fid, reader, net.now) == 0
    fin = only(g.mine(net.frames()))
    assert "F" in fin.flags and fin.seq == g.rcv_nxt
    g.rcv_nxt = (g.rcv_nxt + 1) & 0xFFFFFFFF
    g.send("A")
    assert net.actions() == [(A.TCP_CLOSE, fid, False)]
    assert net.stack.tcp.by_key == {}
    assert net.stack.faults.counts == {}


def test_tcp_fill_that_also_saw_the_host_eof_sends_the_fin_with_the_data() -> None:
    """The I/O layer's first read looks for the host's EOF too (``ended``): data and FIN in one segment."""
    net = StackNet()
    a = net.guest()
    g, fid = open_tcp(net, a)
    assert net.stack.tcp_fill(fid, reader_of(b"answer"), net.now, ended=lambda: True) == 6
    seg = only(g.mine(net.frames()))
    assert seg.payload.load == b"answer" and "F" in seg.flags and seg.seq == g.rcv_nxt
    g.absorb([seg])
    assert g.reassemble(g.rcv_nxt) == b"answer"
    g.rcv_nxt = (g.rcv_nxt + 1) & 0xFFFFFFFF
    g.send("FA")
    assert net.actions() == [(A.TCP_SHUTDOWN, fid), (A.TCP_CLOSE, fid, False)]  # our FIN acknowledged: done
    assert only(g.mine(net.frames())).ack == g.seq  # the guest's FIN acknowledged
    ended: list[bool] = []
    g2, fid2 = open_tcp(net, a, sport=45001)
    assert net.stack.tcp_fill(fid2, reader_of(b"more to come"), net.now, ended=lambda: bool(ended)) == 12
    seg = only(g2.mine(net.frames()))
    assert "F" not in seg.flags  # no EOF seen: the connection stays open


def test_tcp_send_from_a_buffer_and_tcp_eof() -> None:
    """The buffer path (guestfwd pipes): tcp_send takes what fits, tcp_eof sends FIN after it."""
    net = StackNet()
    a = net.guest()
    g, fid = open_tcp(net, a)
    assert net.stack.tcp_send(fid, b"from a pipe", net.now) == 11
    net.stack.tcp_eof(fid, net.now)
    segs = g.mine(net.frames())
    g.absorb(segs)
    assert g.reassemble(g.rcv_nxt) == b"from a pipe"
    assert "F" in segs[-1].flags


def test_tcp_written_reopens_the_window() -> None:
    cfg = build_config()
    net = StackNet(cfg=dataclasses.replace(cfg, tcp=dataclasses.replace(cfg.tcp, rcv_buffer=4096)))
    a = net.guest()
    g = GuestTcp(net, a, HOST, 8080, wscale=None)  # no scaling: the window field is bytes
    g.syn()
    fid = only(net.actions())[1]
    net.stack.tcp_connected(fid, net.now)
    synack = g.take_synack(net.frames())
    assert synack.window == 4096
    assert not any(k == "WScale" for k, _ in synack.options)
    g.send("A")
    data = random.Random(2).randbytes(4096)
    for off in range(0, 4096, 1024):
        g.send("PA", data[off : off + 1024])
    writes = net.actions()
    assert all(w[0] == A.TCP_WRITE for w in writes) and b"".join(w[2] for w in writes) == data
    net.advance(0.2)
    last = g.mine(net.frames())[-1]
    assert (last.ack, last.window) == (g.seq, 0)  # all taken, none written to the host yet
    g.send("PA", b"more")  # beyond the zero window: not accepted
    assert net.actions() == []
    net.advance(0.2)
    assert all(seg.ack == g.seq - 4 for seg in g.mine(net.frames()))
    g.seq -= 4
    net.stack.tcp_written(fid, 4096, net.now)
    update = g.mine(net.frames())
    assert update and update[-1].window == 4096 and update[-1].ack == g.seq
    g.send("PA", b"more")
    assert only(net.actions())[2] == b"more"


def test_tcp_fill_backpressure_resumes_when_the_guest_acks() -> None:
    cfg = build_config()
    net = StackNet(cfg=dataclasses.replace(cfg, tcp=dataclasses.replace(cfg.tcp, snd_buffer=4096)))
    a = net.guest()
    g, fid = open_tcp(net, a)
    reader = reader_of(b"z" * 10_000)
    assert net.stack.tcp_fill(fid, reader, net.now) == 4096
    assert net.stack.tcp_send_space(fid) == 0
    assert net.stack.tcp_fill(fid, reader, net.now) is None  # no room: stop reading until TCP_RESUME
    segs = g.mine(net.frames())
    g.absorb(segs)
    assert g.reassemble(g.rcv_nxt) == b"z" * 4096
    assert net.actions() == []
    g.send("A")
    assert net.actions() == [(A.TCP_RESUME, fid)]
    assert net.stack.tcp_send_space(fid) == 4096


def test_tcp_connect_refused_resets_the_guest() -> None:
    net = StackNet()
    a = net.guest()
    g = GuestTcp(net, a, HOST, 8080, isn=0xFFFFFFFF)  # the ACK wraps
    g.syn()
    fid = only(net.actions())[1]
    net.stack.tcp_failed(fid, errno.ECONNREFUSED, net.now)
    rst = only(g.mine(net.frames()))
    assert rst.flags == "RA" and rst.ack == 0
    assert net.stack.tcp.by_key == {}
    assert kinds(net.actions()) == ["TCP_CLOSE"]
    net.stack.tcp_connected(fid, net.now)  # too late: nothing
    assert net.frames() == [] and net.actions() == []
    assert net.stack.guests.by_port[a.port].connecting == 0


@pytest.mark.parametrize(("err", "code"), [(errno.EHOSTUNREACH, 1), (errno.ENETUNREACH, 0), (errno.ETIMEDOUT, 1),
                                           (errno.EACCES, 13)])
def test_tcp_connect_unreachable_gives_icmp_quoting_the_syn(err: int, code: int) -> None:
    """The guest's connect() fails at once with the host's reason (EHOSTUNREACH, ENETUNREACH), not after
    its SYN retries: ICMP destination unreachable quoting the SYN's IP header and ports."""
    net = StackNet()
    a = net.guest()
    g = GuestTcp(net, a, OUTSIDE, 8080, sport=45678, isn=123456)
    g.syn()
    fid = only(net.actions())[1]
    net.stack.tcp_failed(fid, err, net.now)
    err_frame = only(net.frames())
    assert (err_frame[ICMP].type, err_frame[ICMP].code) == (3, code)
    assert (err_frame[IP].src, err_frame[IP].dst) == (HOST, GUEST)
    quoted = err_frame[IPerror]
    assert (quoted.src, quoted.dst, quoted.proto) == (GUEST, OUTSIDE, 6)
    assert (quoted[TCPerror].sport, quoted[TCPerror].dport, quoted[TCPerror].seq) == (45678, 8080, 123456)
    assert kinds(net.actions()) == ["TCP_CLOSE"]
    assert net.stack.tcp.by_key == {} and net.stack.faults.counts == {}


def test_tcp_guest_gives_up_before_host_connect() -> None:
    net = StackNet()
    a = net.guest()
    g = GuestTcp(net, a, HOST, 8080)
    g.syn()
    fid = only(net.actions())[1]
    g.send("R", ack=0)
    assert kinds(net.actions()) == ["TCP_CLOSE"]
    assert net.stack.tcp.by_key == {}
    net.stack.tcp_connected(fid, net.now)
    assert net.frames() == []
    assert net.stack.guests.by_port[a.port].connecting == 0


def test_tcp_unanswered_synack_times_out() -> None:
    net = StackNet()
    a = net.guest()
    g = GuestTcp(net, a, HOST, 8080)
    g.syn()
    fid = only(net.actions())[1]
    net.stack.tcp_connected(fid, net.now)
    first = g.take_synack(net.frames())
    net.advance(net.cfg.tcp.rto_initial + 0.01)
    again = g.take_synack(net.frames())  # retransmitted, same ISN
    assert again.seq == first.seq
    net.advance(600)
    later = g.mine(net.frames())
    assert [str(seg.flags) for seg in later] == ["SA"] * (net.cfg.tcp.syn_retries - 1) + ["RA"]
    assert all(seg.seq == first.seq for seg in later[:-1])
    assert kinds(net.actions()) == ["TCP_CLOSE"]
    assert net.stack.tcp.by_key == {}
    assert net.stack.guests.by_port[a.port].tcp == 0


def test_tcp_guest_reset_closes_the_host_side_abortively() -> None:
    net = StackNet()
    a = net.guest()
    g, fid = open_tcp(net, a)
    g.send("RA")
    assert net.actions() == [(A.TCP_CLOSE, fid, True)]  # SO_LINGER 0: the host peer sees ECONNRESET
    assert net.frames() == [] and net.stack.tcp.by_key == {}
    assert net.stack.tcp_fill(fid, reader_of(b"late"), net.now) is None  # the flow is gone: stop reading
    assert net.stack.tcp_send(fid, b"late", net.now) == 4  # swallowed, nothing sent
    net.stack.tcp_written(fid, 4, net.now)
    net.stack.tcp_reset(fid, net.now)
    assert net.frames() == [] and net.actions() == []
    assert net.stack.faults.counts == {}


def test_tcp_host_reset_resets_the_guest() -> None:
    net = StackNet()
    a = net.guest()
    g, fid = open_tcp(net, a)
    net.stack.tcp_reset(fid, net.now)
    rst = only(g.mine(net.frames()))
    assert "R" in rst.flags and rst.seq == g.rcv_nxt
    assert net.actions() == [(A.TCP_CLOSE, fid, False)]
    g.send("PA", b"anyone?")
    assert only(g.mine(net.frames())).flags == "R"  # nothing left of it


@pytest.mark.parametrize("dst", [HOST, OUTSIDE])
def test_tcp_syn_under_restrict_gets_rst(dst: str) -> None:
    net = StackNet("restrict=on")
    a = net.guest()
    g = GuestTcp(net, a, dst, 8080, isn=5000)
    g.syn()
    rst = only(g.mine(net.frames()))
    assert rst.flags == "RA" and rst.seq == 0 and rst.ack == 5001
    assert net.actions() == [] and net.stack.tcp.by_key == {}
    assert net.stack.counters.restricted == 1


@pytest.mark.parametrize(
    ("flags", "payload", "rst_flags", "rst_seq", "rst_ack"),
    [
        ("A", b"", "R", 7777, 0),
        ("PA", b"data", "R", 7777, 0),
        ("F", b"", "RA", 0, 5001),
        ("", b"abc", "RA", 0, 5003),
        ("SA", b"", "R", 7777, 0),
    ],
)
def test_tcp_segment_for_no_connection_gets_rst(flags: str, payload: bytes, rst_flags: str, rst_seq: int,
                                                 rst_ack: int) -> None:
    net = StackNet()
    a = net.guest()
    g = GuestTcp(net, a, HOST, 8080)
    g.send(flags, payload, seq=5000, ack=7777)
    rst = only(g.mine(net.frames()))
    assert (str(rst.flags), rst.seq, rst.ack) == (rst_flags, rst_seq, rst_ack)
    assert net.actions() == [] and net.stack.tcp.by_key == {}
    g.send("R", seq=5000, ack=0)  # and a RST for nothing gets nothing
    assert net.frames() == []


def test_tcp_bad_checksum_syn_is_dropped() -> None:
    net = StackNet()
    a = net.guest()
    pkt = IP(bytes(IP(src=GUEST, dst=HOST) / TCP(sport=45000, dport=8080, flags="S", seq=1)))
    pkt[TCP].chksum ^= 0x1234
    net.send_ip(a, pkt)
    assert net.frames() == [] and net.actions() == []
    assert net.stack.tcp.by_key == {}
    assert net.stack.counters.bad_l4 == 1  # was bad_ipv4 in the old stack


@pytest.mark.parametrize(("sport", "dport"), [(0, 8080), (45000, 0), (0, 0)])
def test_a_syn_with_port_zero_is_dropped_and_counted(sport: int, dport: int) -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, IP(src=GUEST, dst=HOST) / TCP(sport=sport, dport=dport, flags="S", seq=1))
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.bad_l4 == 1
    assert net.stack.tcp.by_key == {} and net.stack.faults.counts == {}


def test_a_tcp_data_offset_beyond_the_segment_is_dropped() -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, IP(src=GUEST, dst=HOST) / TCP(sport=45000, dport=8080, flags="S", seq=1, dataofs=15))
    assert net.actions() == [] and net.stack.tcp.by_key == {}
    assert net.stack.counters.bad_l4 == 1 and net.stack.faults.counts == {}


def test_tcp_cap_per_guest() -> None:
    net = StackNet("guest-tcp=2")
    a = net.guest("a")
    for port in (1, 2):
        GuestTcp(net, a, HOST, 8080, sport=40000 + port).syn()
    assert kinds(net.actions()) == ["TCP_CONNECT", "TCP_CONNECT"]
    g3 = GuestTcp(net, a, HOST, 8080, sport=40003)
    g3.syn()
    assert net.actions() == []
    assert only(g3.mine(net.frames())).flags == "RA"
    assert net.stack.counters.tcp_refused_cap == 1
    b = net.guest("b", GUEST2_MAC, GUEST2)
    GuestTcp(net, b, HOST, 8080).syn()
    assert kinds(net.actions()) == ["TCP_CONNECT"]


def test_a_port_taking_gso_gets_64k_segments_and_they_cut_into_valid_frames() -> None:
    net = StackNet()
    a = net.guest(offload_ok=True)
    g, fid = open_tcp(net, a)
    blob = random.Random(4).randbytes(200_000)
    assert net.stack.tcp_fill(fid, reader_of(blob), net.now) == 200_000
    raw = net.raw_frames()
    big = [(f, off) for f, off in raw if off is not None]
    assert big and all(off.gso_type == 1 and off.gso_size == 1460 for _f, off in big)
    assert max(len(f) for f, _off in big) > 14 + 1500
    pieces = [check_frame(p) for f, off in raw for p in wire_frames(f, off)]
    g.absorb(g.mine(pieces))
    got = g.reassemble(g.rcv_nxt)
    assert got == blob[: len(got)] and len(got) >= net.cfg.tcp.initial_window * 1460  # one GSO frame or more


def test_a_checksum_the_sender_vouched_for_is_not_verified_again() -> None:
    """Offload FLAG_DATA_VALID (a TAP with vnet headers: the kernel checked it) or NEEDS_CSUM (the guest
    left it to the hardware): the stack does not verify the transport checksum; without one it does."""
    net = StackNet()
    a = net.guest()
    t, _fid = open_tcp(net, a)
    pkt = IP(bytes(IP(src=GUEST, dst=HOST, flags="DF") / TCP(sport=t.sport, dport=8080, flags="PA", seq=t.seq,
                                                              ack=t.rcv_nxt, window=64240) / b"vouched"))
    pkt[TCP].chksum ^= 0xFFFF
    frame = bytes(Ether(src=a.mac, dst=HOST_MAC) / pkt)
    net.stack.receive_frame(frame, a.port, None, net.now)
    assert net.actions() == []
    net.stack.receive_frame(frame, a.port, Offload(FLAG_DATA_VALID), net.now)
    assert only(net.actions())[2] == b"vouched"


def test_a_guest_leaving_closes_its_connections_abortively_and_keeps_others() -> None:
    net = StackNet("hostfwd=tcp::2222-:22")
    a = net.guest("a", dhcp=True)
    b = net.guest("b", GUEST2_MAC, GUEST2)
    _t, fid_a = open_tcp(net, a)
    _t2, fid_b = open_tcp(net, b)
    fwd = net.stack.hostfwd_tcp(0, ("127.0.0.1", 1), net.now)
    net.frames()
    net.stack.port_left(a.port, net.now)
    assert sorted(net.actions()) == sorted([(A.TCP_CLOSE, fid_a, True), (A.TCP_CLOSE, fwd, True)])
    assert [f.fid for f in net.stack.tcp.by_key.values()] == [fid_b]
    assert net.stack.tcp.fwd_count == {0: 0}
    assert net.frames() == []  # nobody is left to tell


def test_a_new_syn_on_a_connection_in_time_wait_opens_a_new_one() -> None:
    """The host closed first (the stack is in TIME_WAIT, 1 s): the guest reusing its port at once gets a
    new connection (RFC 6191-style: a SYN above the old sequence space), not a RST."""
    net = StackNet()
    a = net.guest()
    g, fid = open_tcp(net, a)
    assert net.stack.tcp_fill(fid, reader_of(b""), net.now) == 0  # host EOF: our FIN first
    fin = only(g.mine(net.frames()))
    assert "F" in fin.flags
    g.rcv_nxt += 1
    g.send("FA")
    # TIME_WAIT gives the host socket back at once; the engine alone lingers for a retransmitted FIN
    assert net.actions() == [(A.TCP_SHUTDOWN, fid), (A.TCP_CLOSE, fid, False)]
    net.frames()
    flow = next(iter(net.stack.tcp.by_key.values()))
    assert flow.conn.state == "TIME_WAIT" and net.stack.guests.by_port[a.port].tcp == 0
    again = GuestTcp(net, a, HOST, 8080, sport=g.sport, isn=g.seq + 100_000)
    again.syn()
    actions = net.actions()
    assert kinds(actions) == ["TCP_CONNECT"]
    new_fid = next(x[1] for x in actions if x[0] == A.TCP_CONNECT)
    assert new_fid != fid
    net.stack.tcp_connected(new_fid, net.now)
    again.take_synack([f for f in net.frames() if "S" in f[TCP].flags])
    assert net.stack.faults.counts == {}


def test_toward_a_port_with_offloads_data_carries_only_the_pseudo_header_sum() -> None:
    """NEEDS_CSUM: the TAP's kernel finishes the checksum, so the stack does not sum 64 KiB payloads; the
    frames a port without offloads gets are completed in software (and check out with scapy)."""
    net = StackNet()
    a = net.guest(offload_ok=True)
    _g, fid = open_tcp(net, a)
    assert net.stack.tcp_fill(fid, reader_of(b"x" * 3000), net.now) == 3000
    raw = [(f, off) for f, off in net.raw_frames() if len(f) > 54]
    assert raw
    for frame, off in raw:
        assert off is not None and off.needs_csum and (off.csum_start, off.csum_offset) == (34, 16)
        pseudo = pseudo_header_sum_v4(bytes(frame[26:30]), bytes(frame[30:34]), 6, len(frame) - 34)
        assert int.from_bytes(frame[50:52], "big") == pseudo % 0xFFFF
        for piece in wire_frames(frame, off):
            check_frame(piece)


def test_a_syn_with_a_partial_checksum_from_a_tap_opens_a_connection() -> None:
    """A namespace's kernel sends its SYN with NEEDS_CSUM (only the pseudo-header summed): the stack must
    not verify that checksum (vmlan ns found every connection refused)."""
    net = StackNet()
    a = net.guest(offload_ok=True)
    syn = IP(src=GUEST, dst=HOST, flags="DF") / TCP(sport=45000, dport=8080, flags="S", seq=1,
                                                    options=[("MSS", 1460)])
    raw = bytearray(bytes(Ether(src=a.mac, dst=HOST_MAC) / syn))
    pseudo = pseudo_header_sum_v4(bytes(raw[26:30]), bytes(raw[30:34]), 6, len(raw) - 34)
    raw[50:52] = (pseudo % 0xFFFF).to_bytes(2, "big")
    net.stack.receive_frame(bytes(raw), a.port, Offload(FLAG_NEEDS_CSUM, 0, 0, 0, 34, 16), net.now)
    assert kinds(net.actions()) == ["TCP_CONNECT"]
    assert net.stack.counters.bad_l4 == 0

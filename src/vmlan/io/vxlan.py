"""``-netdev vxlan``: one hub port whose frames travel in RFC 7348 VXLAN over UDP, to and from Linux vxlan devices.

Receiving: a UDP socket bound to ``port`` (on ``local=`` for unicast; on the wildcard for a group, so that
the group's datagrams and the unicast ones a kernel VTEP sends once it has learnt us both arrive, with
IP_MULTICAST_ALL off so that only our own group's do). A datagram is accepted when it holds a whole
Ethernet header after the 8-byte VXLAN header, has the I flag and carries our VNI; anything else is
dropped and counted by reason. Like the kernel's vxlan (without ``nolearning`` off), any sender reaching
the port is heard: VXLAN has no authentication, so keep the port firewalled to the VTEPs you mean.

Sending: every frame goes to ``remote`` (unicast) or to the group: vmlan learns no forwarding table. The
UDP source port is drawn per inner flow from ``srcport`` (:func:`vmlan.wire.vxlan.flow_hash`), as the
kernel's ``udp_flow_src_port`` does, so ECMP routers spread flows. A UDP socket has one source port, so
frames leave through a raw IPPROTO_UDP socket that writes its own UDP header (the kernel adds the IP
header; for IPv4 the UDP checksum is 0, as RFC 7348 recommends; for IPv6 the kernel computes it,
IPV6_CHECKSUM). A socket filter keeps the raw socket from queueing copies of every UDP datagram the host
receives. Without CAP_NET_RAW the frames leave from the receiving socket, from ``port``: no ECMP spread.

IPv4 datagrams leave without DF (the kernel's vxlan default): a full 1514-byte frame makes a 1550-byte
packet, fragmented on a 1500-byte underlay. Give the LAN's members an MTU of 1450 (1430 over IPv6) to
avoid that, as the kernel does for its vxlan devices.

Frames whose inner checksum the sending kernel left unfinished (a veth underlay; see
:func:`vmlan.wire.vxlan.unfinished_checksum`) enter the hub marked NEEDS_CSUM: a TAP with vnet headers
passes them on as they are, every other port gets them finished; TCP segments longer than a frame
(:func:`vmlan.wire.vxlan.tcp_super_frame`) are marked for segmentation likewise.

TCP super-frames from the hub (a TAP's TSO, the user stack) are cut into segments here, and when the
segments fit the underlay's MTU they leave in one UDP_SEGMENT send (UDP GSO: the kernel cuts it into
equal datagrams) from a UDP socket bound to the flow's source port, kept for the flow's next super-frame:
one system call for some 40 frames. Those datagrams carry a UDP checksum (the kernel refuses UDP GSO
without one; RFC 7348 allows it, and the kernel's vxlan sends one by default too). A port that cannot
be bound, or an underlay MTU the segments do not fit (EINVAL: give the LAN's members an MTU of 1450),
sends them one by one through the raw socket.

Hot path as in :mod:`vmlan.io.dgram`: add_reader and a bounded recv_into loop into the thread's shared
receive area; sends are one sendmsg of (16-byte header, frame) with no copy; a full kernel buffer parks
frames in a bounded queue drained on writability, beyond which they are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import struct
from collections import OrderedDict

from vmlan.config.vxlan import VxlanNetdev
from vmlan.faults import Faults
from vmlan.io.dgram import READS_PER_TURN, SO_ATTACH_FILTER, OutQueue
from vmlan.io.errors import LinkError
from vmlan.io.sockopt import BUDGET, LINK_BUFFER, LinkBudget, grow_buffers, new_faults
from vmlan.io.stream import NET_BUFSIZE, RX_AREA, RX_BYTES
from vmlan.lan import Port
from vmlan.wire import BytesLike, WireError
from vmlan.wire.gso import software_offload
from vmlan.wire.udp import UDP_HLEN
from vmlan.wire.vnet import FLAG_NEEDS_CSUM, Offload
from vmlan.wire.vxlan import (
    FLAG_I,
    VXLAN_HLEN,
    flow_hash,
    header_bytes,
    source_port,
    tcp_super_frame,
    unfinished_checksum,
)

log = logging.getLogger("vmlan")

ETH_HLEN = 14
MAX_DATAGRAM = 0xFFFF - UDP_HLEN - 40  # the largest UDP payload over IPv6 (IPv4's is 20 bytes more)
_UDP_VXLAN = struct.Struct("!HHHH8s")  # the UDP header the raw socket sends, then the VXLAN header
_BPF_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # ret #0
IP_MULTICAST_ALL = 49  # linux/in.h (the socket module lacks it, and the next two)
IP_MTU_DISCOVER = 10
IPV6_MTU_DISCOVER = 23
IP_PMTUDISC_DONT = 0
IPV6_PMTUDISC_DONT = 0
PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: the socket cuts one send into datagrams of this payload size (UDP GSO)
GSO_SOCKETS = 64  # UDP sockets kept for super-frames, one per source port in use, least recently used out
GSO_BYTES = 60000  # payload of one UDP_SEGMENT send (below 64 KiB with the headers, as the kernel requires)


def local_port_range() -> tuple[int, int]:
    """This network namespace's ephemeral ports: the kernel's vxlan draws source ports from them."""
    try:
        with open(PORT_RANGE) as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _drop_everything(sock: socket.socket) -> None:
    code = ctypes.create_string_buffer(_BPF_DROP_ALL, len(_BPF_DROP_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", 1, ctypes.addressof(code)))


class VxlanPort(Port):
    """A VXLAN netdev is a single port; see the module docstring."""

    __slots__ = (
        "_dest",
        "_faults",
        "_gso_failed",
        "_gso_socks",
        "_loop",
        "_out",
        "_raw",
        "_rsock",
        "_ssock",
        "_vxhdr",
        "cfg",
        "info",
        "max_frame",
        "rx_bad_vni",
        "rx_csum_partial",
        "rx_gso",
        "rx_long",
        "rx_no_i_flag",
        "rx_short",
        "sport_range",
        "tx_gso",
        "tx_gso_sends",
    )

    def __init__(
        self,
        cfg: VxlanNetdev,
        loop: asyncio.AbstractEventLoop,
        faults: Faults | None = None,
        budget: LinkBudget = BUDGET,
    ) -> None:
        super().__init__(cfg.id)
        self.cfg = cfg
        self._loop = loop
        self._faults = faults if faults is not None else new_faults()
        self._rsock: socket.socket | None = None
        self._ssock: socket.socket | None = None
        self._raw = False
        self._vxhdr = header_bytes(cfg.vni)
        self._dest: tuple[str, int] | tuple[str, int, int, int] = (cfg.remote, cfg.port)  # as sendmsg takes it
        self._out = OutQueue(loop, budget, self._send_queued)
        self._gso_socks: OrderedDict[int, socket.socket] = OrderedDict()
        self._gso_failed: set[int] = set()  # source ports that could not be bound, or UDP GSO refused
        self.tx_gso = 0  # super-frames sent
        self.tx_gso_sends = 0  # of their UDP_SEGMENT sends
        self.sport_range = cfg.srcport or local_port_range()
        self.max_frame = NET_BUFSIZE  # the largest inner frame accepted (as on the stream links)
        self.rx_short = 0  # datagrams shorter than a VXLAN header and an Ethernet header
        self.rx_long = 0  # inner frames longer than max_frame
        self.rx_no_i_flag = 0
        self.rx_bad_vni = 0  # well-formed, for another VNI
        self.rx_csum_partial = 0  # frames whose inner checksum the sending kernel left unfinished
        self.rx_gso = 0  # of those, TCP segments longer than a frame (TSO never done: a veth underlay)
        self.info = cfg.info

    @property
    def ports(self) -> list[Port]:
        return [self]

    @property
    def label(self) -> str:
        return f"vxlan {self.cfg.id}"

    @property
    def raw(self) -> bool:
        """True when frames leave with a per-flow source port (the raw socket), False from ``port``."""
        return self._raw

    def describe(self) -> str:
        low, high = self.sport_range
        sport = f"srcport={low}-{high}" if self._raw else f"srcport={self.cfg.port}"
        return (f"{self.info},{sport} dropped: short {self.rx_short}, long {self.rx_long},"
                f" no I flag {self.rx_no_i_flag}, other VNI {self.rx_bad_vni}; unfinished checksums"
                f" {self.rx_csum_partial}, TCP super-frames {self.rx_gso}; sent super-frames {self.tx_gso}"
                f" in {self.tx_gso_sends} sends")

    # -- opening ---------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._open()
        except OSError as exc:
            self.close()
            raise LinkError(f"-netdev vxlan,id={self.cfg.id}: {exc.strerror or exc}") from None
        assert self._rsock is not None
        self._out.sock = self._ssock
        self._loop.add_reader(self._rsock.fileno(), self._on_readable)
        how = "per-flow source ports" if self._raw else f"source port {self.cfg.port} (no CAP_NET_RAW)"
        log.info("%s: %s, %s", self.label, self.info, how)

    def _open(self) -> None:
        cfg = self.cfg
        family = socket.AF_INET6 if cfg.ipv6 else socket.AF_INET
        ifindex = socket.if_nametoindex(cfg.dev) if cfg.dev else 0
        rs = socket.socket(family, socket.SOCK_DGRAM)
        self._rsock = rs
        if cfg.multicast:  # a group may be shared by processes; a unicast port is ours alone
            rs.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if cfg.ipv6:
            rs.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if cfg.dev:
            rs.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, cfg.dev.encode())
        wildcard = "::" if cfg.ipv6 else "0.0.0.0"
        rs.bind((wildcard if cfg.multicast else cfg.local or wildcard, cfg.port))
        if cfg.multicast:
            self._join(rs, ifindex)
        rs.setblocking(False)
        grow_buffers(rs, rcv=LINK_BUFFER)
        try:
            ss = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_UDP)
        except PermissionError:
            ss = rs
        else:
            self._raw = True
            _drop_everything(ss)
            ss.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            if cfg.ipv6:
                ss.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, 6)
            if cfg.dev:
                ss.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, cfg.dev.encode())
            if cfg.local:
                ss.bind((cfg.local, 0))
            ss.setblocking(False)
        self._ssock = ss
        self._sender_options(ss, ifindex)
        port = 0 if self._raw else cfg.port  # a raw socket's "port" is its protocol: 0 keeps IPPROTO_UDP
        self._dest = (cfg.remote, port, 0, ifindex if cfg.multicast else 0) if cfg.ipv6 else (cfg.remote, port)

    def _join(self, sock: socket.socket, ifindex: int) -> None:
        cfg = self.cfg
        if cfg.ipv6:
            mreq6 = socket.inet_pton(socket.AF_INET6, cfg.remote) + struct.pack("@I", ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
            return
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        mreqn = struct.pack("@4s4si", socket.inet_aton(cfg.remote), socket.inet_aton(cfg.local or "0.0.0.0"), ifindex)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)

    def _sender_options(self, sock: socket.socket, ifindex: int) -> None:
        """TTL, fragmentation, and for a group its interface with our own datagrams kept from looping back."""
        cfg = self.cfg
        if cfg.ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT)
            if cfg.multicast:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, cfg.ttl or 1)
            elif cfg.ttl:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, cfg.ttl)
            return
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        if cfg.multicast:
            mreqn = struct.pack("@4s4si", socket.inet_aton(cfg.remote), socket.inet_aton(cfg.local or "0.0.0.0"),
                                ifindex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, cfg.ttl or 1)
        elif cfg.ttl:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, cfg.ttl)

    # -- receiving -------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        area = RX_AREA
        if area.busy:
            self._faults.record("vxlan rx area in use")
            self._receive(memoryview(bytearray(NET_BUFSIZE + VXLAN_HLEN + 1)))
            return
        area.busy = True
        try:
            self._receive(area.view)
        finally:
            area.busy = False

    def _receive(self, view: memoryview) -> None:
        sock = self._rsock
        if sock is None:
            return
        counters = self.counters
        vni = self.cfg.vni
        limit = self.max_frame + VXLAN_HLEN
        minimum = VXLAN_HLEN + ETH_HLEN
        unread = RX_BYTES
        unpack = _HEADER.unpack_from
        for _ in range(READS_PER_TURN):
            try:
                n = sock.recv_into(view, limit + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                counters.rx_dropped += 1  # ICMP errors surface here on unconnected UDP sockets
                continue
            unread -= n
            if n < minimum:
                self.rx_short += 1
                counters.rx_dropped += 1
                continue
            if n > limit:
                self.rx_long += 1
                counters.rx_dropped += 1
                continue
            word0, word1 = unpack(view)
            if not word0 >> 24 & FLAG_I:
                self.rx_no_i_flag += 1
                counters.rx_dropped += 1
            elif word1 >> 8 != vni:
                self.rx_bad_vni += 1
                counters.rx_dropped += 1
            else:
                lan = self.lan
                if lan is not None:
                    frame = view[VXLAN_HLEN:n]
                    partial = unfinished_checksum(frame)
                    offload = None
                    if partial is not None:
                        self.rx_csum_partial += 1
                        offload = self._offload(frame, partial)
                    try:
                        lan.input(self, frame, offload)
                    except Exception:  # a bug behind the LAN costs this frame, never the link
                        counters.rx_dropped += 1
                        self._faults.record("vxlan rx")
                if self._rsock is None:
                    return  # closed by what the frame caused
            if unread <= 0:
                return

    def _offload(self, frame: memoryview, partial: tuple[int, int]) -> Offload:
        start, offset = partial
        gso = tcp_super_frame(frame, start) if offset == 16 else None
        if gso is None:
            return _PARTIAL.get(partial) or Offload(FLAG_NEEDS_CSUM, csum_start=start, csum_offset=offset)
        self.rx_gso += 1
        gso_type, hdr_len, gso_size = gso
        return Offload(FLAG_NEEDS_CSUM, gso_type, hdr_len, gso_size, start, offset)

    # -- sending ---------------------------------------------------------------------------------------
    offload_ok = True  # super-frames are cut here, where one flow hash and one send serve them all

    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        sock = self._ssock
        if sock is None:
            return False
        if offload is not None and not offload.is_plain:
            return self._transmit_offloaded(frame, offload)
        return self._send(frame, self._header(frame))

    def _header(self, frame: BytesLike) -> bytes:
        if not self._raw:
            return self._vxhdr
        low, high = self.sport_range
        return _UDP_VXLAN.pack(source_port(flow_hash(frame), low, high), self.cfg.port,
                               UDP_HLEN + VXLAN_HLEN + len(frame), 0, self._vxhdr)

    def _send(self, frame: BytesLike, header: bytes) -> bool:
        sock = self._ssock
        if sock is None or len(frame) > MAX_DATAGRAM - VXLAN_HLEN:
            return False
        if self._out:
            return self._out.put(header + bytes(frame))
        try:
            sock.sendmsg((header, frame), (), 0, self._dest)
        except (BlockingIOError, InterruptedError):
            return self._out.put(header + bytes(frame))
        except OSError:
            return False  # no route, EMSGSIZE, an ICMP error from an earlier datagram: counted as a drop
        return True

    def _transmit_offloaded(self, frame: BytesLike, offload: Offload) -> bool:
        try:
            pieces = software_offload(frame, offload)
        except WireError:
            return False
        if not self._raw or len(pieces) < 2 or self._out:
            return all([self._send(piece, self._header(piece)) for piece in pieces])
        low, high = self.sport_range
        sport = source_port(flow_hash(pieces[0]), low, high)
        if self._send_gso(pieces, sport):
            return True
        sent = True
        for piece in pieces:
            header = _UDP_VXLAN.pack(sport, self.cfg.port, UDP_HLEN + VXLAN_HLEN + len(piece), 0, self._vxhdr)
            sent = self._send(piece, header) and sent
        return sent

    def _send_gso(self, pieces: list[bytes], sport: int) -> bool:
        """The pieces (equal but the last) in UDP_SEGMENT sends from ``sport``; False to send them singly."""
        size = VXLAN_HLEN + len(pieces[0])
        if sport in self._gso_failed or any(len(p) + VXLAN_HLEN != size for p in pieces[:-1]):
            return False
        sock = self._gso_socket(sport)
        if sock is None:
            return False
        per_send = max(1, GSO_BYTES // size)
        vxhdr = self._vxhdr
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        for first in range(0, len(pieces), per_send):
            chunk = pieces[first : first + per_send]
            buffers = [part for piece in chunk for part in (vxhdr, piece)]
            try:
                sock.sendmsg(buffers, cmsg if len(chunk) > 1 else [])
            except (BlockingIOError, InterruptedError):
                if first == 0:
                    return False  # all of it to the raw socket's queue
                for piece in pieces[first:]:
                    header = _UDP_VXLAN.pack(sport, self.cfg.port, UDP_HLEN + size, 0, vxhdr)
                    self._out.put(header + piece)
                return True
            except OSError as exc:
                if first == 0:
                    log.debug("%s: UDP GSO from port %d refused (%s): sending frame by frame", self.label, sport,
                              exc.strerror or exc)
                    self._gso_failed.add(sport)
                    self._drop_gso_socket(sport)
                    return False
                return True  # lost from here on, as one datagram's send error would lose it
            self.tx_gso_sends += 1
        self.tx_gso += 1
        return True

    def _gso_socket(self, sport: int) -> socket.socket | None:
        socks = self._gso_socks
        sock = socks.get(sport)
        if sock is not None:
            socks.move_to_end(sport)
            return sock
        cfg = self.cfg
        sock = socket.socket(socket.AF_INET6 if cfg.ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            _drop_everything(sock)
            if cfg.ipv6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if cfg.dev:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, cfg.dev.encode())
            ifindex = socket.if_nametoindex(cfg.dev) if cfg.dev else 0
            self._sender_options(sock, ifindex)
            sock.bind((cfg.local or ("::" if cfg.ipv6 else "0.0.0.0"), sport))
            sock.connect((*self._dest[:1], cfg.port, *self._dest[2:]))
            sock.setblocking(False)
        except OSError:
            sock.close()
            self._gso_failed.add(sport)
            return None
        socks[sport] = sock
        if len(socks) > GSO_SOCKETS:
            socks.popitem(last=False)[1].close()
        return sock

    def _drop_gso_socket(self, sport: int) -> None:
        sock = self._gso_socks.pop(sport, None)
        if sock is not None:
            sock.close()

    def _send_queued(self, datagram: bytes) -> None:
        assert self._ssock is not None
        try:
            self._ssock.sendto(datagram, self._dest)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError:
            self.counters.tx_dropped += 1

    def close(self) -> None:
        self._out.close()
        for gso_sock in self._gso_socks.values():
            gso_sock.close()
        self._gso_socks.clear()
        for sock in {self._rsock, self._ssock}:
            if sock is None:
                continue
            if sock is self._rsock:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._rsock = self._ssock = None
        if self.lan is not None:
            self.lan.detach(self)


_HEADER = struct.Struct("!II")
# The Offloads of the usual layouts (IPv4 without options, IPv6 without extension headers), made once.
_PARTIAL = {(start, offset): Offload(FLAG_NEEDS_CSUM, csum_start=start, csum_offset=offset)
            for start in (34, 54) for offset in (6, 16)}

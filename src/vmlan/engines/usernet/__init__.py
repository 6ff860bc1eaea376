"""The user-mode network stack (QEMU's ``-netdev user``) as a sans-IO engine: see stack.py."""

from vmlan.engines.usernet.config import GuestForward, HostForward, Limits, StackConfig
from vmlan.engines.usernet.core import LOOPBACK, StackCounters, virtual_mac
from vmlan.engines.usernet.guests import Guest
from vmlan.engines.usernet.icmp import PingFlow
from vmlan.engines.usernet.stack import UserStack
from vmlan.engines.usernet.tcpnat import TcpFlow
from vmlan.engines.usernet.udp import UdpFlow, UdpFwdSession

__all__ = [
    "LOOPBACK",
    "Guest",
    "GuestForward",
    "HostForward",
    "Limits",
    "PingFlow",
    "StackConfig",
    "StackCounters",
    "TcpFlow",
    "UdpFlow",
    "UdpFwdSession",
    "UserStack",
    "virtual_mac",
]

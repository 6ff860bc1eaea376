import asyncio
import socket
import struct
import threading

import pytest

from vmlan.config.cmdline import parse_run_args
from vmlan.io.runtime import Runtime

HDR = struct.Struct(">I")


class RunningLan:
    """A vmlan Runtime on its own event loop thread, driven by the test through real sockets."""

    def __init__(self, args):
        self.cfg = parse_run_args(args)
        self.loop = asyncio.new_event_loop()
        self.runtime = Runtime(self.cfg, self.loop)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def start(self):
        asyncio.run_coroutine_threadsafe(self.runtime.start(), self.loop).result(10)
        return self

    def call(self, fn, *args):
        async def wrapper():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def netdev(self, ident):
        return next(nd for nd in self.runtime.netdevs if nd.cfg.id == ident)

    def stop(self):
        if self.loop.is_closed():
            return
        self.call(self.runtime.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def lan():
    started = []

    def make(*args):
        running = RunningLan(list(args)).start()
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eth(dst, src, payload=b"", size=60):
    body = dst + src + b"\x08\x00" + payload
    return body + b"\x00" * max(0, size - len(body))


def send_framed(sock, frame):
    sock.sendall(HDR.pack(len(frame)) + frame)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def recv_framed(sock):
    (size,) = HDR.unpack(recv_exact(sock, 4))
    return recv_exact(sock, size)


def wait_for(predicate, timeout=10, what="condition"):
    """Poll ``predicate`` until it holds (tests wait for conditions, they never sleep and hope)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.005)


def unix_client(path, timeout=5):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.settimeout(timeout)
    return s

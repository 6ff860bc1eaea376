"""Event loop selection (uvloop when it is installed: several times faster socket callbacks), and
:func:`write_report`, how a handler on the loop writes a long report to stderr."""

from __future__ import annotations

import asyncio
import os
import sys


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def write_report(text: str) -> None:
    """Write ``text`` and a newline to stderr, all of it, exactly once (SIGUSR1's dumps).

    Not ``sys.stderr.write``: when the reader of a pipe on stderr is slower than the report (a dump of
    1000 peers is ~150 KB, twice the pipe's buffer) the write blocks, and a signal arriving meanwhile
    (the next SIGUSR1) made CPython's text layer drop the rest of the report: measured, the first of two
    quick dumps ended mid-line and the second began on that line. Here the log lines already buffered go
    first, then the report's bytes by ``os.write`` (retried on EINTR, PEP 475) until every byte is out.
    """
    sys.stderr.flush()
    data = memoryview((text + "\n").encode("utf-8", "backslashreplace"))
    fd = sys.stderr.fileno()
    while data:
        data = data[os.write(fd, data) :]

"""``vmlan run -netdev tap|bridge`` as a process: exit statuses, one-line errors, an inherited fd=, and
frames through the runtime (info network on SIGUSR1). Every TAP lives in a namespace of the test's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns import Namespaces, sh, tag

BLOB = str(Path(__file__).resolve().parents[1] / "blob.py")


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    yield ns
    ns.close()


def vmlan(netns: str, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "vmlan", "run", *args],
                          capture_output=True, text=True, timeout=60, **kw)


def test_failing_script_exits_1_with_one_line(tmp_path, namespaces):
    hns = namespaces.add("h")
    bad = tmp_path / "vmlan-ifup"
    bad.write_text("#!/bin/sh\nexit 1\n")
    bad.chmod(0o755)
    out = vmlan(hns, "-netdev", f"tap,id=t0,script={bad}")
    assert (out.returncode, out.stderr) == (1, f"vmlan: -netdev tap,id=t0: network script {bad} failed with status 1\n")
    assert "tap" not in sh(f"ip -n {hns} -o link show")


@pytest.mark.parametrize(("arg", "message"), [
    ("tap,id=t0,fd=3,ifname=x", "vmlan: -netdev tap,id=t0,fd=3,ifname=x: ifname=, script=, downscript=, vnet_hdr=, "
     "helper=, queues=, fds=, and vhostfds= are invalid with fd=\n"),
    ("tap,id=t0,vhost=on", "vmlan: -netdev tap,id=t0,vhost=on: Parameter 'vhost' of netdev type 'tap' is not "
     "supported by vmlan (got 'on')\n"),
])
def test_bad_options_exit_2(arg, message, namespaces):
    out = vmlan(namespaces.add("h"), "-netdev", arg)
    assert (out.returncode, out.stderr) == (2, message)


def test_bridge_without_an_acl_file_is_refused(namespaces):
    assert not os.path.exists("/etc/vmlan/bridge.conf")
    out = vmlan(namespaces.add("h"), "-netdev", "bridge,id=b0")
    assert (out.returncode, out.stderr) == (
        1, "vmlan: -netdev bridge,id=b0: failed to parse default acl file `/etc/vmlan/bridge.conf': "
           "No such file or directory\n")


def test_inherited_fd_and_a_script_tap_carry_frames(tmp_path, namespaces):
    """fd=: a wrapper opens a persistent TAP and execs vmlan with it; a second, script-configured TAP
    on the same hub leads to another namespace; A pings B across vmlan (run by the CLI, on uvloop)."""
    a, b = namespaces.add("a"), namespaces.add("b")
    name = f"pt{tag()}"
    sh(f"ip -n {a} tuntap add dev {name} mode tap vnet_hdr")  # persistent; the wrapper opens it
    up = tmp_path / "up"
    up.write_text("#!/bin/sh\n" + textwrap.dedent(f"""\
        ip link set "$1" netns {b} && ip -n {b} addr add 10.82.0.2/24 dev "$1" && ip -n {b} link set "$1" up
        """))
    up.chmod(0o755)
    wrapper = textwrap.dedent(f"""\
        import os, sys
        from vmlan.io.tap import open_tap
        dev = open_tap({name!r}, True)
        os.set_inheritable(dev.fd, True)
        os.execv(sys.executable, [sys.executable, "-m", "vmlan", "run", "-netdev", f"tap,id=inh,fd={{dev.fd}}",
                 "-netdev", "tap,id=scr,script={up},downscript=no"])
        """)
    proc = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", wrapper], stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        while not any("ready:" in line for line in lines):
            line = proc.stderr.readline()
            assert line, "vmlan exited:\n" + "".join(lines)
            lines.append(line)
        assert any("tap inh: fd=" in line and "vnet_hdr=on,offload=csum+tso4+tso6" in line for line in lines), lines
        sh(f"ip -n {a} addr add 10.82.0.1/24 dev {name}", f"ip -n {a} link set {name} up")
        out = subprocess.run(["ip", "netns", "exec", a, sys.executable, BLOB, "ping", "10.82.0.2"],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "3 packets received", out.stderr
        proc.send_signal(signal.SIGUSR1)
        while not any(" \\ scr: type=tap," in line for line in lines):
            lines.append(proc.stderr.readline())
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(20) == 0 and "Traceback" not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines)
    assert " \\ inh: type=tap,fd=" in text and "rx " in text

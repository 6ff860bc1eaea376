"""``tftp=DIR`` of vmlan's user stack against real TFTP clients, through the stack: tftp-hpa (``tftp``)
and atftp run in a network namespace whose tap0 is on the stack (``vmlan ns --attach``), and fetch
files from the gateway 10.0.2.2, port 69, like a guest would.

Files of 0, 511, 512, 513 bytes and 20 MB, compared by SHA-256 with the originals: atftp with each
blksize (none: RFC 1350's 512, then 1428, 1468, 8192 and 65464) and windowsize (none, 4, 16), plus
RFC 2349's tsize and timeout; tftp-hpa 5.2 (which sends no option: 512-byte lockstep) in octet and
netascii mode. The negotiated options are read back from atftp's trace of the OACK. tap0's MTU is
1500 for the blocks that fit it (and 65464, whose datagrams the stack fragments), 65520 for 8192 and
65464 whole. Then what must fail: ``../x``, ``/etc/passwd``, symlinks in DIR that lead out of it
(absolute, relative, through a directory) and writes, each refused with the TFTP error the client
prints, DIR unchanged; a symlink that stays in DIR is served.

Two ``vmlan ns`` stacks (one per MTU) serve the whole module, each attached to a ``sleep`` in a
namespace of its own; every client is ``nsenter``'d into it. Root is needed (namespaces, nsenter).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
GATEWAY = "10.0.2.2"
MB = 1024 * 1024
SIZES = {"empty": 0, "f511": 511, "f512": 512, "f513": 513, "f20m": 20 * MB}
SMALL = ("empty", "f511", "f512", "f513")
TIMEOUT_OPTION = 3  # RFC 2349 timeout asked for (and expected back) whenever options are sent
MAX_WINDOW_BYTES = 128 * 1024  # TftpConfig.max_window_bytes
MAX_WINDOWSIZE = 64  # TftpConfig.max_windowsize
# (tap0 MTU, blksize asked for): None is no blksize option (RFC 1350's 512)
BLOCKS = [(1500, None), (1500, 1428), (1500, 1468), (1500, 65464), (65520, 8192), (65520, 65464)]
WINDOWS = [None, 4, 16]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MB):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Tree:
    """DIR (``root``), the file outside it that symlinks try to reach, and what DIR held at the start."""

    root: Path
    secret: Path
    digests: dict[str, str]
    listing: list[str]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    base = tmp_path_factory.mktemp("tftp")
    root = base / "root"
    root.mkdir()
    digests = {}
    for name, size in SIZES.items():
        path = root / name
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, MB)
                f.write(os.urandom(n))
                left -= n
        digests[name] = sha256(path)
    secret = base / "secret"
    secret.write_text("not for guests\n")
    (root / "inside").symlink_to("f513")  # stays in DIR: served
    (root / "abs").symlink_to("/etc/passwd")
    (root / "up").symlink_to("../secret")
    (root / "etcdir").symlink_to("/etc")
    return Tree(root, secret, digests, sorted(os.listdir(root)))


@dataclass
class NsStack:
    """``vmlan ns --attach`` on a ``sleep`` in a namespace of its own; clients are nsenter'd into it."""

    mtu: int
    target: subprocess.Popen[bytes]
    vmlan: subprocess.Popen[str]
    err: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.vmlan.stderr is not None
        for line in self.vmlan.stderr:
            with self.cond:
                self.err.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 30) -> None:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(rx.search(line) for line in self.err):
                left = deadline - time.monotonic()
                if left <= 0 or self.vmlan.poll() is not None:
                    raise AssertionError(f"vmlan ns never logged {pattern!r}:\n" + "\n".join(self.err))
                self.cond.wait(min(left, 0.2))

    def run(self, *argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A command in the namespace (stdout and stderr merged, as a user reads them)."""
        return subprocess.run(["nsenter", "-t", str(self.target.pid), "-n", *argv], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)

    def popen(self, *argv: str, cwd: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(["nsenter", "-t", str(self.target.pid), "-n", *argv], cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _start_stack(tree: Tree, mtu: int) -> NsStack:
    if os.geteuid() != 0:
        pytest.fail("these tests create network namespaces and nsenter them: run them as root (CI does)",
                    pytrace=False)
    for tool in ("atftp", "tftp", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found (apt-get install atftp tftp-hpa util-linux)", pytrace=False)
    prefix = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
    target = subprocess.Popen([*prefix, "unshare", "-n", "sleep", "infinity"])
    ours = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + 20
    while True:
        try:
            if (os.stat(f"/proc/{target.pid}/ns/net").st_ino != ours
                    and os.readlink(f"/proc/{target.pid}/exe").endswith("sleep")):
                break
        except OSError:
            pass
        if time.monotonic() > deadline or target.poll() is not None:
            target.kill()
            raise AssertionError("unshare -n sleep did not get a namespace of its own")
        time.sleep(0.02)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    vmlan = subprocess.Popen([*prefix, sys.executable, "-m", "vmlan", "ns", "-v", "--mtu", str(mtu), "-netdev",
                              f"user,tftp={tree.root}", "--attach", str(target.pid)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env)
    stack = NsStack(mtu, target, vmlan)
    threading.Thread(target=stack.read, daemon=True).start()
    stack.wait_line(rf"ns: attached to process {target.pid}: tap0 10\.0\.2\.100/24 mtu {mtu}")
    return stack


def _stop_stack(stack: NsStack) -> None:
    """The target's exit ends vmlan ns: status 0, no traceback."""
    stack.target.send_signal(signal.SIGKILL)
    stack.target.wait(10)
    try:
        code = stack.vmlan.wait(20)
    except subprocess.TimeoutExpired:
        stack.vmlan.kill()
        stack.vmlan.wait()
        raise AssertionError("vmlan ns did not end with its target:\n" + "\n".join(stack.err)) from None
    text = "\n".join(stack.err)
    assert code == 0 and "Traceback" not in text, text


@pytest.fixture(scope="module")
def stacks(tree: Tree) -> Iterator[dict[int, NsStack]]:
    """MTU -> its stack, started on first use."""
    started: dict[int, NsStack] = {}

    class Lazy(dict[int, NsStack]):
        def __missing__(self, mtu: int) -> NsStack:
            started[mtu] = self[mtu] = _start_stack(tree, mtu)
            return started[mtu]

    yield Lazy()
    for stack in started.values():
        _stop_stack(stack)
    assert sorted(os.listdir(tree.root)) == tree.listing


# -- the clients ---------------------------------------------------------------------------------------------
def atftp_argv(name: str, local: str, blksize: int | None, windowsize: int | None, *, trace: bool = False,
               put: bool = False) -> list[str]:
    argv = ["atftp"]
    if blksize is not None or windowsize is not None:
        argv += ["--option", "tsize", "--option", f"timeout {TIMEOUT_OPTION}"]
        if blksize is not None:
            argv += ["--option", f"blksize {blksize}"]
        if windowsize is not None:
            argv += ["--option", f"windowsize {windowsize}"]
    if trace:
        argv.append("--trace")
    return [*argv, "--put" if put else "--get", "-r", name, "-l", local, GATEWAY]


def oack_of(output: str) -> dict[str, str] | None:
    """The options of the OACK in an atftp --trace (``received OACK <tsize: 513, blksize: 1468, \\b\\b>``)."""
    m = re.search(r"received OACK <(.*)>", output)
    if m is None:
        return None
    return dict(re.findall(r"([A-Za-z]+): ([^,\s]*)", m.group(1)))


def tftp_hpa_argv(command: str, mode: str = "octet") -> list[str]:
    return ["tftp", "-v", "-m", mode, GATEWAY, "-c", *command.split()]


# -- fetches -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("windowsize", WINDOWS, ids=lambda w: f"window{w or '-none'}")
@pytest.mark.parametrize(("mtu", "blksize"), BLOCKS, ids=[f"mtu{m}-blk{b or '-default'}" for m, b in BLOCKS])
def test_atftp_fetches_every_size_with_matching_checksums(stacks: dict[int, NsStack], tree: Tree, tmp_path: Path,
                                                          mtu: int, blksize: int | None,
                                                          windowsize: int | None) -> None:
    stack = stacks[mtu]
    for name in SIZES:
        local = tmp_path / name
        start = time.monotonic()
        done = stack.run(*atftp_argv(name, str(local), blksize, windowsize, trace=name in SMALL), cwd=tmp_path)
        elapsed = time.monotonic() - start
        assert done.returncode == 0, f"atftp {name}: {done.stdout[-3000:]}"
        assert sha256(local) == tree.digests[name], f"{name}: checksum differs"
        if name in SMALL:
            oack = oack_of(done.stdout)
            if blksize is None and windowsize is None:
                assert oack is None, done.stdout  # no option asked: RFC 1350, DATA 1 at once
            else:
                expected = {"tsize": str(SIZES[name]), "timeout": str(TIMEOUT_OPTION)}
                if blksize is not None:
                    expected["blksize"] = str(blksize)
                if windowsize is not None:
                    expected["windowsize"] = str(min(windowsize, MAX_WINDOWSIZE,
                                                     MAX_WINDOW_BYTES // (blksize or 512)))
                assert oack == expected, done.stdout
        else:
            print(f"mtu {mtu} blksize {blksize or 512} windowsize {windowsize or 1}: "
                  f"{SIZES[name] / MB / elapsed:.1f} MB/s")
        local.unlink()


@pytest.mark.parametrize("mode", ["octet", "netascii"])
def test_tftp_hpa_fetches_every_size_with_matching_checksums(stacks: dict[int, NsStack], tree: Tree,
                                                             tmp_path: Path, mode: str) -> None:
    """tftp-hpa sends no options: 512-byte lockstep. netascii is converted both ways (LF -> CR LF,
    CR -> CR NUL by the server, back by the client), so any bytes come back as they were."""
    stack = stacks[1500]
    for name in SIZES:
        local = tmp_path / name
        done = stack.run(*tftp_hpa_argv(f"get {name} {local}", mode), cwd=tmp_path)
        assert done.returncode == 0 and "Error" not in done.stdout, done.stdout
        assert re.search(rf"getting from {re.escape(GATEWAY)}:{name} to .* \[{mode}\]", done.stdout), done.stdout
        assert sha256(local) == tree.digests[name], f"{name} ({mode}): checksum differs"
        local.unlink()


def test_concurrent_fetches_each_get_their_own_transfer(stacks: dict[int, NsStack], tree: Tree,
                                                        tmp_path: Path) -> None:
    """Four atftp and two tftp-hpa clients at once (each from its own port, all to port 69)."""
    stack = stacks[1500]
    procs = []
    for i in range(4):
        procs.append((f"a{i}", stack.popen(*atftp_argv("f20m", f"a{i}", 1468, 4), cwd=tmp_path)))
    for i in range(2):
        procs.append((f"h{i}", stack.popen(*tftp_hpa_argv(f"get f20m h{i}"), cwd=tmp_path)))
    for local, proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "Error" not in out, f"{local}: {out}"
        assert sha256(tmp_path / local) == tree.digests["f20m"], f"{local}: checksum differs"


# -- refusals ------------------------------------------------------------------------------------------------
# (name asked for, the error the server must send)
REFUSED = [
    ("../secret", 2, "Access violation: '..' in the file name"),
    ("../../../../etc/passwd", 2, "Access violation: '..' in the file name"),
    ("/etc/passwd", 1, "File not found"),  # a leading / is DIR's root: DIR/etc/passwd
    ("abs", 2, "Access violation"),  # -> /etc/passwd
    ("up", 2, "Access violation"),  # -> ../secret
    ("etcdir/passwd", 2, "Access violation"),  # through etcdir -> /etc
    ("missing", 1, "File not found"),
]


@pytest.mark.parametrize("client", ["atftp", "tftp-hpa"])
def test_names_out_of_dir_and_writes_are_refused_with_a_tftp_error(stacks: dict[int, NsStack], tree: Tree,
                                                                   tmp_path: Path, client: str) -> None:
    stack = stacks[1500]
    secrets = {tree.secret.read_bytes(), Path("/etc/passwd").read_bytes()}
    for i, (name, code, message) in enumerate(REFUSED):
        local = tmp_path / f"out{i}"
        if client == "atftp":
            done = stack.run(*atftp_argv(name, str(local), 1468, None), cwd=tmp_path)
            assert done.returncode != 0, done.stdout
            assert f"tftp: error received from server <{message}>" in done.stdout, (name, done.stdout)
        else:
            done = stack.run(*tftp_hpa_argv(f"get {name} {local}"), cwd=tmp_path)
            assert f"Error code {code}: {message}\n" in done.stdout, (name, done.stdout)  # tftp-hpa exits 0 anyway
        if local.exists():
            assert local.read_bytes() not in secrets and local.stat().st_size == 0, name
    # the control: a symlink that stays in DIR is served
    done = stack.run(*(atftp_argv("inside", "in", None, None) if client == "atftp"
                       else tftp_hpa_argv("get inside in")), cwd=tmp_path)
    assert done.returncode == 0 and sha256(tmp_path / "in") == tree.digests["f513"], done.stdout
    # writes: a new file, and one over an existing file
    (tmp_path / "upload").write_bytes(b"from the guest\n")
    for remote in ("newfile", "f513"):
        if client == "atftp":
            done = stack.run(*atftp_argv(remote, "upload", None, None, put=True), cwd=tmp_path)
            assert done.returncode != 0, done.stdout
            assert "tftp: error received from server <Access violation: read-only server>" in done.stdout, done.stdout
        else:
            done = stack.run(*tftp_hpa_argv(f"put upload {remote}"), cwd=tmp_path)
            assert "Error code 2: Access violation: read-only server\n" in done.stdout, done.stdout
    assert sorted(os.listdir(tree.root)) == tree.listing
    assert sha256(tree.root / "f513") == tree.digests["f513"]

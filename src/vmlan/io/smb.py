"""QEMU's ``smb=DIR``: a private Samba server for one user-mode stack, one smbd per guest connection.

QEMU (net/slirp.c, slirp_smb) writes an smb.conf into a private temporary directory and has libslirp run
``smbd -l DIR -s CONF`` for every guest connection to smbserver:139/445 (misc.c, fork_exec): the child gets
one end of a loopback TCP connection as its standard streams, the stack relays the guest's connection to
the other end. :class:`SmbServer` is that host side for vmlan's stack: :meth:`SmbServer.connect` returns
the socket to relay to. What Debian 12's samba 4.17 needs, found by trying it:

* Inetd mode is plain ``smbd --configfile=CONF`` with a TCP socket on fd 0: it serves exactly that
  connection and exits when it closes. ``-D`` must not be given (smbd becomes a listening daemon and drops
  the connection); ``-F``, ``-i`` and ``--no-process-group`` change nothing here. stdout and stderr go to
  a log file, not the socket (libslirp gives it the socket for all three): nothing smbd prints can reach
  the guest. On a unix socketpair smbd stops at "get_remote_hostname failed", hence loopback TCP.
* On exit an inetd-mode smbd sends SIGTERM to its whole process group: each one gets its own session
  (libslirp calls setsid too), or it would kill vmlan. Its helpers (smbd-notifyd, smbd-cleanupd) are in
  that group.
* Listing the shares (srvsvc) makes smbd start samba-dcerpcd and its rpcd_* workers: their own session,
  outliving the smbd that started them by up to a minute (they exit when idle). They carry our
  configuration file's path on their command line, which is how :meth:`SmbServer.close` finds them.
* ``--log-basename`` (QEMU's ``-l``) keeps the early log of smbd and samba-dcerpcd in our directory;
  ``logging = file`` keeps them off syslog. One leak remains, samba's own: run as root, the rpcd_*
  ``--list-interfaces`` probes create empty /var/log/samba/log.rpcd_* files (they are not given the log
  base name).
* The lock, state and cache directories must be 0755 (testparm warns otherwise): they are subdirectories
  of our 0700 directory.

Whose files: like QEMU, the share belongs to the user running vmlan (its effective uid; ``force user``),
root included: a guest of a stack run as root reads and writes DIR as root. :class:`SmbUser` lets a caller
choose another user when vmlan runs as root. Guests log in as anybody (``map to guest = Bad User``: with
an empty user database every name is unknown, so every login becomes the guest, then the share's user).
Run by samba's guest account itself (``nobody``), the share is read-only: samba 4.17 maps that user's
files to the Guest SID and refuses writes (QEMU has the same limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from vmlan.io.errors import LinkError

log = logging.getLogger("vmlan")

SMBD_SEARCH = ("/usr/sbin", "/sbin")  # searched after $PATH: Debian puts smbd in /usr/sbin
SMBD_MISSING = "install the Debian package samba"
MAX_PROCESSES = 16  # concurrent smbd processes (guest connections) of one server
SPAWN_RATE = 10.0  # smbd started per second, sustained (a burst of MAX_PROCESSES): each costs ~60 ms of CPU
MAX_WORKDIR = 80  # samba's unix sockets live below it: sun_path has 108 bytes
PAIR_TIMEOUT = 1.0  # the loopback pair is set up in microseconds; this bounds a local process's interference
STOP_TIMEOUT = 2.0  # SIGTERM, then SIGKILL after this long
SHARE = "qemu"  # QEMU's share name: guests mount \\10.0.2.4\qemu


class SmbError(LinkError):
    """The SMB server cannot start, or cannot take one more connection; one line. ``errno`` is what the
    stack reports to the guest's connection (ECONNREFUSED for the cap)."""

    def __init__(self, message: str, err: int = errno.ECONNREFUSED) -> None:
        super().__init__(message)
        self.errno = err


@dataclass(frozen=True, slots=True)
class SmbUser:
    """The user the share's files belong to (samba's ``force user``)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def current(cls) -> SmbUser:
        """The user running vmlan, by effective uid (QEMU: getpwuid(geteuid()))."""
        uid = os.geteuid()
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            raise SmbError(f"smb: uid {uid} has no user name (samba's force user needs one)") from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    @classmethod
    def named(cls, name: str) -> SmbUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SmbError(f"smb: no such user {name!r}") from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)


class SmbServer:
    """One stack's SMB server: a private samba configuration and one smbd per guest connection.

    ``start()`` checks smbd and DIR and writes the configuration (one line of SmbError when it cannot);
    ``connect()`` returns a connected, non-blocking loopback socket with a fresh smbd at its other end;
    ``close()`` stops every samba process of this server and removes its directory. With ``loop``, an
    smbd is reaped as soon as it exits (a pidfd reader); without, at the next ``connect()``/``reap()``.
    Not thread-safe: call it from the loop's thread.
    """

    def __init__(self, directory: str, *, user: SmbUser | None = None, smbd: str | None = None,
                 max_processes: int = MAX_PROCESSES, spawn_rate: float = SPAWN_RATE,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.directory = os.path.abspath(directory)
        self.user = user
        self.max_processes = max_processes
        self.spawn_rate = spawn_rate
        self._tokens = float(max_processes)  # token bucket for spawn_rate
        self._tokens_at = time.monotonic()
        self._smbd_arg = smbd
        self._loop = loop
        self.smbd: str | None = None
        self.workdir: str | None = None
        self.conf_path: str | None = None
        self._log_fd = -1
        self._procs: dict[int, tuple[subprocess.Popen[bytes], int]] = {}  # pid -> (process, pidfd or -1)
        self._closed = False
        self.spawned = 0  # smbd processes started
        self.refused = 0  # connections refused by a cap (processes or spawn rate)
        self.failed = 0  # connections that could not be set up (sockets, fork)
        self.exited_badly = 0  # smbd processes that ended other than by the usual SIGTERM or exit 0

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._closed or self.workdir is not None:
            raise SmbError("smb: server already started")
        self.smbd = find_smbd(self._smbd_arg)
        _check_directory(self.directory)
        user = self.user if self.user is not None else SmbUser.current()
        if os.geteuid() != 0 and user.uid != os.geteuid():
            raise SmbError(f"smb: only root can share a directory as user {user.name}")
        self.user = user
        workdir = tempfile.mkdtemp(prefix="vmlan-smb.")  # mode 0700
        try:
            _check_conf_value(f"smb: temporary directory {workdir}", workdir)
            if len(workdir) > MAX_WORKDIR:
                raise SmbError(f"smb: temporary directory {workdir} is too long for samba's unix sockets "
                               f"(at most {MAX_WORKDIR} characters: set TMPDIR)")
            for sub, mode in (("private", 0o700), ("lock", 0o755), ("state", 0o755), ("cache", 0o755),
                              ("run", 0o755)):
                os.mkdir(os.path.join(workdir, sub), mode)
                os.chmod(os.path.join(workdir, sub), mode)  # whatever the umask
            conf = os.path.join(workdir, "smb.conf")
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(smb_conf(workdir, self.directory, user.name))
            self._log_fd = os.open(os.path.join(workdir, "smbd.stderr"),
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        self.workdir = workdir
        self.conf_path = conf

    def close(self) -> None:
        """Stop every samba process of this server (smbd, its helpers, samba-dcerpcd), remove the directory.

        Blocks until they are gone: usually a few milliseconds, at most about 2 * STOP_TIMEOUT.
        """
        if self._closed:
            return
        self._closed = True
        if self.workdir is None:
            return
        self._stop_all(signal.SIGTERM)
        if not self._wait_gone(STOP_TIMEOUT):
            self._stop_all(signal.SIGKILL)
            if not self._wait_gone(STOP_TIMEOUT):
                log.warning("smb: samba processes survived SIGKILL: %s", self._strays())
        for pid in list(self._procs):
            self._forget(pid)
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def __enter__(self) -> SmbServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def active(self) -> int:
        """smbd processes not yet reaped (each serves one guest connection)."""
        return len(self._procs)

    # -- connections -------------------------------------------------------------------------------------
    def connect(self) -> socket.socket:
        """A new guest connection: a non-blocking socket whose peer is a fresh smbd in inetd mode.

        Runs on the event loop and returns in about 1.5 ms: a loopback connect/accept (~40 us) and a
        vfork+exec of smbd (Popen returns once exec has happened; longer when the CPUs are busy, e.g. with
        other smbd starting). smbd's own start-up (~60 ms to its first answer) happens after we return:
        the guest's first bytes wait in the socket. Raises SmbError (``errno`` for the guest's connection)
        at a cap or on failure.
        """
        if self.workdir is None or self.conf_path is None or self.smbd is None or self._closed:
            raise SmbError("smb: server not running")
        self.reap()
        if len(self._procs) >= self.max_processes:
            self.refused += 1
            raise SmbError(f"smb: {self.max_processes} smbd processes already running", errno.ECONNREFUSED)
        now = time.monotonic()
        self._tokens = min(float(self.max_processes), self._tokens + (now - self._tokens_at) * self.spawn_rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            self.refused += 1
            raise SmbError(f"smb: more than {self.spawn_rate:g} new connections per second", errno.ECONNREFUSED)
        self._tokens -= 1.0
        try:
            ours, theirs = tcp_pair()
        except OSError as exc:
            self.failed += 1
            raise SmbError(f"smb: loopback connection: {exc.strerror or exc}", exc.errno or errno.EMFILE) from None
        try:
            proc = subprocess.Popen(
                [self.smbd, f"--configfile={self.conf_path}", f"--log-basename={self.workdir}"],
                stdin=theirs.fileno(), stdout=self._log_fd, stderr=self._log_fd, cwd=self.workdir,
                close_fds=True, start_new_session=True)
        except OSError as exc:
            ours.close()
            self.failed += 1
            raise SmbError(f"smb: cannot run {self.smbd}: {exc.strerror or exc}",
                           exc.errno or errno.ECONNREFUSED) from None
        finally:
            theirs.close()
        self.spawned += 1
        self._watch(proc)
        ours.setblocking(False)
        return ours

    def reap(self) -> None:
        """Collect exited smbd processes (needed only without a loop)."""
        for pid, (proc, _) in list(self._procs.items()):
            if proc.poll() is not None:
                self._exited(pid)

    # -- internals ---------------------------------------------------------------------------------------
    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        pidfd = -1
        if self._loop is not None:
            try:
                pidfd = os.pidfd_open(proc.pid)
            except OSError:  # kernels before 5.3: reaped at the next connect() or close()
                pidfd = -1
            else:
                self._loop.add_reader(pidfd, self._exited, proc.pid)
        self._procs[proc.pid] = (proc, pidfd)

    def _exited(self, pid: int) -> None:
        entry = self._procs.get(pid)
        if entry is None:
            return
        proc = entry[0]
        status = proc.poll()
        if status is None:
            return
        self._forget(pid)
        if status not in (0, -signal.SIGTERM):
            self.exited_badly += 1
            if self.exited_badly == 1:
                log.warning("smb: smbd exited with status %d (see %s; later ones are only counted)", status,
                            os.path.join(self.workdir or "?", "log.smbd"))

    def _forget(self, pid: int) -> None:
        proc, pidfd = self._procs.pop(pid)
        if pidfd >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(pidfd)
            os.close(pidfd)
        if proc.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0)

    def _stop_all(self, sig: int) -> None:
        for pid, (proc, _) in self._procs.items():
            if proc.returncode is None:  # not reaped yet: the pid, and so its group, is still ours
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
        for pid in self._strays():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            if not self._procs and not self._strays():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def _strays(self) -> list[int]:
        """Live processes run with our configuration: samba-dcerpcd, rpcd_*, smbd and its helpers."""
        if self.conf_path is None:
            return []
        return processes_using(self.conf_path)


# -- helpers -------------------------------------------------------------------------------------------------
def find_smbd(path: str | None = None) -> str:
    """The smbd to run: ``path`` if given, else the first in $PATH, /usr/sbin, /sbin."""
    if path is not None:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
        raise SmbError(f"smbd not found at {path}: {SMBD_MISSING}")
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *SMBD_SEARCH])
    found = shutil.which("smbd", path=search)
    if found is None:
        raise SmbError(f"smbd not found: {SMBD_MISSING}")
    return found


def _check_directory(directory: str) -> None:
    _check_conf_value(f"smb={directory}", directory)
    if not os.path.exists(directory):
        raise SmbError(f"smb={directory}: no such directory")
    if not os.path.isdir(directory):
        raise SmbError(f"smb={directory}: not a directory")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise SmbError(f"smb={directory}: {os.strerror(errno.EACCES)}")


def _check_conf_value(what: str, value: str) -> None:
    """smb.conf has no quoting: a line break would start a new option, a trailing backslash continues the
    line, % starts a substitution (%u, %m...) and samba strips surrounding blanks."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in value) or "%" in value or value.endswith("\\") \
            or value != value.strip():
        raise SmbError(f"{what}: samba cannot take this path (control characters, %, a trailing backslash "
                       "or surrounding blanks)")


def smb_conf(workdir: str, directory: str, user: str) -> str:
    """The private configuration: QEMU's, minus what inetd mode ignores, plus what keeps samba inside
    ``workdir``. Every option is one samba 4.17 accepts without a warning (tests run testparm on it)."""
    return f"""\
# written by vmlan for one user-mode stack (QEMU's smb=); removed when the stack closes
[global]
private dir = {workdir}/private
lock directory = {workdir}/lock
state directory = {workdir}/state
cache directory = {workdir}/cache
pid directory = {workdir}/run
ncalrpc dir = {workdir}/ncalrpc
log file = {workdir}/log.smbd
logging = file
security = user
map to guest = Bad User
load printers = no
printing = bsd
disable spoolss = yes
usershare max shares = 0

[{SHARE}]
path = {directory}
read only = no
guest ok = yes
force user = {user}
"""


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of loopback TCP sockets (smbd needs a TCP peer, libslirp does the same).

    A short-lived listener on an ephemeral port; the accepted connection must be the one we made, so a
    local process racing for the port gets nothing (it is dropped and we accept again). Blocking, but
    each call completes at once on loopback; PAIR_TIMEOUT bounds the worst case.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(PAIR_TIMEOUT)
        ours = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            ours.settimeout(PAIR_TIMEOUT)
            ours.connect(listener.getsockname())
            want = ours.getsockname()
            while True:
                theirs, peer = listener.accept()
                if peer == want:
                    break
                theirs.close()
        except BaseException:
            ours.close()
            raise
    theirs.settimeout(None)
    ours.settimeout(None)
    with contextlib.suppress(OSError):
        ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ours, theirs


def processes_using(conf_path: str) -> list[int]:
    """Live processes run with ``--configfile=conf_path`` (zombies have an empty command line)."""
    arg = f"--configfile={conf_path}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if arg in argv:
            found.append(int(name))
    return found

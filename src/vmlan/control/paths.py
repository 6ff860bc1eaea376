"""Where the daemon keeps its state and its sockets.

=========  ==========================  ============================================================
           root                        anyone else
=========  ==========================  ============================================================
state      /var/lib/vmlan              $XDG_STATE_HOME/vmlan, else ~/.local/state/vmlan
runtime    /run/vmlan                  $XDG_RUNTIME_DIR/vmlan, else /tmp/vmlan-$UID
API        <runtime>/vmlan.sock        (mode 0600; the daemon also refuses other uids by SO_PEERCRED)
=========  ==========================  ============================================================

``VMLAN_STATE_DIR`` and ``VMLAN_RUNTIME_DIR`` override both (tests, several daemons side by side);
``vmlan daemon --state-dir/--runtime-dir`` and the client's ``--socket`` (or ``VMLAN_SOCKET``) too.
"""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_NAME = "vmlan.sock"


def state_dir() -> Path:
    env = os.environ.get("VMLAN_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/vmlan")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "vmlan"


def runtime_dir() -> Path:
    env = os.environ.get("VMLAN_RUNTIME_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/vmlan")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "vmlan" if xdg else Path(f"/tmp/vmlan-{os.getuid()}")


def socket_path() -> Path:
    env = os.environ.get("VMLAN_SOCKET")
    return Path(env) if env else runtime_dir() / SOCKET_NAME


def private_dir(path: Path) -> Path:
    """Make ``path`` (mode 0700) if needed and insist it is ours and closed to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if st.st_uid != os.geteuid():
        raise OSError(f"{path} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def boot_id() -> str:
    """The kernel's id of this boot: state left by a daemon of the same boot is still meaningful
    (its guests may still run), state from an earlier boot only for autostart."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""

"""Shared pytest fixtures.

Guest fixtures (interop tests that boot QEMU guests): ``guest_image`` builds or reuses the cached guest
image once per session (safe under pytest-xdist: the builder locks and renames atomically), and
``make_guest`` starts guests in the test's tmp_path and powers them all off at teardown. Missing QEMU
or a failed image build FAILS the tests with the reason; it never skips them.
"""

from __future__ import annotations

import itertools
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

_TESTS_DIR = Path(__file__).resolve().parent
if str(_TESTS_DIR) not in sys.path:  # tests/ is not a package; make tests/guest importable as `guest`
    sys.path.insert(0, str(_TESTS_DIR))

from guest import BuildError, GuestImage, build_guest  # noqa: E402
from guest.harness import QEMU, Guest, MakeGuest  # noqa: E402


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The test guest's kernel and initramfs (``$VMLAN_GUEST_CACHE`` or ~/.cache/vmlan/guest)."""
    try:
        return build_guest()
    except BuildError as exc:
        pytest.fail(f"cannot build the test guest image: {exc}", pytrace=False)


@pytest.fixture
def make_guest(guest_image: GuestImage, tmp_path: Path) -> Iterator[MakeGuest]:
    """Factory: ``make_guest(name, netdev_args, mac=None, **Guest_kwargs) -> Guest`` (started, not yet
    ready: call ``wait_ready()`` or just ``run()``). Guests are closed at teardown, newest first."""
    if shutil.which(QEMU) is None:
        pytest.fail(
            f"{QEMU} not found: the interop tests need apt-get install qemu-system-x86", pytrace=False
        )
    guests: list[Guest] = []
    macs = (f"52:54:00:12:34:{n:02x}" for n in itertools.count(0x56))

    def factory(name: str, netdev_args: Sequence[str] | str, mac: str | None = None, **kwargs: Any) -> Guest:
        guest = Guest(name, netdev_args, mac or next(macs), tmp_path, guest_image, **kwargs)
        guests.append(guest)
        guest.start()
        return guest

    yield factory
    errors = []
    for guest in reversed(guests):
        try:
            guest.close()
        except Exception as exc:  # close them all, report the first problem
            errors.append(f"{guest.name}: {exc!r}")
    if errors:
        pytest.fail("closing guests failed: " + "; ".join(errors), pytrace=False)

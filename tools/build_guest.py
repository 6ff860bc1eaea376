#!/usr/bin/env python3
"""Build (once, cached) the Linux guest that vmlan's interop tests boot under QEMU.

The guest is a Debian cloud kernel plus a gzip'd newc initramfs holding busybox-static, the virtio-net
module chain of that kernel, a default udhcpc script and ``/init`` (templates in ``tests/guest/``).

Usage: ``python3 tools/build_guest.py [--cache DIR] [--force]``; importable as
``build_guest(cache_dir) -> GuestImage``.

The cache lives in ``$VMLAN_GUEST_CACHE`` or ``~/.cache/vmlan/guest``, one directory per key: the
package versions apt would download now plus a hash of this builder and its templates, so a package
upgrade or a template change rebuilds. A build happens in a temporary directory beside the cache
entry, under a lock file, and is renamed into place atomically: concurrent test workers either wait
for it or see a complete image.

Needs: apt-get, apt-cache and dpkg-deb (Debian), the package lists (``apt-get update``), and zstd only
if the kernel package compresses its modules with zstd. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# Modules insmod'ed at boot, in dependency order (each one's depends= is read from the .ko itself).
BOOT_MODULES = ("virtio_net", "virtio_pci")
# Modules shipped in the image (with a modules.dep) but not loaded: `modprobe 8021q` for VLAN tests.
EXTRA_MODULES = ("8021q",)
READY_MARKER = "VMLAN-GUEST-READY"
IMAGE_DIRS = "bin sbin usr/bin usr/sbin etc proc sys dev tmp run root www mnt var/run etc/udhcpc"

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = REPO_ROOT / "tests" / "guest"
INIT_TEMPLATE = TEMPLATE_DIR / "init.sh"
UDHCPC_SCRIPT = TEMPLATE_DIR / "udhcpc.script"
UDPECHO_SOURCE = TEMPLATE_DIR / "udpecho.c"

LOCK_TIMEOUT = 900.0  # seconds to wait for another process's build of the same cache root
COMMAND_TIMEOUT = 600.0


class BuildError(RuntimeError):
    """The guest image cannot be built; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


def default_cache_dir() -> Path:
    env = os.environ.get("VMLAN_GUEST_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vmlan" / "guest"


# --------------------------------------------------------------------------------------------------
# external commands


def _run(argv: list[str], *, cwd: Path | None = None, hint: str = "") -> str:
    tool = argv[0]
    if shutil.which(tool) is None:
        raise BuildError(f"build_guest: required tool {tool!r} not found on PATH (a Debian system is needed)")
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"build_guest: {' '.join(argv)} timed out after {COMMAND_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("E:")] or lines
        why = errors[-1] if errors else f"exit status {proc.returncode}"
        raise BuildError(f"build_guest: {' '.join(argv)} failed: {why}{hint}")
    return proc.stdout


_APT_HINT = " (run apt-get update?)"


def _apt_get_argv() -> list[str]:
    argv = ["apt-get", "-q"]
    if os.geteuid() == 0:
        # apt drops to the _apt user for downloads, which cannot write into our private temp dir.
        argv += ["-o", "APT::Sandbox::User=root"]
    return argv


def _stanzas(text: str) -> dict[str, dict[str, str]]:
    """``apt-cache show`` output -> {package: {field: value}} (first stanza of each package)."""
    result: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", block, re.M))
        if "Package" in fields:
            result.setdefault(fields["Package"], fields)
    return result


def candidates() -> tuple[str, str, str]:
    """(kernel package, its version, busybox-static version) as apt would download them now.

    One ``apt-cache show`` of the metapackage and busybox-static (each apt-cache run costs ~0.5 s
    here, and this runs once per test session): the metapackage's Depends names the kernel package.
    """
    out = _run(
        ["apt-cache", "show", "--no-all-versions", KERNEL_METAPACKAGE, BUSYBOX_PACKAGE], hint=_APT_HINT
    )
    info = _stanzas(out)
    for package in (KERNEL_METAPACKAGE, BUSYBOX_PACKAGE):
        if "Version" not in info.get(package, {}):
            raise BuildError(f"build_guest: apt-cache show {package} gives no version{_APT_HINT}")
    meta = info[KERNEL_METAPACKAGE]
    m = re.search(
        r"(?:^|,)\s*(linux-image-[^\s,(|]+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?", meta.get("Depends", "")
    )
    if m is None:
        raise BuildError(f"build_guest: {KERNEL_METAPACKAGE} depends on no linux-image package{_APT_HINT}")
    return m.group(1), m.group(2) or meta["Version"], info[BUSYBOX_PACKAGE]["Version"]


def download(packages: Iterable[str], dest: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in packages:
        _run([*_apt_get_argv(), "download", package], cwd=dest, hint=_APT_HINT)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            raise BuildError(f"build_guest: apt-get download {package} produced no .deb in {dest}")
        found[package] = debs[-1]
    return found


# --------------------------------------------------------------------------------------------------
# kernel modules


def _read_module(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko"):
        return path.read_bytes()
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        if shutil.which("zstd") is None:
            raise BuildError(f"build_guest: {path.name} is zstd-compressed: apt-get install zstd")
        proc = subprocess.run(["zstd", "-dc", "--", str(path)], capture_output=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise BuildError(f"build_guest: zstd -dc {path} failed: {proc.stderr.decode().strip()}")
        return proc.stdout
    raise BuildError(f"build_guest: unknown kernel module format {path}")


def _module_name(path: Path) -> str:
    return path.name.split(".ko", 1)[0].replace("-", "_")


def module_depends(blob: bytes) -> list[str]:
    """The ``depends=`` entry of a module's .modinfo section (NUL-separated key=value strings)."""
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", blob)
    if m is None:
        return []
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d]


@dataclass
class Module:
    name: str
    relpath: str  # relative to lib/modules/KVER, always ending in .ko in the image
    blob: bytes
    depends: list[str]


def collect_modules(moddir: Path, roots: Iterable[str]) -> list[Module]:
    """The modules ``roots`` need, dependencies first (the order to insmod them)."""
    index: dict[str, Path] = {}
    for path in moddir.rglob("*.ko*"):
        if re.search(r"\.ko(\.xz|\.gz|\.zst)?$", path.name):
            index[_module_name(path)] = path
    order: list[Module] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in chain:
            raise BuildError(f"build_guest: module dependency cycle {' -> '.join((*chain, name))}")
        path = index.get(name)
        if path is None:
            raise BuildError(f"build_guest: kernel module {name} not found under {moddir}")
        blob = _read_module(path)
        deps = module_depends(blob)
        for dep in deps:
            visit(dep, (*chain, name))
        rel = path.relative_to(moddir).as_posix()
        rel = rel[: rel.index(".ko") + 3]
        order.append(Module(name, rel, blob, deps))
        done.add(name)

    for root in roots:
        visit(root.replace("-", "_"), ())
    return order


# --------------------------------------------------------------------------------------------------
# initramfs (newc cpio, written here so that nothing depends on the build user's uid or umask)


class CpioWriter:
    def __init__(self, out: io.BufferedIOBase) -> None:
        self._out = out
        self._ino = 1
        self._dirs: set[str] = {""}

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        namez = name.encode() + b"\x00"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._out.write(header + namez + b"\x00" * (-(len(header) + len(namez)) % 4))
        self._out.write(data + b"\x00" * (-len(data) % 4))

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.directory("/".join(parts[:i]))

    def directory(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if name in self._dirs:
            return
        self._parents(name)
        self._dirs.add(name)
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self._parents(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = name.strip("/")
        self._parents(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


def busybox_applets(busybox: Path) -> list[str]:
    """Applet paths (``usr/bin/wget``...), from running the static binary; [] if it cannot run here."""
    try:
        proc = subprocess.run(
            [str(busybox), "--list-full"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return []
    if proc.returncode != 0:
        return []
    return [ln.strip().lstrip("/") for ln in proc.stdout.splitlines() if ln.strip()]


def render_init(kver: str, modules: list[Module]) -> bytes:
    text = INIT_TEMPLATE.read_text()
    for placeholder in ("@KVER@", "@MODULES@"):
        if placeholder not in text:
            raise BuildError(f"build_guest: placeholder {placeholder} missing from {INIT_TEMPLATE}")
    return text.replace("@KVER@", kver).replace("@MODULES@", " ".join(m.relpath for m in modules)).encode()


def compile_udpecho(work: Path) -> bytes:
    """The guest's UDP echo server (busybox has none), linked statically: the image has no libc."""
    out = work / "udpecho"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BuildError("build_guest: no C compiler for tests/guest/udpecho.c (apt-get install gcc libc6-dev)")
    _run([cc, "-static", "-Os", "-s", "-o", str(out), str(UDPECHO_SOURCE)])
    return out.read_bytes()


def write_initramfs(
    dest: Path, busybox: Path, kver: str, boot: list[Module], extra: list[Module], udpecho: bytes
) -> None:
    raw = io.BytesIO()
    cpio = CpioWriter(raw)
    for d in IMAGE_DIRS.split():
        cpio.directory(d)
    cpio.directory(f"lib/modules/{kver}")
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    for applet in busybox_applets(busybox):
        if applet not in ("bin/busybox", "bin/sh"):
            cpio.symlink(applet, "/bin/busybox")
    cpio.file("init", render_init(kver, boot), 0o755)
    cpio.file("bin/udpecho", udpecho, 0o755)
    cpio.file("etc/udhcpc.script", UDHCPC_SCRIPT.read_bytes(), 0o755)
    cpio.symlink("etc/udhcpc/default.script", "/etc/udhcpc.script")  # Debian busybox's default
    cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.file("etc/group", b"root:x:0:\n")
    cpio.file("etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n")
    cpio.file("etc/resolv.conf", b"")
    moddep = []
    seen: set[str] = set()
    by_name = {m.name: m for m in [*boot, *extra]}
    for module in [*boot, *extra]:
        if module.name in seen:
            continue
        seen.add(module.name)
        cpio.file(f"lib/modules/{kver}/{module.relpath}", module.blob)
        deps = " ".join(by_name[d].relpath for d in _dep_closure(module.name, by_name))
        moddep.append(f"{module.relpath}: {deps}".rstrip() + "\n")
    cpio.file(f"lib/modules/{kver}/modules.dep", "".join(moddep).encode())
    cpio.close()
    with open(dest, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(raw.getvalue())


def _dep_closure(name: str, by_name: dict[str, Module]) -> Iterator[str]:
    """All dependencies of a module, each before its own dependencies (the modules.dep order: a
    modprobe loads them from the end of the line)."""
    closure: set[str] = set()
    stack = list(by_name[name].depends)
    while stack:
        dep = stack.pop()
        if dep not in closure:
            closure.add(dep)
            stack.extend(by_name[dep].depends)
    order = list(by_name)  # dependencies first
    yield from sorted(closure, key=order.index, reverse=True)


# --------------------------------------------------------------------------------------------------
# cache


def _builder_hash() -> str:
    h = hashlib.sha256()
    for path in (Path(__file__).resolve(), INIT_TEMPLATE, UDHCPC_SCRIPT, UDPECHO_SOURCE):
        try:
            h.update(path.read_bytes())
        except OSError as exc:
            raise BuildError(f"build_guest: cannot read {path}: {exc.strerror}") from None
    return h.hexdigest()[:12]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


@dataclass(frozen=True)
class _Plan:
    kernel_package: str
    kernel_version: str
    busybox_version: str
    key: str


def plan() -> _Plan:
    kpkg, kver, bver = candidates()
    flavour = kpkg.removeprefix("linux-image-")
    key = f"{_safe(flavour)}_{_safe(kver)}__busybox_{_safe(bver)}__{_builder_hash()}"
    return _Plan(kpkg, kver, bver, key)


def _image_in(directory: Path) -> GuestImage | None:
    image = GuestImage(directory / "vmlinuz", directory / "initrd.img")
    if image.kernel.is_file() and image.initrd.is_file() and (directory / "manifest.json").is_file():
        return image
    return None


def _newest_cached(cache: Path) -> GuestImage | None:
    suffix = f"__{_builder_hash()}"
    entries = [d for d in cache.glob(f"*{suffix}") if _image_in(d) is not None]
    if not entries:
        return None
    return _image_in(max(entries, key=lambda d: d.stat().st_mtime))


class _Lock:
    def __init__(self, path: Path, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._fd = -1

    def __enter__(self) -> _Lock:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self._fd)
                    raise BuildError(
                        f"build_guest: another build holds {self._path} for over {self._timeout:.0f} s"
                    ) from None
                time.sleep(0.25)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _build_into(out: Path, work: Path, p: _Plan, log: bool) -> None:
    def say(msg: str) -> None:
        if log:
            print(f"build_guest: {msg}", file=sys.stderr, flush=True)

    debs_dir = work / "debs"
    root = work / "root"
    debs_dir.mkdir()
    root.mkdir()
    say(f"downloading {p.kernel_package} {p.kernel_version} and {BUSYBOX_PACKAGE} {p.busybox_version}")
    debs = download([p.kernel_package, BUSYBOX_PACKAGE], debs_dir)
    for deb in debs.values():
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError(f"build_guest: no boot/vmlinuz-* in {debs[p.kernel_package].name}")
    kernel = kernels[-1]
    kver = kernel.name.removeprefix("vmlinuz-")
    moddir = next(
        (d for d in (root / "lib/modules" / kver, root / "usr/lib/modules" / kver) if d.is_dir()), None
    )
    if moddir is None:
        raise BuildError(f"build_guest: no lib/modules/{kver} in {debs[p.kernel_package].name}")
    busybox = next((b for b in (root / "bin/busybox", root / "usr/bin/busybox") if b.is_file()), None)
    if busybox is None:
        raise BuildError(f"build_guest: no busybox binary in {debs[BUSYBOX_PACKAGE].name}")
    boot = collect_modules(moddir, BOOT_MODULES)
    extra = collect_modules(moddir, EXTRA_MODULES)
    say("boot modules: " + " ".join(m.name for m in boot))
    shutil.copyfile(kernel, out / "vmlinuz")
    write_initramfs(out / "initrd.img", busybox, kver, boot, extra, compile_udpecho(work))
    manifest = {
        "kernel_package": p.kernel_package,
        "kernel_package_version": p.kernel_version,
        "kernel_release": kver,
        "busybox_package_version": p.busybox_version,
        "boot_modules": [m.name for m in boot],
        "extra_modules": [m.name for m in extra if m.name not in {b.name for b in boot}],
        "ready_marker": READY_MARKER,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def build_guest(cache_dir: Path | str | None = None, *, force: bool = False, log: bool = False) -> GuestImage:
    """Return the cached guest image, building it first if the packages or the builder changed."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        p = plan()
    except BuildError as exc:
        # No package lists (e.g. cleaned after installing): an image this builder made is still good.
        fallback = None if force else _newest_cached(cache)
        if fallback is None:
            raise
        print(f"{exc}; using the cached image {fallback.kernel.parent}", file=sys.stderr, flush=True)
        return fallback
    final = cache / p.key
    if not force and (image := _image_in(final)) is not None:
        return image
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"build_guest: cannot create cache directory {cache}: {exc.strerror}") from None
    with _Lock(cache / ".build.lock", LOCK_TIMEOUT):
        if not force and (image := _image_in(final)) is not None:
            return image  # another process built it while we waited
        for stale in cache.glob(".build-*"):  # builds only happen under the lock: these are leftovers
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            out = work / "image"
            out.mkdir()
            _build_into(out, work, p, log)
            if final.exists():  # forced rebuild, or a damaged entry: move it out of the way first
                os.rename(final, work / "old")
            os.rename(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if log:
        print(f"build_guest: built {final}", file=sys.stderr, flush=True)
    image = _image_in(final)
    assert image is not None
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache directory (default: $VMLAN_GUEST_CACHE or ~/.cache/vmlan/guest)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached image exists")
    args = parser.parse_args(argv)
    try:
        image = build_guest(args.cache, force=args.force, log=True)
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"kernel={image.kernel}")
    print(f"initrd={image.initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# vmlan's one entry point for people and CI on Debian 12.
#   ./dev.sh run [vmlan run options]   set up, then start `vmlan run` (default: hub 0 on a unix socket)
#   ./dev.sh test [pytest options]     set up everything the tests need (Debian packages, the test guest),
#                                      check lint and types, run the whole test suite
#   ./dev.sh bench [NAME] [options]    set up, then run a benchmark of benchmarks/ (default: the hub against
#                                      vde_switch; NAME e.g. ns_peers, usernet_guest, tftp, tap, vde)
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VMLAN_VENV:-.venv}
RUN_PACKAGES=(python3 python3-venv)
TEST_PACKAGES=(qemu-system-x86 ipxe-qemu vde2 tshark socat iperf3 cpio gzip iproute2 procps gcc libc6-dev nftables
               busybox util-linux samba smbclient tftp-hpa atftp isc-dhcp-client)
# The peers the benchmarks compare vmlan with (slirp4netns, pasta from passt, QEMU's own stack, vde_switch).
BENCH_PACKAGES=(vde2 procps qemu-system-x86 ipxe-qemu iperf3 slirp4netns passt atftp tftp-hpa iproute2 util-linux
                cpio gzip gcc libc6-dev busybox nftables)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    # The test guest is built with `apt-get download`: it needs package lists even when nothing is missing.
    if [ ${#missing[@]} -gt 0 ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
        echo "dev.sh: installing Debian packages: ${missing[*]:-(lists only)}" >&2
        as_root apt-get update -qq
        [ ${#missing[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

python_env() {
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then apt_install "${RUN_PACKAGES[@]}"; fi
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    local extras=$1 stamp="$VENV/.installed-$1"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/pip" install -q --upgrade pip >/dev/null
        "$VENV/bin/pip" install -q -e ".$extras"
        touch "$stamp"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    run)
        python_env ""
        exec "$VENV/bin/vmlan" run "$@"
        ;;
    test)
        apt_install "${RUN_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
        python_env "[test]"
        "$VENV/bin/python" tools/build_guest.py
        "$VENV/bin/ruff" check src tests benchmarks tools
        "$VENV/bin/mypy"
        exec "$VENV/bin/pytest" "$@"
        ;;
    bench)
        apt_install "${RUN_PACKAGES[@]}" "${BENCH_PACKAGES[@]}"
        python_env "[test]"
        if [ $# -gt 0 ] && [ -f "benchmarks/$1.py" ]; then
            name=$1
            shift
            case "$name" in usernet_guest|tftp) "$VENV/bin/python" tools/build_guest.py ;; esac
            exec "$VENV/bin/python" -m "benchmarks.$name" "$@"
        fi
        exec "$VENV/bin/python" -m benchmarks "$@"
        ;;
    *)
        sed -n '2,8p' "$0" >&2
        exit 2
        ;;
esac

#!/bin/sh
# /init of the vmlan test guest: busybox-static + the virtio-net modules of a Debian cloud kernel.
# This is a template: tools/build_guest.py fills in the KVER and MODULES placeholders (between @ signs).
# Kernel parameters of the form vmlan_NAME=VALUE (no dots!) arrive here as environment variables.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
[ -x /bin/mount ] || /bin/busybox --install -s

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /var/run /www
mount -t devpts devpts /dev/pts
dmesg -n 1

kver=@KVER@
for m in @MODULES@; do
    insmod "/lib/modules/$kver/$m" || echo "vmlan-init: insmod $m failed"
done

hostname "${vmlan_hostname:-guest}"
ip link set lo up
# virtio_net binds to the device while virtio_pci loads; the loop is a bounded safety net (5 s).
i=0
while [ ! -e /sys/class/net/eth0 ] && [ "$i" -lt 50 ]; do
    usleep 100000
    i=$((i + 1))
done
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
else
    echo "vmlan-init: no eth0"
fi

# The test harness drives this shell over the serial console: no echo, no prompt, job control on
# (so that ^C interrupts a command), and one ready marker line before the first prompt.
export PS1='' PS2='' ENV=''
# PID 1 must never exit (the kernel panics): it owns no tty and restarts the console shell, each time
# in a new session that takes ttyS0 as its controlling tty. Under heavy host load the console has been
# seen to end with EOF while idle; that now costs one shell (logged), not the whole guest.
exec sh -c 'ready=VMLAN-GUEST-READY
while :; do
    setsid cttyhack sh -c "stty -echo; echo $ready; exec sh -i"
    echo "vmlan-init: console shell exited with status $?, restarting" >/dev/console
    ready=VMLAN-GUEST-SHELL-RESTARTED
done'

#!/bin/sh
# Run by busybox acpid on the ACPI power button (QEMU's system_powerdown):
# it maps KEY_POWER to the action PWRF/00000080 under /etc/acpi.
echo "anka-guest: powering off" >/dev/console
killall udhcpc httpd nc 2>/dev/null
sync
poweroff -f

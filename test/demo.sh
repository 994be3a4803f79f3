#!/usr/bin/env bash
# make demo: two test guests on one network, run by anka inside a network
# namespace made for the demo, then everything removed. Nothing touches the
# host's own interfaces, routes or firewall.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make demo creates a network namespace: run it as root (sudo make demo)"; exit 1; }

NS="anka-demo-$$"
WORK="$(mktemp -d /tmp/anka-demo.XXXXXX)"
GUEST="${ANKA_GUEST_DIR:-$PWD/build/guest}"
export ANKA_STATE_DIR="$WORK/state" ANKA_CONFIG="$WORK/config.yaml" ANKA_SYSTEM_CONFIG="$WORK/system.yaml"
ANKA="$PWD/bin/anka"

cleanup() {
	for vm in demo1 demo2; do ip netns exec "$NS" "$ANKA" delete --force "$vm" >/dev/null 2>&1 || true; done
	# Plugins outlive anka by design (they own the data plane): stop ours.
	for f in "$ANKA_STATE_DIR"/plugins/*/reattach.json; do
		[ -f "$f" ] && kill "$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$f")" 2>/dev/null || true
	done
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
anka() { say "anka $*"; ip netns exec "$NS" "$ANKA" "$@"; }
wait_console() { # VM TEXT
	for _ in $(seq 1 600); do
		grep -q "$2" "$ANKA_STATE_DIR/vms/$1/console.log" 2>/dev/null && return 0
		sleep 0.2
	done
	echo "timed out waiting for '$2' on $1's console"; return 1
}

anka plugin list
for i in 1 2; do
	anka create demo$i --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initrd.img" --ram 256M \
		--append "anka.hostname=demo$i anka.ip=10.50.0.$i/24 anka.ipv6=0 anka.ping=10.50.0.$((3 - i))"
	anka modify demo$i set network-card -t segment -o segment=demo -m 52:54:00:12:34:56
done
say "# both guests carry the same internal MAC (-m); the segment sees their dynamic MACs"
anka start demo1
anka start demo2
for i in 1 2; do wait_console demo$i "anka-guest: ping .* \(ok\|failed\)"; done
anka show demo1 network
say "grep anka-guest <vm>/console.log"
for i in 1 2; do tr -d '\r' < "$ANKA_STATE_DIR/vms/demo$i/console.log" | grep 'anka-guest' | sed "s/^/demo$i: /"; done
anka suspend demo1
anka list
anka start demo1
anka stop demo1
anka stop --force demo2
anka delete demo1
anka delete demo2
echo
echo "demo finished: namespace $NS, its plugins and $WORK are removed on exit"

#!/usr/bin/env bash
# make demo: boot the test guest with anka inside a network namespace made
# for the demo, show what a user sees, and remove everything afterwards.
# Nothing touches the host's own interfaces, routes or firewall.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make demo creates a network namespace: run it as root (sudo make demo)"; exit 1; }

NS="anka-demo-$$"
WORK="$(mktemp -d /tmp/anka-demo.XXXXXX)"
GUEST="${ANKA_GUEST_DIR:-$PWD/build/guest}"
export ANKA_STATE_DIR="$WORK/state" ANKA_CONFIG="$WORK/config.yaml" ANKA_SYSTEM_CONFIG="$WORK/system.yaml"
ANKA="$PWD/bin/anka"

cleanup() {
	ip netns exec "$NS" "$ANKA" delete --force demo >/dev/null 2>&1 || true
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
anka() { say "anka $*"; ip netns exec "$NS" "$ANKA" "$@"; }

anka create demo --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initrd.img" --ram 256M
anka modify demo add port-forwarding web -g 80
anka show demo network
say "anka start demo   # card 0 is shared; its plugin arrives with the plugin host"
ip netns exec "$NS" "$ANKA" start demo || true
anka modify demo delete network-card
anka start demo
printf 'waiting for the guest to boot'
for _ in $(seq 1 600); do
	grep -q 'anka-guest: booted' "$ANKA_STATE_DIR/vms/demo/console.log" 2>/dev/null && break
	printf '.'; sleep 0.2
done
echo
say "cat $ANKA_STATE_DIR/vms/demo/console.log"
tr -d '\r' < "$ANKA_STATE_DIR/vms/demo/console.log" | tail -n 20
anka suspend demo
anka list
anka start demo
anka stop demo
anka delete demo
anka config
echo
echo "demo finished: namespace $NS and $WORK are removed on exit"

#!/usr/bin/env bash
# make demo: a VM from the test guest on the shared network, run by anka
# inside a network namespace made for the demo (the host's own interfaces,
# routes and firewall are never touched). It starts the VM with a port
# forward, prints its IP, fetches the guest's web page through the IP and
# through the forward, and leaves it running; `make demo-stop` (this script
# with "stop") removes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make demo creates a network namespace: run it as root (sudo make demo)"; exit 1; }

NS=anka-demo
WORK=/tmp/anka-demo
GUEST="${ANKA_GUEST_DIR:-$PWD/build/guest}"
export ANKA_STATE_DIR="$WORK/state" ANKA_CONFIG="$WORK/config.yaml" ANKA_SYSTEM_CONFIG="$WORK/system.yaml"
# Plugins run as the anka-net user once `make install` created it; the
# demo runs from the checkout (which that user may not be able to enter)
# on a machine that may not have it, so its plugins run as root.
export ANKA_PLUGIN_USER="${ANKA_PLUGIN_USER:-root}"
ANKA="$PWD/bin/anka"
in_ns() { ip netns exec "$NS" "$@"; }

stop_demo() {
	if ip netns list | grep -qw "$NS"; then
		in_ns "$ANKA" daemon stop --all >/dev/null 2>&1 || true
		# Whatever survived (a daemon killed by hand): its processes.
		for f in "$ANKA_STATE_DIR"/daemon.pid "$ANKA_STATE_DIR"/plugins/*/reattach.json; do
			[ -f "$f" ] || continue
			pid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p; s/^\([0-9][0-9]*\)$/\1/p' "$f" | head -n 1)
			[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
		done
		ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
		ip netns del "$NS"
	fi
	rm -rf "$WORK"
}

if [ "${1:-}" = stop ]; then
	stop_demo
	echo "demo stopped: namespace $NS, its VM, daemon and plugins, and $WORK are gone"
	exit 0
fi

stop_demo # a demo left from an earlier run
mkdir -p "$WORK"
ip netns add "$NS"
ip -n "$NS" link set lo up
trap 'echo "the demo failed; cleaning up"; stop_demo' ERR

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
anka() { say "anka $*"; in_ns "$ANKA" "$@"; }

anka create demo --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initrd.img" --ram 256M --append "anka.hostname=demo anka.ipv6=0"
anka modify demo set network-card -t shared
anka modify demo add port-forwarding web -g 80 -p 8080
say "anka start demo    # waits until the VM has its address"
out=$(in_ns "$ANKA" start demo)
echo "$out"
IP=$(sed -n 's/^ip //p' <<<"$out")
[ -n "$IP" ] || { echo "anka start printed no IP"; exit 1; }
anka show demo network
say "wget -qO- http://$IP/            # the host reaches the VM by its IP"
in_ns timeout 10 busybox wget -q -O - "http://$IP/"
say "wget -qO- http://127.0.0.1:8080/   # through the port forward"
in_ns timeout 10 busybox wget -q -O - "http://127.0.0.1:8080/"
anka daemon status
trap - ERR
cat <<MSG

The VM "demo" runs at $IP inside network namespace $NS. Try:
  sudo ip netns exec $NS env ANKA_STATE_DIR=$ANKA_STATE_DIR $ANKA show demo
  sudo ip netns exec $NS busybox wget -qO- http://$IP/
Stop it and remove everything with:
  sudo make demo-stop
MSG

#!/bin/bash
# The fast path's cost, split: iperf3 between two network namespaces made
# here (a guest and a host side), through five set-ups built in turn in
# the same run, rounds interleaved so the machine's drift hits them alike:
#
#   veth         a veth pair, the host side addressed (the kernel limit)
#   veth-nat     the same with a NAT table loaded (conntrack on)
#   br           the guest's veth a port of a bridge holding the address
#   br-nat       the bridge with the NAT table (the shared plugin's layout)
#   br-nat-brf   plus a bridge-family anti-spoofing table (what the
#                plugin adds per VM TAP)
#   br-nonf      the bridge with br_netfilter's calls into the IP hooks
#                off in the host side's namespace (net.bridge.bridge-nf-
#                call-*tables=0; only when br_netfilter is loaded, which
#                turns them on in every namespace)
#
# Each run reports Gbit/s and CPU cost (both iperf3 processes' CPU time,
# from their rusage, which leaves out steal, per KiB received). Nothing
# outside the two namespaces is touched. Needs root, iperf3, nft, python3.
# ROUNDS, DUR (seconds a run), MTUS and CONFIGS override the defaults.
set -u
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-4}
MTUS=${MTUS:-1500 65520}
CONFIGS=${CONFIGS:-veth veth-nat br br-nat br-nat-brf}
[ "$(id -u)" = 0 ] || { echo "split.sh makes network namespaces: run it as root" >&2; exit 1; }
for t in iperf3 nft python3 ip; do
	command -v $t >/dev/null || { echo "split.sh needs $t: apt-get install iperf3 nftables python3 iproute2" >&2; exit 1; }
done
H=anka-split-h$$
G=anka-split-g$$
OUT=$(mktemp)
cleanup() {
	ip netns pids $H 2>/dev/null | xargs -r kill 2>/dev/null
	ip netns del $H 2>/dev/null
	ip netns del $G 2>/dev/null
	rm -f "$OUT"
}
trap cleanup EXIT
ip netns add $H && ip netns add $G || exit 1
h() { ip netns exec $H "$@"; }
g() { ip netns exec $G "$@"; }
h ip link set lo up
g ip link set lo up

setup() { # config mtu
	h ip link del fp0 2>/dev/null
	h ip link del br0 2>/dev/null
	h nft flush ruleset
	if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
		local nf=1
		case $1 in *nonf*) nf=0 ;; esac
		h sysctl -qw net.bridge.bridge-nf-call-iptables=$nf net.bridge.bridge-nf-call-ip6tables=$nf net.bridge.bridge-nf-call-arptables=$nf
	fi
	h ip link add fp0 mtu $2 type veth peer name eth0 mtu $2 netns $G
	case $1 in
	veth*) h ip addr add 10.66.0.1/24 dev fp0 ;;
	br*)
		h ip link add br0 mtu $2 type bridge
		h ip addr add 10.66.0.1/24 dev br0
		h ip link set fp0 master br0
		h ip link set br0 up ;;
	esac
	h ip link set fp0 up
	case $1 in *nat*)
		h nft add table inet t
		h nft "add chain inet t post { type nat hook postrouting priority 100; }"
		h nft add rule inet t post ip saddr 10.66.0.0/24 ip daddr != 10.66.0.0/24 masquerade
		h nft "add chain inet t fw { type filter hook forward priority 0; }"
		h nft add rule inet t fw iifname br0 oifname br0 accept ;;
	esac
	local mac
	mac=$(g cat /sys/class/net/eth0/address)
	case $1 in *brf*)
		h nft add table bridge b
		h nft "add chain bridge b pre { type filter hook prerouting priority -300; }"
		h nft "add chain bridge b vm"
		h nft "add map bridge b ports { type ifname : verdict; }"
		h nft add element bridge b ports "{ fp0 : jump vm }"
		h nft add rule bridge b pre iifname vmap @ports
		h nft add rule bridge b vm ether saddr != $mac drop
		h nft add rule bridge b vm ether type ip ip saddr != 10.66.0.2 drop
		h nft add rule bridge b vm ether type arp arp saddr ip != 10.66.0.2 drop ;;
	esac
	g ip addr flush dev eth0
	g ip addr add 10.66.0.2/24 dev eth0
	g ip link set eth0 up
	for _ in $(seq 50); do g ping -c1 -W1 10.66.0.1 >/dev/null 2>&1 && break; sleep 0.1; done
}

run() { # direction
	local r=""
	[ $1 = h2g ] && r=-R
	h pkill iperf3
	h iperf3 -s -D >/dev/null 2>&1
	sleep 0.3
	g iperf3 -c 10.66.0.1 -t $DUR -O 1 $r -J 2>/dev/null | python3 -c '
import json, sys
e = json.load(sys.stdin)["end"]; c = e["cpu_utilization_percent"]; s = e["sum_received"]
print("%.2f %.0f" % (s["bits_per_second"] / 1e9, (c["host_total"] + c["remote_total"]) / 100 * s["seconds"] * 1e9 / (s["bytes"] / 1024)))' 2>/dev/null || echo "nan nan"
}

for mtu in $MTUS; do
	for round in $(seq $ROUNDS); do
		for c in $CONFIGS; do
			setup $c $mtu
			for d in g2h h2g; do
				read -r gbit cpu < <(run $d)
				echo "$mtu $c $d $gbit $cpu" >>"$OUT"
				echo "mtu $mtu round $round $c $d: $gbit Gbit/s, $cpu ns CPU per KiB (load $(cut -d' ' -f1 /proc/loadavg))"
			done
		done
	done
done
python3 - "$OUT" <<'PY'
import collections, math, statistics, sys
gb, cpu = collections.defaultdict(list), collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    mtu, c, d, g, n = line.split()
    if (mtu, c) not in order:
        order.append((mtu, c))
    if g != "nan":
        gb[(mtu, c, d)].append(float(g)); cpu[(mtu, c, d)].append(float(n))
print("\n| MTU | set-up | g2h Gbit/s (min-max) | x veth | h2g Gbit/s (min-max) | x veth | CPU ns/KiB g2h / h2g | x veth |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
med = lambda xs: statistics.median(xs) if xs else math.nan
for mtu, c in order:
    row = [mtu, c]
    for d in ("g2h", "h2g"):
        xs = gb[(mtu, c, d)]
        base = med(gb[(mtu, "veth", d)])
        row += ["%.1f (%.1f-%.1f)" % (med(xs), min(xs, default=math.nan), max(xs, default=math.nan)), "%.2f" % (med(xs) / base)]
    cg, ch = med(cpu[(mtu, c, "g2h")]), med(cpu[(mtu, c, "h2g")])
    bg, bh = med(cpu[(mtu, "veth", "g2h")]), med(cpu[(mtu, "veth", "h2g")])
    row += ["%.0f / %.0f" % (cg, ch), "%.2f / %.2f" % (cg / bg, ch / bh)]
    print("| " + " | ".join(row) + " |")
PY

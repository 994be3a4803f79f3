#!/usr/bin/env bash
# Builds the test guest: OUTDIR/vmlinuz (Debian's cloud kernel) and
# OUTDIR/initrd.img (a busybox initramfs whose /init is test/guest/init).
#
#   test/guest/build.sh OUTDIR [CACHEDIR]
#
# CACHEDIR (or $GUEST_CACHE) holds the downloaded kernel .deb and its
# extracted tree; default OUTDIR/.cache. Nothing is installed on the host:
# the kernel package is fetched with `apt-get download` and unpacked with
# `dpkg-deb -x`. Set FORCE=1 to rebuild even when the outputs look current.
# See README.md beside this file.
set -euo pipefail

die() { echo "build.sh: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

[ $# -ge 1 ] && [ -n "$1" ] || die "usage: $0 OUTDIR [CACHEDIR]"

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
CACHE=${2:-${GUEST_CACHE:-$OUT/.cache}}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

# Guest files copied into the initramfs (all but docs), plus this script.
GUEST_FILES=(init udhcpc.script power-button.sh udpecho/main.go)
BUSYBOX=/bin/busybox

# Modules the guest needs; their dependencies are resolved from the
# depends= lines of the .ko files, so a kernel bump keeps working.
#   virtio_pci  the PCI transport QEMU's virtio devices sit on
#   virtio_net  the NIC (this kernel has no e1000: use virtio-net-pci)
#   virtio_blk  disks, for tests that attach one
#   button      ACPI power button (QEMU system_powerdown)
#   evdev       /dev/input/event*, which busybox acpid reads
WANT_MODULES=(virtio_pci virtio_net virtio_blk button evdev)

# Builds of one OUTDIR (make and tests running at once) take turns.
if command -v flock >/dev/null; then
	exec 9>"$OUT/.build.lock"
	flock 9
fi

# --- up to date? -----------------------------------------------------------
up_to_date() {
	[ "${FORCE:-0}" = 1 ] && return 1
	[ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] || return 1
	local f
	for f in "$SRC/build.sh" "${GUEST_FILES[@]/#/$SRC/}" "$BUSYBOX"; do
		[ -e "$f" ] || return 1
		[ "$OUT/initrd.img" -nt "$f" ] || return 1
	done
	return 0
}
if up_to_date; then
	log "$OUT/vmlinuz and $OUT/initrd.img are up to date"
	exit 0
fi

# --- host tools (the Makefile installs them; this script never does) -----
pkg_installed() {
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}
missing=()
pkg_installed busybox-static && [ -x "$BUSYBOX" ] || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
for tool in apt-get apt-cache dpkg-deb gzip find; do
	command -v "$tool" >/dev/null || die "'$tool' not found; this script needs a Debian host"
done
if [ ${#missing[@]} -gt 0 ]; then
	die "missing package(s): ${missing[*]} (install with: apt-get install -y ${missing[*]})"
fi
for f in "${GUEST_FILES[@]}"; do
	[ -f "$SRC/$f" ] || die "missing guest file $SRC/$f"
done

# --- kernel package ---------------------------------------------------------
# linux-image-cloud-amd64 is a metapackage; it depends on the real,
# versioned package (linux-image-6.1.0-NN-cloud-amd64).
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
	sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*-cloud-amd64\) *$/\1/p' | head -n1 || true)
DEB=
if [ -n "$KPKG" ]; then
	DEB=$(ls -t "$CACHE/${KPKG}"_*_amd64.deb 2>/dev/null | head -n1 || true)
	if [ -z "$DEB" ]; then
		log "downloading $KPKG into $CACHE"
		dl=$(mktemp -d "$CACHE/download.XXXXXX")
		# apt drops to the _apt user for downloads when run as root; let it
		# write here. If it still cannot (a parent dir it may not enter) apt
		# downloads unsandboxed and warns: harmless, so that line is dropped.
		chmod 0755 "$dl"
		if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
			chown _apt "$dl" 2>/dev/null || true
		fi
		if ! (cd "$dl" && apt-get download -q "$KPKG" >&2) 2> >(grep -v 'unsandboxed as root' >&2); then
			rm -rf "$dl"
			die "apt-get download $KPKG failed (is an apt mirror reachable? try apt-get update)"
		fi
		mv "$dl"/*.deb "$CACHE"/
		rm -rf "$dl"
		DEB=$(ls -t "$CACHE/${KPKG}"_*_amd64.deb | head -n1)
	fi
else
	# No apt lists (offline, no apt-get update): fall back to a cached package.
	DEB=$(ls -t "$CACHE"/linux-image-*-cloud-amd64_*_amd64.deb 2>/dev/null | head -n1 || true)
	[ -n "$DEB" ] || die "apt-cache knows no linux-image-cloud-amd64 and $CACHE has no kernel .deb (run apt-get update)"
	log "apt-cache has no linux-image-cloud-amd64; using cached $(basename "$DEB")"
fi

# Unpack once per package version (dpkg-deb -x, never dpkg -i).
TREE="$CACHE/$(basename "$DEB" .deb)"
if [ ! -e "$TREE/.extracted" ]; then
	log "extracting $(basename "$DEB")"
	rm -rf "$TREE" "$TREE.tmp"
	dpkg-deb -x "$DEB" "$TREE.tmp"
	touch "$TREE.tmp/.extracted"
	mv "$TREE.tmp" "$TREE"
fi

VMLINUZ=$(ls "$TREE"/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
[ -n "$VMLINUZ" ] || die "no boot/vmlinuz-* in $(basename "$DEB")"
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR="$TREE/lib/modules/$KVER"
[ -d "$MODDIR/kernel" ] || die "no lib/modules/$KVER/kernel in $(basename "$DEB")"

# --- module list --------------------------------------------------------------
# Index every module by name (file name with '-' as '_', as the kernel does).
declare -A KO=()
while IFS= read -r -d '' f; do
	n=${f##*/}
	n=${n%.ko*}
	KO[${n//-/_}]=$f
done < <(find "$MODDIR/kernel" -name '*.ko*' -print0)
[ ${#KO[@]} -gt 0 ] || die "no modules found in $MODDIR"

if find "$MODDIR/kernel" -name '*.ko.*' | grep -q .; then
	# 6.1 ships plain .ko; busybox insmod cannot read compressed ones.
	die "modules in $KVER are compressed; build.sh only handles plain .ko files"
fi

# The modinfo section is a run of NUL-terminated key=value strings.
ko_depends() {
	tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}

ORDER=()
declare -A SEEN=()
# Depth-first, dependencies before dependents. Built-in modules (in
# modules.builtin) have no .ko and need no loading.
add_module() {
	local m=${1//-/_} d
	[ -n "${SEEN[$m]:-}" ] && return 0
	SEEN[$m]=1
	if [ -z "${KO[$m]:-}" ]; then
		if grep -qE "/${m//_/[-_]}\.ko" "$MODDIR/modules.builtin" 2>/dev/null; then
			return 0
		fi
		die "kernel $KVER has no module '$m' (neither a .ko nor built in)"
	fi
	for d in $(ko_depends "${KO[$m]}"); do
		add_module "$d"
	done
	ORDER+=("$m")
}
for m in "${WANT_MODULES[@]}"; do
	add_module "$m"
done

# --- initramfs ----------------------------------------------------------------
STAGE=$(mktemp -d "$CACHE/initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc/acpi/PWRF,proc,sys,dev,tmp,run,var/log,www,lib/modules,root}
cp "$BUSYBOX" "$STAGE/bin/busybox"
chmod 0755 "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"
install -m 0755 "$SRC/init" "$STAGE/init"
install -m 0755 "$SRC/udhcpc.script" "$STAGE/etc/udhcpc.script"
# busybox acpid maps the power button (KEY_POWER) to the action PWRF/00000080,
# which it runs from its config dir /etc/acpi.
install -m 0755 "$SRC/power-button.sh" "$STAGE/etc/acpi/PWRF/00000080"
# UDP echo on port 7 (busybox nc has no UDP): a static Go binary.
command -v go >/dev/null || die "go not found: the guest's UDP echo service is built with Go (see README.md)"
(cd "$SRC/udpecho" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$STAGE/bin/udpecho" .) || die "building udpecho failed"
for m in "${ORDER[@]}"; do
	cp "${KO[$m]}" "$STAGE/lib/modules/$m.ko"
done
printf '%s\n' "${ORDER[@]}" >"$STAGE/lib/modules/load-order"
echo "$KVER" >"$STAGE/etc/anka-guest-kernel"
# No /dev/console here: the kernel's built-in initramfs (unpacked before
# this one) already has it, so /init gets the console as stdin/stdout.
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
printf 'root:x:0:\n' >"$STAGE/etc/group"

(
	cd "$STAGE"
	{
		find . -mindepth 1 | LC_ALL=C sort
	} | cpio --quiet -o -H newc -R 0:0
) | gzip -9 -n >"$OUT/initrd.img.tmp"
cp "$VMLINUZ" "$OUT/vmlinuz.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"

log "kernel $KVER, modules: ${ORDER[*]}"
log "wrote $OUT/vmlinuz and $OUT/initrd.img ($(du -k "$OUT/initrd.img" | cut -f1) KiB)"

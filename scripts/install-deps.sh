#!/bin/sh
# Installs what vmwatch's demo and tests need on Debian 12, with apt, when
# it is missing. Run as root (or with sudo available).
set -eu
# Every program the code, the tests and the Makefile run comes from one of
# these (or from an Essential package); internal/depscheck's TestDeps proves it.
# pahole: BTF for the 6.12 test modules; debootstrap, e2fsprogs: the system
# guest image; bpftool: ground truth for planted attacks and tracing tests;
# gdb: opens the process cores vmwatch extracts.
PKGS="qemu-system-x86 qemu-utils qemu-guest-agent openssh-server openssh-client busybox-static cpio xz-utils zstd time gcc make libc6-dev binutils libyara-dev pkg-config chromium libvirt-daemon-system libvirt-clients pahole debootstrap e2fsprogs bpftool iproute2 nftables tcpdump gdb"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# the test kernels come from apt's lists: refresh them when they are missing or a day old
lists_fresh=$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n 1)
if [ -n "$missing" ] || [ -z "$lists_fresh" ]; then
	echo "install-deps: apt-get update" >&2
	$SUDO apt-get update -q >/dev/null
fi
if [ -n "$missing" ]; then
	echo "install-deps: installing$missing" >&2
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
command -v go >/dev/null || { echo "install-deps: Go is not installed (https://go.dev/dl/, 1.26 or newer)" >&2; exit 1; }

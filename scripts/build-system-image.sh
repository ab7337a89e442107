#!/bin/sh
# Builds the real Debian 12 system guest of the tests: debootstrap from the
# mirror apt already uses, the services a user's VM runs (systemd, udev,
# dbus, sshd, cron, rsyslog, nginx, exim4, nodejs, python3, nftables,
# apparmor), the given Debian kernel packages with the distribution's own
# initramfs, and a root shell on ttyS0 for the tests' ground truth.
#
#   build-system-image.sh OUTDIR KERNEL.deb...
#
# OUTDIR gets disk.img (raw ext4, the root file system, sparse), boot/
# (each kernel's vmlinuz and initrd.img, for direct kernel boot) and
# packages.txt (dpkg-query of the image). testvm calls it (cached under
# $VMWATCH_CACHE/images, keyed by this script and the kernels); so does
# `make deps`. Nothing is mounted but the chroot's /proc, /sys and /dev.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 OUTDIR KERNEL.deb..." >&2; exit 2; }
OUT=$1
shift
[ "$(id -u)" -eq 0 ] || { echo "$0: must run as root (debootstrap, chroot)" >&2; exit 1; }
for d in "$@"; do [ -f "$d" ] || { echo "$0: no kernel package $d" >&2; exit 1; }; done

# the mirror apt uses (deb822 .sources or one-line sources.list)
mirror() { # $1: suite to look for
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk -v suite="$1" '
			/^URIs:/ { uri = $2 }
			/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) found = uri }
			/^$/ { uri = "" }
			END { if (found != "") print found }' "$f"
	done | head -n 1
	cat /etc/apt/sources.list 2>/dev/null | awk -v suite="$1" '$1 == "deb" && $3 == suite { print $2; exit }'
}
MIRROR=$(mirror bookworm | head -n 1)
SECURITY=$(mirror bookworm-security | head -n 1)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
[ -n "$SECURITY" ] || SECURITY=http://deb.debian.org/debian-security

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vmwatch-image.XXXXXX")
ROOT=$WORK/root
cleanup() {
	for m in dev/pts dev sys proc; do
		mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m"
	done
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

log() { echo "build-system-image: $*" >&2; }

log "debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
	{ tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }

cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
# no service starts inside the chroot
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
mount -t proc proc "$ROOT/proc"
mount -t sysfs sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"

in_root() { chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

PKGS="systemd-sysv udev dbus kmod procps iproute2 iputils-ping psmisc less
openssh-server openssh-client cron rsyslog nginx-light exim4-daemon-light
nodejs python3 nftables apparmor bpftool dwarves xz-utils ca-certificates
initramfs-tools linux-base"
log "installing the system's packages"
in_root apt-get update -q >"$WORK/apt.log" 2>&1 || { tail -n 30 "$WORK/apt.log" >&2; exit 1; }
# shellcheck disable=SC2086
in_root apt-get install -y -q --no-install-recommends $PKGS >>"$WORK/apt.log" 2>&1 ||
	{ tail -n 30 "$WORK/apt.log" >&2; exit 1; }

log "installing the kernels: $*"
mkdir -p "$ROOT/tmp/kernels"
for d in "$@"; do cp "$d" "$ROOT/tmp/kernels/"; done
in_root sh -c 'apt-get install -y -q --no-install-recommends /tmp/kernels/*.deb' >>"$WORK/apt.log" 2>&1 ||
	{ tail -n 30 "$WORK/apt.log" >&2; exit 1; }
rm -rf "$ROOT/tmp/kernels"

log "configuring"
echo vmwatch-system >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvmwatch-system\n::1\tlocalhost ip6-localhost\n' >"$ROOT/etc/hosts"
printf '/dev/vda\t/\text4\trw,errors=remount-ro\t0\t1\n' >"$ROOT/etc/fstab"
# root logs in without a password on the console (the tests use the shell
# service below); sshd takes the key made here
in_root passwd -d root >/dev/null
mkdir -p "$ROOT/root/.ssh"
in_root ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519
cp "$ROOT/root/.ssh/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
printf 'Host *\n\tStrictHostKeyChecking no\n\tUserKnownHostsFile /dev/null\n\tLogLevel ERROR\n' >"$ROOT/root/.ssh/config"
chmod 700 "$ROOT/root/.ssh"

# the network: DHCP on the virtio NIC (QEMU's user network with restrict=on:
# an address, no route out)
mkdir -p "$ROOT/etc/systemd/network"
printf '[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n' >"$ROOT/etc/systemd/network/50-dhcp.network"

# the tests' shell on ttyS0, as the busybox guests have it: the tty ignores
# modem lines (a host disconnect must not hang it up) and does not echo;
# the marker on the console says the tty is open (the host sends nothing
# before it: bytes that reach the UART before the port is opened are cut)
mkdir -p "$ROOT/usr/local/sbin"
cat >"$ROOT/usr/local/sbin/vmwatch-shell" <<'EOF'
#!/bin/sh
stty -F /dev/ttyS0 clocal -hupcl -echo -isig 115200
exec </dev/ttyS0 >/dev/ttyS0 2>&1
echo "vmwatch-guest shell up" >/dev/console
cd /root
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cat | /bin/sh
EOF
chmod 755 "$ROOT/usr/local/sbin/vmwatch-shell"
cat >"$ROOT/etc/systemd/system/vmwatch-shell.service" <<'EOF'
[Unit]
Description=vmwatch test shell on ttyS0
After=systemd-user-sessions.service
Conflicts=serial-getty@ttyS0.service

[Service]
ExecStart=/usr/local/sbin/vmwatch-shell
Restart=always
RestartSec=0
KillMode=process
IgnoreSIGPIPE=no

[Install]
WantedBy=multi-user.target
EOF

# a JIT runtime and an interpreter as services, as users run them
mkdir -p "$ROOT/opt/vmwatch"
cat >"$ROOT/opt/vmwatch/app.js" <<'EOF'
// a small web service: node compiles it (V8's JIT) into anonymous executable memory
const http = require('http');
let n = 0;
http.createServer((req, res) => { n++; res.end('vmwatch ' + n + '\n'); }).listen(3000, '127.0.0.1');
setInterval(() => { let s = 0; for (let i = 0; i < 1e5; i++) s += Math.sqrt(i); }, 1000);
EOF
cat >"$ROOT/opt/vmwatch/worker.py" <<'EOF'
# a long-running Python worker with a listener on loopback
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"py\n")
    def log_message(self, *a): pass
socketserver.TCPServer(("127.0.0.1", 8000), H).serve_forever()
EOF
for svc in node:"/usr/bin/node /opt/vmwatch/app.js" py:"/usr/bin/python3 /opt/vmwatch/worker.py"; do
	name=${svc%%:*}
	cmd=${svc#*:}
	cat >"$ROOT/etc/systemd/system/vmwatch-$name.service" <<EOF
[Unit]
Description=vmwatch test workload ($name)
After=network.target

[Service]
ExecStart=$cmd
Restart=always
User=www-data

[Install]
WantedBy=multi-user.target
EOF
done

in_root systemctl enable vmwatch-shell.service vmwatch-node.service vmwatch-py.service systemd-networkd.service >/dev/null 2>&1
# nothing waits for a network that has no route out; no timers reach for the
# mirror; the console belongs to the kernel log (ttyS1), not to a getty
for u in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
	man-db.timer e2scrub_all.timer fstrim.timer serial-getty@ttyS0.service serial-getty@ttyS1.service; do
	ln -sf /dev/null "$ROOT/etc/systemd/system/$u"
done

in_root dpkg-query -W -f '${Package} ${Version}\n' >"$WORK/packages.txt"
in_root apt-get clean
rm -f "$ROOT/usr/sbin/policy-rc.d"
rm -rf "$ROOT/var/lib/apt/lists/"* "$ROOT/var/cache/apt/"*.bin
for m in dev/pts dev sys proc; do umount -l "$ROOT/$m"; done

log "making the disk image"
mkdir -p "$WORK/out/boot"
cp "$ROOT"/boot/vmlinuz-* "$ROOT"/boot/initrd.img-* "$WORK/out/boot/"
mv "$WORK/packages.txt" "$WORK/out/"
mkfs.ext4 -q -F -L vmwatch-root -d "$ROOT" "$WORK/out/disk.img" 4G
rm -rf "$OUT.tmp"
mkdir -p "$(dirname "$OUT")"
mv "$WORK/out" "$OUT.tmp"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
log "done: $OUT"

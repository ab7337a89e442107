#!/bin/sh
in_root() { chroot "$root" "$@"; }
helper() { grep -q x /etc/passwd | sort; }
SUDO=sudo
$SUDO mkfs.ext4 -q img
helper
echo hi | tr a b
x=$(uname -r)
command -v wget >/dev/null
env A=1 nice -n 19 xz -d f
in_root apt-get install nginx
chroot "$root" systemctl enable ssh
cat <<EOT | tee out
not a command
EOT
"$qemu" -m 1

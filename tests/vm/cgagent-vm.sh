#!/bin/bash
# A throwaway cgroup v2 + systemd (PID 1) test host under qemu: Debian 12 kernel (extracted, never
# installed on this machine) + debootstrap rootfs + busybox initramfs. No network device.
#
#   cgagent-vm.sh build           once (~1-2 min); cached in $CGAGENT_VM_DIR (default /var/tmp/cgagent-vm).
#                                 The project's Python deps (+pytest) are installed into the image from
#                                 wheels pip fetches on this host: the VM has no network.
#   cgagent-vm.sh run PROJ JOB    boot; PROJ is shared read-only at /mnt/project, JOB read-write at
#                                 /mnt/job; runs JOB/run.sh as root once boot has finished, writes
#                                 JOB/out/{log,rc,console.log}, powers off. Exit status = run.sh's
#                                 (99 = no result). The disk is a snapshot: every run starts clean.
#   cgagent-vm.sh ready           exit 0 when the image is built and qemu is installed.
#
# Env: CGAGENT_VM_DIR, MIRROR, CGAGENT_VM_ACCEL (kvm|tcg), CGAGENT_VM_TIMEOUT (s, 900), CGAGENT_VM_MEM (2G),
#      CGAGENT_VM_SMP (2), PIP (pip used to fetch the Python deps), PROJECT (for pyproject.toml)
set -euo pipefail
W=${CGAGENT_VM_DIR:-/var/tmp/cgagent-vm}
SELF=$(readlink -f "$0")
HERE=$(dirname "$SELF")
PROJECT=${PROJECT:-$(cd "$HERE/../.." && pwd)}
PIP=${PIP:-$PROJECT/.venv/bin/pip}
case $PIP in /*) ;; *) PIP=$PWD/$PIP ;; esac   # build() changes directory
MIRROR=${MIRROR:-$( { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } \
  | awk '/^URIs:/{u=u?u:$2} /^deb /{u=u?u:$2} END{print u}')}
# nftables/iproute2: bridge networking and published ports; busybox-static: the test images;
# tini: the --init process; runc, bubblewrap: what `make bench` compares launches with (bench/vm.py)
PKGS=systemd,systemd-sysv,dbus,python3,procps,kmod,udev,nftables,iproute2,busybox-static,tini,runc,bubblewrap
INITRD_MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
  crc32c-intel crc32c_generic crc16 mbcache jbd2 ext4 netfs fscache 9pnet 9pnet_virtio 9p"
PRUNE="sound drivers/gpu drivers/media drivers/infiniband drivers/net/wireless drivers/net/ethernet
  drivers/iio drivers/usb drivers/staging drivers/bluetooth net/bluetooth net/mac80211 net/wireless"

kver() { ls "$W/kernel/lib/modules" | head -n1; }

# what the image depends on: rebuild when this script or the Python dependency list changes
stamp() {
  { cat "$SELF"; python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"])' \
      "$PROJECT/pyproject.toml"; } | sha256sum | cut -c1-16
}

ready() { [ -f "$W/image.stamp" ] && [ "$(cat "$W/image.stamp")" = "$(stamp)" ] && [ -s "$W/rootfs.img" ] \
          && command -v qemu-system-x86_64 >/dev/null; }

build() {
  mkdir -p "$W"
  exec 9>"$W/build.lock"; flock 9    # one build at a time (running VMs keep their open image)
  if ready; then echo "VM image is up to date: $W/rootfs.img"; return; fi
  mkdir -p "$W/debs" && cd "$W"
  # 1. kernel: download + extract only
  if [ ! -d kernel/boot ]; then
    apt-get update -qq
    dep=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    (cd debs && apt-get download linux-image-amd64 "$dep" 2>&1 | grep -v unsandboxed || true)
    dpkg -x debs/"$dep"_*.deb kernel
  fi
  K=$(kver); depmod -b kernel "$K"
  [ -s "vmlinux-$K" ] || python3 -c 'import lzma,sys; d=open(sys.argv[1],"rb").read(); \
    open(sys.argv[2],"wb").write(lzma.LZMADecompressor().decompress(d[d.find(b"\xfd7zXZ\0"):]))' \
    "kernel/boot/vmlinuz-$K" "vmlinux-$K"    # Debian's bzImage is XZ inside; qemu boots the ELF via PVH

  # 2. rootfs
  if [ ! -x rootfs/usr/bin/systemctl ] || [ "$(cat rootfs/.cgagent-pkgs 2>/dev/null)" != "$PKGS" ]; then
    rm -rf rootfs
    debootstrap --variant=minbase --include="$PKGS" bookworm rootfs "$MIRROR"
    echo "$PKGS" > rootfs/.cgagent-pkgs
  fi
  R=$W/rootfs
  echo cgagent-vm > "$R/etc/hostname"
  echo '/dev/vda / ext4 rw,relatime 0 0' > "$R/etc/fstab"
  chroot "$R" passwd -d root >/dev/null
  ln -sf /dev/null "$R/etc/systemd/system/systemd-firstboot.service"
  ln -sf /dev/null "$R/etc/systemd/system/e2scrub_reap.service"
  rm -rf "$R/usr/lib/modules/$K"; mkdir -p "$R/usr/lib/modules"
  cp -a "kernel/lib/modules/$K" "$R/usr/lib/modules/"
  for p in $PRUNE; do rm -rf "$R/usr/lib/modules/$K/kernel/$p"; done
  depmod -b "$R" "$K"

  # 3. Python deps of the project (+pytest), from wheels fetched here, for the VM's python3.11
  rm -rf "$R/opt/cgagent-pylib"
  deps=$(python3 -c 'import tomllib,sys; print("\n".join(tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"]))' \
           "$PROJECT/pyproject.toml")
  # shellcheck disable=SC2086
  # (this host's Python and the VM's are both Debian 12's 3.11 on x86_64: the same wheels fit)
  "$PIP" install -q --target "$R/opt/cgagent-pylib" pytest $(echo "$deps" | tr '\n' ' ')

  # 4. the job runner: mount the shares, run run.sh, keep its log and status, power off
  mkdir -p "$R/mnt/project" "$R/mnt/job" "$R/usr/local/sbin"
  cat > "$R/usr/local/sbin/cgagent-vm-run" <<'EOF'
#!/bin/bash
o="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$o,ro" project /mnt/project || exit 1
mount -t 9p -o "$o" job /mnt/job || exit 1
mkdir -p /mnt/job/out
timeout 300 systemctl is-system-running --wait >/dev/null
echo "cgagent-vm: run.sh starting, uptime $(cut -d' ' -f1 /proc/uptime)s"
cd /mnt/job
bash ./run.sh 2>&1 | tee /mnt/job/out/log
rc=${PIPESTATUS[0]}
echo $rc > /mnt/job/out/rc
echo "cgagent-vm: run.sh exited $rc, uptime $(cut -d' ' -f1 /proc/uptime)s"
sync
EOF
  chmod 755 "$R/usr/local/sbin/cgagent-vm-run"
  cat > "$R/etc/systemd/system/cgagent-vm-run.service" <<'EOF'
[Unit]
Description=cgagent VM: run /mnt/job/run.sh, then power off
ConditionKernelCommandLine=cgagent.run=1
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=simple
ExecStart=/usr/local/sbin/cgagent-vm-run
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
EOF
  mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
  ln -sf ../cgagent-vm-run.service "$R/etc/systemd/system/multi-user.target.wants/cgagent-vm-run.service"
  rm -f "$R"/var/cache/apt/archives/*.deb; rm -rf "$R"/var/lib/apt/lists/*

  # 5. busybox initramfs: insmod, mount /dev/vda, switch_root to systemd
  I=$W/initramfs; rm -rf "$I"; mkdir -p "$I"/{bin,dev,proc,sys,newroot,lib/modules}
  cp /bin/busybox "$I/bin/busybox"
  for m in $INITRD_MODS; do
    f=$(modprobe -d kernel -S "$K" -n --show-depends "$m" | awk 'END{print $2}')
    cp "$f" "$I/lib/modules/$m.ko"; echo "$m" >> "$I/modules"
  done
  cat > "$I/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
fail() { echo "cgagent-vm initramfs: $*"; sleep 1; reboot -f; }
for m in $(cat /modules); do insmod /lib/modules/$m.ko 2>/dev/null || echo "insmod $m failed"; done
n=0; while [ ! -b /dev/vda ]; do n=$((n+1)); [ $n -gt 100 ] && fail "no /dev/vda"; sleep 0.1; done
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda"
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/init "$@"
EOF
  chmod 755 "$I/init"
  (cd "$I" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null | gzip -1) > "$W/initrd.img"

  # 6. ext4 image (sparse)
  rm -f "$W/rootfs.img"
  mkfs.ext4 -q -F -L cgagentvm -d "$R" "$W/rootfs.img" 3G
  stamp > "$W/image.stamp"
  echo "VM image built: $W/rootfs.img"
}

accel() {  # kvm only where it is real VMX/SVM KVM (a PVM /dev/kvm cannot run a stock kernel)
  if [ -n "${CGAGENT_VM_ACCEL:-}" ]; then echo "$CGAGENT_VM_ACCEL"
  elif [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then echo kvm
  else echo tcg; fi
}

run() {
  local proj job K
  proj=$(realpath "$1"); job=$(realpath "$2")
  [ -f "$job/run.sh" ] || { echo "no $job/run.sh" >&2; exit 2; }
  ready || { echo "no VM image (or no qemu): run make test-vm-image" >&2; exit 2; }
  rm -rf "$job/out"; mkdir -p "$job/out"
  K=$(kver)
  case $(accel) in
    kvm) Q=(qemu-system-x86_64 -accel kvm -cpu host) ;;
    *)   Q=(qemu-system-x86_64 -accel tcg,thread=multi -cpu max) ;;
  esac
  Q+=(-m "${CGAGENT_VM_MEM:-2G}" -smp "${CGAGENT_VM_SMP:-2}"
     -nodefaults -no-user-config -nic none -display none -no-reboot -serial stdio
     -kernel "$W/vmlinux-$K" -initrd "$W/initrd.img"
     -append "console=ttyS0 root=/dev/vda panic=-1 quiet systemd.unified_cgroup_hierarchy=1 cgagent.run=1"
     -drive "file=$W/rootfs.img,if=virtio,format=raw,snapshot=on"
     -virtfs "local,path=$proj,mount_tag=project,security_model=none,readonly=on,id=project"
     -virtfs "local,path=$job,mount_tag=job,security_model=none,id=job")
  set +e
  # qemu exits when the guest powers off; timeout kills it if it hangs
  timeout -k 10 "${CGAGENT_VM_TIMEOUT:-900}" "${Q[@]}" < /dev/null > "$job/out/console.log" 2>&1
  local qrc=$?
  set -e
  if [ -f "$job/out/rc" ]; then exit "$(cat "$job/out/rc")"; fi
  echo "no result (qemu/timeout rc $qrc); see $job/out/console.log" >&2; exit 99
}

case "${1:-}" in
  build) build ;;
  ready) ready ;;
  run) run "${2:?usage: $0 run PROJECT JOB}" "${3:?usage: $0 run PROJECT JOB}" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac

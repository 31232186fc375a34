#!/bin/bash
# Adapted for cbtbackup's kernel tests from the VM script the team was given: the module source comes from
# third_party/, busybox-static is installed (virtme-ng needs it to boot without an initramfs), the guest
# leaves $OUT/booted so that callers can tell "the VM never started" from "the command failed", and there
# is no default command.
#
# run-in-vm.sh — boot Debian's stock 6.1 kernel in a throwaway QEMU VM whose root is this machine's
# own filesystem (virtme-ng, read-only 9p + tmpfs overlays), load the REAL Veeam blksnap VAL-7.0
# modules (bdevfilter.ko + veeamblksnap.ko, built here against linux-headers-amd64), and run a command.
#
#   run-in-vm.sh COMMAND [ARG...]     a command and its arguments, or ONE argument = a bash snippet
#
# The command runs as root in the VM, in the current directory (read-only there, except /tmp,
# /etc, /var, /home, /usr, /lib, /opt, /srv and /mnt, which are throwaway tmpfs overlays), with
# /dev/veeamblksnap and /dev/bdevfilter present, the modules also installed for modprobe
# (`modprobe veeamblksnap` works), and the vendor CLI at /usr/sbin/blksnap when WITH_TOOLS=1.
# The script's exit status is the command's.
#
# Idempotent: packages are installed only when missing; the venv, the module build and the tools
# build are cached under $KVM_PROTO (default: a folder in $TMPDIR or /tmp) and reused while their inputs match.
#
# Environment knobs:
#   KVM_PROTO=DIR              cache directory
#   BLKSNAP_SRC=DIR            a checkout of veeam/blksnap branch VAL-7.0 (DIR/module/Makefile ...);
#                              default: unpacked from veeam-blksnap-VAL-7.0-src.tar.gz beside this script
#   WITH_TOOLS=0|1             also build the vendor's C++ CLI + cpp tests and put them in the VM
#   VM_ACCEL=auto|tcg|kvm      auto = kvm only if the CPU shows vmx/svm and kvm is not PVM
#   VM_MEM=2G VM_CPUS=2 VM_TIMEOUT=1200 (seconds, whole VM run)
#   VM_DISK_GB=N               attach a fresh N GiB sparse disk, ext4-formatted in the VM at /mnt/scratch
#                              (exported as SCRATCH and HOME): for tests that need more than RAM
#   VM_RWDIR=DIR               a host directory the VM may write (results); also exported as $OUT
#   MODULE_PARAMS="..."        parameters for veeamblksnap.ko (e.g. diff_storage_minimum=262144)
#   QUIET=1                    fewer progress lines on stderr
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KVM_PROTO="${KVM_PROTO:-${TMPDIR:-/tmp}/blksnap-vm}"
TARBALL="$HERE/../../third_party/veeam-blksnap/veeam-blksnap-VAL-7.0-src.tar.gz"
BLKSNAP_REF="${BLKSNAP_REF:-VAL-7.0}"
WITH_TOOLS="${WITH_TOOLS:-0}"
VM_ACCEL="${VM_ACCEL:-auto}"
VM_MEM="${VM_MEM:-2G}"
VM_CPUS="${VM_CPUS:-2}"
VM_TIMEOUT="${VM_TIMEOUT:-1200}"
MODULE_PARAMS="${MODULE_PARAMS:-}"
VNG_VERSION="${VNG_VERSION:-1.42}"

log() { [ "${QUIET:-0}" = 1 ] || echo "[run-in-vm $(date +%H:%M:%S)] $*" >&2; }
die() { echo "run-in-vm: $*" >&2; exit 2; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, loop devices in the VM)"
mkdir -p "$KVM_PROTO"
exec 9>"$KVM_PROTO/.lock"
flock 9  # one run at a time per cache dir

# ---------------------------------------------------------------- 1. packages
PKGS=(qemu-system-x86 linux-image-amd64 linux-headers-amd64 build-essential kmod udev python3-venv
      util-linux e2fsprogs busybox-static lvm2 thin-provisioning-tools)
[ "$WITH_TOOLS" = 1 ] && PKGS+=(cmake libboost-program-options-dev libboost-filesystem-dev uuid-dev libssl-dev)
missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	t=$(now)
	log "apt-get install ${missing[*]}"
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	log "packages installed in $(took "$t")"
fi

KVER="${KVER:-$(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sed 's|.*/vmlinuz-||' | sort -V | tail -1)}"
[ -n "$KVER" ] && [ -f "/boot/vmlinuz-$KVER" ] || die "no /boot/vmlinuz-*-amd64 (linux-image-amd64)"
[ -d "/lib/modules/$KVER/build" ] || die "no headers for $KVER (/lib/modules/$KVER/build)"

# ---------------------------------------------------------------- 2. virtme-ng venv
VENV="$KVM_PROTO/venv"
if ! "$VENV/bin/vng" --version >/dev/null 2>&1; then
	t=$(now)
	log "creating $VENV with virtme-ng==$VNG_VERSION"
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install -q "virtme-ng==$VNG_VERSION" >&2
	log "virtme-ng installed in $(took "$t")"
fi

export PATH="$VENV/bin:$PATH"  # vng runs virtme-run from PATH

# ---------------------------------------------------------------- 3. module source + build
SRC="$KVM_PROTO/src-$BLKSNAP_REF"
if [ -n "${BLKSNAP_SRC:-}" ]; then
	[ -f "$BLKSNAP_SRC/module/Makefile" ] || die "BLKSNAP_SRC=$BLKSNAP_SRC has no module/Makefile"
	SRC="$BLKSNAP_SRC"
	SRC_ID="dir:$(cd "$SRC" && find module tools lib tests include -type f 2>/dev/null | sort | xargs cat | sha1sum | cut -c1-12)"
elif [ -f "$TARBALL" ]; then
	SRC_ID="tar:$(sha1sum <"$TARBALL" | cut -c1-12)"
	if [ "$(cat "$SRC/.src-id" 2>/dev/null)" != "$SRC_ID" ]; then
		log "unpacking $(basename "$TARBALL")"
		rm -rf "$SRC" && mkdir -p "$SRC"
		tar -xzf "$TARBALL" -C "$SRC" --strip-components=1
		echo "$SRC_ID" >"$SRC/.src-id"
	fi
else
	die "no blksnap source: set BLKSNAP_SRC to a VAL-7.0 checkout (no Debian package ships it)"
fi

MODBUILD="$KVM_PROTO/module-$KVER"
STAMP="r2 $SRC_ID $KVER $(md5sum </lib/modules/$KVER/build/Module.symvers 2>/dev/null | cut -c1-8)"
if [ "$(cat "$MODBUILD/.stamp" 2>/dev/null)" != "$STAMP" ] || [ ! -f "$MODBUILD/veeamblksnap.ko" ]; then
	t=$(now)
	log "building bdevfilter.ko + veeamblksnap.ko for $KVER"
	rm -rf "$MODBUILD" && cp -a "$SRC/module" "$MODBUILD"
	make -s -j"$(nproc)" -C "/lib/modules/$KVER/build" M="$MODBUILD" modules >"$MODBUILD/build.log" 2>&1 ||
		{ tail -30 "$MODBUILD/build.log" >&2; die "module build failed"; }
	# module index for the VM, made here: a full depmod takes minutes under TCG over 9p, 3 s natively
	DM="$MODBUILD/depmod/lib/modules/$KVER"
	mkdir -p "$DM/extra"
	ln -s "/lib/modules/$KVER/kernel" "$DM/kernel"
	cp /lib/modules/$KVER/modules.{order,builtin,builtin.modinfo} "$DM/"
	cp "$MODBUILD/bdevfilter.ko" "$MODBUILD/veeamblksnap.ko" "$DM/extra/"
	depmod -a -b "$MODBUILD/depmod" "$KVER"
	echo "$STAMP" >"$MODBUILD/.stamp"
	log "modules built in $(took "$t")"
fi

TOOLBUILD="$KVM_PROTO/tools-build"
if [ "$WITH_TOOLS" = 1 ] && { [ "$(cat "$TOOLBUILD/.stamp" 2>/dev/null)" != "$SRC_ID" ] || [ ! -x "$TOOLBUILD/tools/blksnap/blksnap" ]; }; then
	t=$(now)
	log "building the vendor CLI (tools/blksnap) and cpp tests"
	rm -rf "$TOOLBUILD" && mkdir -p "$TOOLBUILD"
	(cd "$TOOLBUILD" && cmake "$SRC" -DCMAKE_BUILD_TYPE=Release >cmake.log 2>&1 &&
		make -j"$(nproc)" >make.log 2>&1) || { tail -30 "$TOOLBUILD/make.log" >&2; die "tools build failed"; }
	echo "$SRC_ID" >"$TOOLBUILD/.stamp"
	log "tools built in $(took "$t")"
fi

# ---------------------------------------------------------------- 4. accelerator
if [ "$VM_ACCEL" = auto ]; then
	VM_ACCEL=tcg
	if [ -c /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -d /sys/module/kvm_pvm ]; then
		VM_ACCEL=kvm
	fi
fi
VNG_ARGS=(--run "/boot/vmlinuz-$KVER" --memory "$VM_MEM" --cpus "$VM_CPUS")
if [ "$VM_ACCEL" = tcg ]; then
	VNG_ARGS+=(--disable-kvm)
else
	# nested KVM often cannot set IA32_ARCH_CAPABILITIES (qemu: "failed to set MSR 0x10a")
	VNG_ARGS+=(--qemu-opts="-cpu host,-arch-capabilities")
fi
[ -n "${VM_RWDIR:-}" ] && { mkdir -p "$VM_RWDIR"; VNG_ARGS+=(--rwdir="$VM_RWDIR"); }
if [ "${VM_DISK_GB:-0}" -gt 0 ]; then
	# a fresh sparse scratch disk (virtio-blk, /dev/vda in the VM), ext4 at /mnt/scratch = $SCRATCH = $HOME
	rm -f "$KVM_PROTO/scratch.img"
	truncate -s "${VM_DISK_GB}G" "$KVM_PROTO/scratch.img"
	VNG_ARGS+=(--disk "$KVM_PROTO/scratch.img")
fi

# ---------------------------------------------------------------- 5. guest script
RUN="$KVM_PROTO/run.$$"
mkdir -p "$RUN"
trap 'rm -rf "$RUN"' EXIT
[ $# -gt 0 ] || die "usage: run-in-vm.sh COMMAND [ARG...]"
if [ $# -eq 1 ]; then
	printf '%s\n' "$1" >"$RUN/cmd"  # one argument: a shell snippet ('cd x && make check')
else
	printf '%q ' "$@" >"$RUN/cmd"    # several: a command and its arguments
fi
cat >"$RUN/guest.sh" <<EOF
#!/bin/bash
# runs inside the VM
exec 2>&1  # one channel: the VM's separate stderr port loses its tail at power-off and interleaves badly
t0=\$(cut -d' ' -f1 /proc/uptime)
set -e
mount -t tmpfs -o size=50% vmmnt /mnt
export HOME=/tmp/vmhome OUT="${VM_RWDIR:-/tmp/out}" BLKSNAP_MODULE_DIR="$MODBUILD" KVER="$KVER"
if [ "${VM_DISK_GB:-0}" -gt 0 ]; then
	mkfs.ext4 -q -F /dev/vda
	mkdir -p /mnt/scratch
	mount /dev/vda /mnt/scratch
	export SCRATCH=/mnt/scratch HOME=/mnt/scratch/home
fi
mkdir -p \$HOME \$OUT
touch "\$OUT/booted"
# install the modules for modprobe/modinfo (into the /lib overlay: nothing reaches the host)
mkdir -p /lib/modules/$KVER/extra
cp "$MODBUILD/bdevfilter.ko" "$MODBUILD/veeamblksnap.ko" /lib/modules/$KVER/extra/
cp "$MODBUILD"/depmod/lib/modules/$KVER/modules.* /lib/modules/$KVER/
modprobe loop
modprobe bdevfilter
modprobe veeamblksnap $MODULE_PARAMS
for i in \$(seq 50); do [ -c /dev/veeamblksnap ] && [ -c /dev/bdevfilter ] && break; sleep 0.1; done
[ -c /dev/veeamblksnap ] || { echo "run-in-vm: /dev/veeamblksnap did not appear" >&2; exit 3; }
if [ -x "$TOOLBUILD/tools/blksnap/blksnap" ] && [ "$WITH_TOOLS" = 1 ]; then
	cp "$TOOLBUILD/tools/blksnap/blksnap" /usr/sbin/blksnap
	for t in "$TOOLBUILD"/tests/cpp/test_*; do cp "\$t" /usr/bin/blksnap-\$(basename "\$t"); done
fi
echo "[guest] kernel \$(uname -r), modules loaded at uptime \$(cut -d' ' -f1 /proc/uptime)s (init done at \${t0}s)" >&2
set +e
bash -c "\$(cat "$RUN/cmd")"
rc=\$?
echo "[guest] command exit \$rc at uptime \$(cut -d' ' -f1 /proc/uptime)s" >&2
exit \$rc
EOF
chmod +x "$RUN/guest.sh"

# ---------------------------------------------------------------- 6. boot + run
t=$(now)
log "booting $KVER ($VM_ACCEL, ${VM_CPUS} vCPU, $VM_MEM) to run: $*"
set +e
# timeout puts the VM in its own process group: stop it explicitly if this script is stopped
# (qemu re-opens /proc/self/fd/1 as a file: were stdout a regular file, it would write over it from offset
# 0, so stdout/stderr are handed over as pipes)
timeout -k 10 "$VM_TIMEOUT" "$VENV/bin/vng" "${VNG_ARGS[@]}" --exec "bash $RUN/guest.sh" </dev/null \
	> >(cat) 2> >(cat >&2) &
VMPID=$!
trap 'kill $VMPID 2>/dev/null || true; rm -rf "$RUN"' EXIT
trap 'exit 130' INT TERM
wait $VMPID
rc=$?
set -e
[ $rc -eq 124 ] && echo "run-in-vm: the VM ran past VM_TIMEOUT=$VM_TIMEOUT s and was stopped" >&2
log "VM finished in $(took "$t"), exit $rc"
exit $rc

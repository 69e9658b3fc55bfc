# SPDX-License-Identifier: GPL-2.0
"""Boots the guest kernel in QEMU and drives it.

A guest has three channels:
  * the console (ttyS0 on x86_64, the PL011 ttyAMA0 on arm64), appended to a
    log file the tests scan for splats;
  * a shell connected to a Unix socket, that runs commands (ttyS1 on
    x86_64; on arm64, whose virt machine has one UART, a virtio-serial port,
    which unlike a virtio console does not echo);
  * QMP, on another Unix socket, for the balloon device.

The target (VBRS_ARCH, VBRS_PAGE; see scripts/lib.sh) picks the kernel,
the emulator and the guest userland.
"""

import asyncio
import base64
import gzip
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qemu.qmp import ExecuteError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("VBRS_CACHE") or
             Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "virtio-balloon-rs")

# Whether the tests run on the debug kernel (KASAN, lockdep, kmemleak).
DEBUG = bool(os.environ.get("VBRS_DEBUG_KERNEL"))

# The target: architecture and kernel page size.
ARCH = os.environ.get("VBRS_ARCH") or "x86_64"
PAGE = os.environ.get("VBRS_PAGE") or ("64k" if ARCH == "arm64" else "4k")
PAGE_KIB = int(PAGE.rstrip("k"))
# The balloon protocol counts 4 KiB frames; the kernel (vmstat, the
# driver's page counters, the OOM notifier) counts pages.
FRAMES_PER_MIB = 256
PAGES_PER_MIB = 1024 // PAGE_KIB
FRAMES_PER_PAGE = PAGE_KIB // 4


def whole_pages(frames):
    """A balloon size in frames, rounded up to whole kernel pages (what the
    driver does with the host's target)."""
    return -(-frames // FRAMES_PER_PAGE) * FRAMES_PER_PAGE

# The first line of the kernel's OOM-killer and allocation-failure reports.
OOM_REPORT_RE = re.compile(r"invoked oom-killer|page allocation failure")

# What a healthy console never shows. Besides crashes, warnings and the
# debug kernel's reports, the detectors of what a user would suffer
# (scripts/kernel/guest.config): a task blocked too long ("INFO: task
# kworker/0:1:42 blocked for more than 30 seconds."), a soft lockup
# ("watchdog: BUG: soft lockup - CPU#0 stuck for 41s!"), a stalled
# workqueue pool ("BUG: workqueue lockup - pool ..."), an RCU stall ("rcu:
# INFO: rcu_sched self-detected stall on CPU", "... detected stalls on
# CPUs/tasks:", "... detected expedited stalls ..."). x86_64 prints "Call
# Trace:", arm64 "Call trace:".
SPLAT_RE = re.compile(r"BUG:|WARNING:|Call [Tt]race:|Kernel panic|Oops|general protection|"
                      r"KASAN:|UBSAN:|kmemleak:.*new suspected|possible recursive locking|"
                      r"INFO: task .* blocked for more than|soft lockup|workqueue lockup|"
                      r"INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stall|"
                      r"unreferenced object")
TRACE_RE = re.compile(r"Call [Tt]race:")
# The detectors' reports of a hang: a test waiting on the guest stops
# waiting when one appears.
HANG_RE = re.compile(r"INFO: task .* blocked for more than|soft lockup|workqueue lockup|"
                     r"INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stall")
# The console's timestamp, before each line's text.
STAMP_RE = re.compile(r"^\[\s*\d+\.\d+\] ?")
# How a frame of this project's driver shows in a stack trace.
DRIVER_FRAME = "[virtio_balloon_rs]"


def kernel_dir(kind=None):
    """Builds (or finds) the target's guest kernel (kind guest, or debug with
    VBRS_KERNEL_KIND=debug); returns its build directory."""
    kind = kind or os.environ.get("VBRS_KERNEL_KIND") or "guest"
    cmd = [str(ROOT / "scripts/kernel/build.sh"), kind]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def kmake_vars():
    """The make variables the project builds kernels and modules with
    (lib.sh: vbrs_kmake_vars), as a list."""
    return subprocess.run(["bash", "-c", f". {ROOT}/scripts/lib.sh && vbrs_kmake_vars"],
                          check=True, capture_output=True, text=True).stdout.split()


def project_copy(dest):
    """Copies the project's files (tracked ones, and new ones git does not
    ignore) to `dest`, without build outputs."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                           check=True, capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (Path(dest) / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, Path(dest) / f)
    return Path(dest)


def kernel_source(kdir):
    """The source tree of a kernel build directory (an O= build links it as
    `source`)."""
    src = Path(kdir) / "source"
    return src.resolve() if src.exists() else Path(kdir)


def kernel_image(kdir):
    return Path(kdir) / ("arch/arm64/boot/Image" if ARCH == "arm64" else "arch/x86/boot/bzImage")


def _cpio_newc(entries):
    """A newc cpio archive of (path, mode, data-or-linktarget) entries."""
    out = bytearray()
    ino = 1
    for name, mode, data in entries + [("TRAILER!!!", 0, b"")]:
        if isinstance(data, str):
            data = data.encode()
        nameb = name.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nameb), 0))
        out += hdr.encode() + nameb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t debugfs debugfs /sys/kernel/debug
echo 1 > /proc/sys/kernel/sysrq
# The virtio-serial port named $1, which may show up a little later (up to
# a minute on the debug kernel under TCG).
port() {
    i=0
    while [ $i -lt 600 ]; do
        for p in /sys/class/virtio-ports/*; do
            [ "$(cat $p/name 2>/dev/null)" = "$1" ] && { echo /dev/${p##*/}; return; }
        done
        i=$((i+1)); sleep 0.1
    done
}
# The command channel: ttyS1, or (vbrs.ctl=port on the command line) the
# virtio-serial port named vbrs.ctl. The sysrq channel, apart from it so
# that it answers while a command hangs: ttyS2, or the port vbrs.sysrq.
CTL=/dev/ttyS1
SYSRQ=/dev/ttyS2
if grep -q 'vbrs.ctl=port' /proc/cmdline; then
    CTL=$(port vbrs.ctl)
    SYSRQ=$(port vbrs.sysrq)
    [ -n "$CTL" ] || { echo "vbrs: no command port"; exit 1; }
fi
case "$CTL" in /dev/tty*) stty -F "$CTL" raw -echo ;; esac
case "$SYSRQ" in /dev/tty*) stty -F "$SYSRQ" raw -echo ;; esac
# Each line on the sysrq channel is a sysrq command (w: blocked tasks, l:
# every CPU's stack), written to /proc/sysrq-trigger.
[ -z "$SYSRQ" ] || while :; do
    while IFS= read -r k; do echo "$k" > /proc/sysrq-trigger; done <"$SYSRQ"
    sleep 1
done &
echo "vbrs: guest up"
# Commands arrive one per line; a non-interactive shell runs them (an
# interactive one would query the terminal and eat input). The channel is
# opened once, read-write: a virtio-serial port refuses a second open.
while :; do
    sh -c 'while IFS= read -r line; do eval "$line"; done' <>"$CTL" >&0 2>&1 || sleep 1
done
"""


def free_slack_kib(g):
    """How far free memory may stay below an earlier reading once nothing
    is held: slab, page-table and page-cache noise of 4 MiB or 128 pages,
    whichever is more, plus KASAN's quarantine of freed objects (up to 1/32
    of RAM) on the debug kernel, where kmemleak checks for leaks instead.

    The noise comes in pages, so it grows with the page size. Over 60
    readings on 1 GiB arm64 guests with 64 KiB pages, taken after each of 10
    inflate/rmmod cycles, it went up and down between +1.5 and -5.6 MiB with
    no trend. A fixed 4 MiB failed about one run in seven there. Even 8 MiB
    is far below what a leak would show: the smallest thing the driver could
    lose is one message's pages (1 MiB), and ten cycles would lose ten."""
    slack = max(4 * 1024, 128 * PAGE_KIB)
    if os.environ.get("VBRS_DEBUG_KERNEL"):
        slack += g.mem_mib * 1024 // 32
    return slack


def build_memhog(outdir):
    """Compiles tests/guest/memhog.c statically for the target (gcc and
    libc6-dev; aarch64-linux-gnu-gcc and libc6-dev-arm64-cross)."""
    out = Path(outdir) / f"memhog-{ARCH}"
    src = ROOT / "tests/guest/memhog.c"
    cc = "aarch64-linux-gnu-gcc" if ARCH == "arm64" else "gcc"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    return out


def busybox_path():
    if ARCH == "arm64":
        return CACHE / "arm64/bin/busybox"
    return Path("/bin/busybox")


def build_initramfs(kdir, dest, tree=None):
    """Writes a gzip'd initramfs with busybox, /init and the modules; with
    `tree`, also every directory and file below that directory, at the same
    paths (a staged /lib/modules, /etc/modprobe.d)."""
    busybox = busybox_path()
    if not busybox.exists():
        raise RuntimeError(f"{busybox} missing (Debian package busybox-static; scripts/deps.sh)")
    entries = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("sbin", stat.S_IFDIR | 0o755, b""),
        ("dev", stat.S_IFDIR | 0o755, b""),
        ("modules", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT.encode()),
    ]
    # Every module the tests load: one that is missing is a build that did
    # not happen (or went elsewhere), not something to leave out quietly.
    mods = {
        "virtio_balloon_rs.ko": ROOT / "virtio_balloon_rs.ko",
        "virtio_balloon_rs_kunit.ko": ROOT / "kunit/virtio_balloon_rs_kunit.ko",
        "virtio_balloon.ko": Path(kdir) / "drivers/virtio/virtio_balloon.ko",
        "oom_stopwatch.ko": ROOT / "tests/oom_stopwatch/oom_stopwatch.ko",
    }
    missing = [str(p) for p in mods.values() if not p.exists()]
    if missing:
        raise RuntimeError(f"initramfs: module(s) missing: {', '.join(missing)} "
                           f"(build them against {kdir}: scripts/build-module.sh {kdir})")
    for name, path in mods.items():
        entries.append(("modules/" + name, stat.S_IFREG | 0o644, path.read_bytes()))
    entries.append(("bin/memhog", stat.S_IFREG | 0o755, build_memhog(Path(dest).parent).read_bytes()))
    if tree is not None:
        for p in sorted(Path(tree).rglob("*")):
            name = str(p.relative_to(tree))
            if p.is_symlink():
                continue  # build and source links of a staged /lib/modules
            if p.is_dir():
                entries.append((name, stat.S_IFDIR | 0o755, b""))
            else:
                entries.append((name, stat.S_IFREG | 0o644, p.read_bytes()))
    Path(dest).write_bytes(gzip.compress(_cpio_newc(entries), 1))
    return Path(dest)


def _kvm_probe_cache():
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return CACHE / f"kvm-probe-{boot_id}"


def kvm_usable_cached():
    """What an earlier probe of this host boot found (no probe: False)."""
    if os.environ.get("VBRS_ACCEL") in ("tcg", "kvm"):
        return os.environ["VBRS_ACCEL"] == "kvm"
    cache = _kvm_probe_cache()
    return cache.exists() and cache.read_text().strip() == "yes"


def kvm_usable(kdir, initrd):
    """Whether KVM both exists and boots a guest here; probed once per boot
    of the host (cached), with a short timeout: on some machines KVM guests
    hang right after the firmware."""
    if os.environ.get("VBRS_ACCEL") in ("tcg", "kvm"):
        return os.environ["VBRS_ACCEL"] == "kvm"
    # KVM runs guests of the host's own architecture only.
    if os.uname().machine != {"x86_64": "x86_64", "arm64": "aarch64"}[ARCH]:
        return False
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cache = _kvm_probe_cache()
    if cache.exists():
        return cache.read_text().strip() == "yes"
    ok = False
    try:
        with Guest(kdir, initrd=initrd, accel="kvm", boot_timeout=20) as g:
            ok = g.run("echo ok").strip() == "ok"
    except Exception:
        ok = False
    CACHE.mkdir(parents=True, exist_ok=True)
    cache.write_text("yes\n" if ok else "no\n")
    return ok


def wait_until(fetch, pred, timeout, poll, what):
    """Calls fetch() until pred(value) holds and returns that value; raises
    GuestError with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if pred(value):
            return value
        if time.monotonic() > deadline:
            raise GuestError(f"{what} never matched: {value}")
        time.sleep(poll)


class GuestError(RuntimeError):
    pass


class BootSplat(GuestError):
    """The kernel reported a problem while booting, before init ran: no
    test code (and no module of this project) had run yet."""


class QMP:
    """QMP through QEMU's own client library (qemu.qmp, its synchronous
    interface): errors become GuestError, so that a command QEMU refuses
    fails the test with QEMU's message, and a monitor that does not answer
    is a failed boot like any other."""

    def __init__(self, path, timeout=30):
        self.mon = QEMUMonitorProtocol(str(path))
        try:
            self.mon.connect(negotiate=True)
        except QMPError as e:
            raise GuestError(f"QMP connection: {e!r}") from e
        self.mon.settimeout(timeout)

    def cmd(self, name, **args):
        try:
            return self.mon.cmd(name, **args)
        except ExecuteError as e:
            raise GuestError(f"QMP {name}: {e}") from e
        except (QMPError, OSError, EOFError, asyncio.TimeoutError) as e:
            raise GuestError(f"QMP {name}: no answer ({e!r})") from e

    def close(self):
        # After `quit`, QEMU closes the socket first: the client's reader
        # then ends with EOFError, which disconnecting reports again.
        try:
            self.mon.close()
        except (QMPError, OSError, EOFError, asyncio.TimeoutError):
            pass


class Guest:
    """A QEMU guest running the project's kernel and initramfs."""

    # The guests running in this process (started and not yet stopped),
    # for the dump a test that runs out of time makes (conftest.py).
    running = []

    def __init__(self, kdir, initrd, mem_mib=2048, balloon="", accel=None,
                 smp=2, boot_timeout=120, extra_append="", workdir=None,
                 qemu_args=(), transport="pci", mem_opts="", qemu_args_before=()):
        """`transport`: how the balloon device is attached: "pci"
        (virtio-balloon-pci), or "mmio" (virtio-balloon-device: on QEMU's
        microvm machine on x86_64, on virt's own virtio-mmio slots on
        arm64). `mem_opts`: more of -m (slots=...,maxmem=... for DIMMs).
        `qemu_args_before`: QEMU arguments that must come before the balloon
        device (the bus it sits on); `qemu_args`, after it."""
        self.kdir = Path(kdir)
        self.qemu_args_before = list(qemu_args_before)
        self.transport = transport
        self.mem_opts = mem_opts
        self.initrd = Path(initrd)
        self.mem_mib = mem_mib
        self.balloon = balloon
        self.accel = accel
        self.smp = smp
        self.boot_timeout = boot_timeout
        self.extra_append = extra_append
        self.qemu_args = list(qemu_args)
        # The hang and lockup detectors (guest.config), with time-outs that
        # suit software emulation: a CPU stuck in the kernel for 40 s (60 s
        # on the debug kernel), a workqueue pool stalled as long, a task
        # blocked 30 s (60 s), RCU stalls after 60 s (120 s). Each is a
        # report that fails the test (SPLAT_RE).
        self.extra_append += " watchdog_thresh=20 workqueue.watchdog_thresh=40"
        if os.environ.get("VBRS_DEBUG_KERNEL"):
            # The debug kernel (KASAN, lockdep, kmemleak) under software
            # emulation is slow enough that ACPI's interpreted PCI interrupt
            # routing times out (the device then gets no interrupt): route
            # interrupts from the BIOS tables (the pc machine's; microvm's
            # virtio-mmio devices take theirs from ACPI). Everything takes
            # several times as long, so the detectors wait twice as long.
            if not (transport == "mmio" and ARCH == "x86_64"):
                self.extra_append += " acpi=noirq"
            self.extra_append += (" watchdog_thresh=30 workqueue.watchdog_thresh=60"
                                  " sysctl.kernel.hung_task_timeout_secs=60"
                                  " rcupdate.rcu_cpu_stall_timeout=120")
            # KASAN's shadow (1/8 of RAM) and kmemleak's pool would eat the
            # memory the tests size their balloons against.
            self.mem_mib += 128
            self.boot_timeout = max(boot_timeout, 300)
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="vbrs-guest-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console = self.dir / "console.log"
        self.proc = None
        self.qmp = None
        self.ctl = None
        self.seq = 0
        # Boots that had to be retried (their reasons), for the test report.
        self.retries = []

    # -- lifecycle --------------------------------------------------------
    def qemu_cmd(self):
        accel = self.accel or "tcg"
        common = "panic=-1 oops=panic loglevel=7 " + self.extra_append
        ctl = f"socket,id=ctl,path={self.dir}/ctl.sock,server=on,wait=off"
        sysrq = f"socket,id=sysrq,path={self.dir}/sysrq.sock,server=on,wait=off"
        # The shell and sysrq channels as virtio-serial ports (the guest's
        # init finds them by name), on a virtio-serial device of `kind`.
        ports = ["-chardev", ctl, "-device", "virtserialport,chardev=ctl,name=vbrs.ctl",
                 "-chardev", sysrq, "-device", "virtserialport,chardev=sysrq,name=vbrs.sysrq"]
        if ARCH == "arm64":
            # virt has one UART (the console); the shell goes over a
            # virtio-serial port. pauth-impdef: TCG's fast pointer auth.
            qemu, machine, cpu = "qemu-system-aarch64", "virt", "max,pauth-impdef=on"
            append = "console=ttyAMA0 vbrs.ctl=port " + common
            channel = ["-device", "virtio-serial-pci,id=vser0"] + ports
        elif self.transport == "mmio":
            # microvm: no PCI, one ISA serial port (the console), virtio
            # devices on virtio-mmio transports. It has no HPET or ACPI PM
            # timer, and under TCG the kernel cannot calibrate the TSC
            # against the PIT (boot stops there): the TSC's rate is given.
            qemu, machine, cpu = "qemu-system-x86_64", "microvm,pit=on,pic=on,rtc=on", "max"
            append = "console=ttyS0 vbrs.ctl=port tsc_early_khz=2000000 " + common
            channel = ["-device", "virtio-serial-device,id=vser0"] + ports
        else:
            qemu, machine, cpu = "qemu-system-x86_64", "pc", "max"
            append = "console=ttyS0 " + common
            channel = ["-chardev", ctl, "-serial", "chardev:ctl",
                       "-chardev", sysrq, "-serial", "chardev:sysrq"]
        cmd = [
            qemu, "-nodefaults", "-display", "none", "-machine", machine, "-accel", accel,
            "-cpu", "host" if accel == "kvm" else cpu, "-append", append,
            "-chardev", f"file,id=con,path={self.console}", "-serial", "chardev:con",
        ] + channel
        cmd += [
            "-smp", str(self.smp), "-m", f"{self.mem_mib}{',' + self.mem_opts if self.mem_opts else ''}",
            "-kernel", str(kernel_image(self.kdir)),
            "-initrd", str(self.initrd),
            "-qmp", f"unix:{self.dir}/qmp.sock,server=on,wait=off",
            "-no-reboot",
        ]
        cmd += self.qemu_args_before
        if self.balloon is not None:
            dev = ("virtio-balloon-device" if self.transport == "mmio" else "virtio-balloon-pci") + ",id=balloon0"
            if self.balloon:
                dev += "," + self.balloon
            cmd += ["-device", dev]
        return cmd + self.qemu_args

    def start(self, attempts=3):
        """Boots the guest and waits for its command shell. A boot whose
        serial shell does not answer is retried (up to `attempts` boots);
        each retry is reported on stderr and kept in `self.retries`, which
        the test fixture turns into a warning naming the test."""
        for attempt in range(attempts):
            try:
                return self._start_once()
            except BaseException as e:
                self.stop()
                if not isinstance(e, GuestError):
                    raise
                if attempt == attempts - 1 or (self.proc_died_for_real()
                                               and not isinstance(e, BootSplat)):
                    raise
                reason = str(e).splitlines()[0]
                self.retries.append(reason)
                print(f"vbrs: guest in {self.dir} did not come up ({reason}); booting it again",
                      file=sys.stderr)
                time.sleep(0.5)

    def proc_died_for_real(self):
        """Whether the console shows the kernel itself failing (no retry)."""
        return any(s in self.console_text() for s in ("Kernel panic", "BUG:", "Oops"))

    def _check_booting(self, deadline, what):
        """Raises if QEMU exited or `deadline` passed while waiting for `what`."""
        if self.proc.poll() is not None:
            raise GuestError("guest died while booting:\n" + self.console_text()[-3000:])
        if time.monotonic() > deadline:
            raise GuestError(f"{what}:\n" + self.console_text()[-3000:])

    def _start_once(self):
        if self not in Guest.running:
            Guest.running.append(self)
        for sock in ("qmp.sock", "ctl.sock", "sysrq.sock"):
            (self.dir / sock).unlink(missing_ok=True)
        self.console.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.qemu_cmd(), stdin=subprocess.DEVNULL,
                                     stdout=open(self.dir / "qemu.out", "wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not (self.dir / "qmp.sock").exists() or not (self.dir / "ctl.sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise GuestError("QEMU did not start: " + (self.dir / "qemu.out").read_text())
            time.sleep(0.05)
        try:
            self.qmp = QMP(self.dir / "qmp.sock")
            self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.ctl.connect(str(self.dir / "ctl.sock"))
        except OSError as e:
            # A greeting that does not come (a host this busy) is a boot
            # that failed, like any other.
            raise GuestError(f"QEMU's sockets did not answer: {e!r}") from e
        self._ctl_buf = b""
        # The shell on ttyS1 comes up once init has run.
        deadline = time.monotonic() + self.boot_timeout
        while "vbrs: guest up" not in self.console_text():
            self._check_booting(deadline, f"guest did not boot in {self.boot_timeout}s")
            time.sleep(0.05)
        # A splat while the kernel booted (seen once under TCG: KASAN in an
        # interrupt during identify_cpu) is not the tests' doing: boot again,
        # and let the retry be reported.
        splats = self.splats()
        if splats:
            raise BootSplat("kernel splat while booting: " + splats[0])
        time.sleep(0.3)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.ctl.sendall(b"\n")
                if self.run("echo ready", timeout=3, dump=False).strip().endswith("ready"):
                    return self
            except GuestError:
                pass
            self._check_booting(deadline, "guest shell did not answer")

    def stop(self):
        if self in Guest.running:
            Guest.running.remove(self)
        if self.qmp:
            try:
                self.qmp.cmd("quit")
            except Exception:
                pass
            self.qmp.close()
            self.qmp = None
        if self.ctl:
            self.ctl.close()
            self.ctl = None
        if self.proc:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    # -- commands ---------------------------------------------------------
    def run_rc(self, command, timeout=120, dump=True):
        """Runs a shell command in the guest; returns (exit status, output).
        A command that does not finish in `timeout` seconds raises
        GuestError with the guest's blocked tasks and CPU stacks (unless
        `dump` is false)."""
        self.seq += 1
        marker = f"@@vbrs-{self.seq}@@"
        script = base64.b64encode(command.encode()).decode()
        line = (f"echo {script} | base64 -d > /tmp/cmd.sh; sh /tmp/cmd.sh 2>&1; "
                f"echo \"{marker}$?\"\n")
        self.ctl.sendall(line.encode())
        deadline = time.monotonic() + timeout
        pat = re.compile(re.escape(marker.encode()) + rb"(\d+)\r?\n")
        while True:
            m = pat.search(self._ctl_buf)
            if m:
                out = self._ctl_buf[:m.start()]
                self._ctl_buf = self._ctl_buf[m.end():]
                return int(m.group(1)), out.decode(errors="replace").replace("\r\n", "\n")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # Resynchronise: drop whatever is buffered for this command.
                self._ctl_buf = b""
                raise GuestError(f"guest command timed out after {timeout}s: {command}"
                                 + ("\n" + self.hang_report() if dump else ""))
            self.ctl.settimeout(min(remaining, 1.0))
            try:
                chunk = self.ctl.recv(65536)
            except socket.timeout:
                # A second without output: has the kernel reported a hang?
                hang = self.hang_reported() if dump else None
                if hang:
                    self._ctl_buf = b""
                    raise GuestError(f"the guest reported a hang while running: {command}\n"
                                     f"{hang}\n" + self.hang_report())
                continue
            if not chunk:
                raise GuestError("guest command channel closed")
            self._ctl_buf += chunk

    def run(self, command, timeout=120, dump=True):
        """Runs a shell command that must succeed; returns its output."""
        rc, out = self.run_rc(command, timeout, dump)
        if rc != 0:
            raise GuestError(f"guest command failed ({rc}): {command}\n{out}")
        return out

    def sysrq(self, keys):
        """Sends sysrq commands (one character each) over the sysrq
        channel, which the guest's init serves apart from the command
        shell: it answers while a command hangs."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
            sk.settimeout(5)
            sk.connect(str(self.dir / "sysrq.sock"))
            for k in keys:
                sk.sendall(f"{k}\n".encode())
                time.sleep(0.5)

    def hang_report(self, wait=3.0):
        """What the kernel says of a guest that seems stuck: the tasks
        blocked in D state and every CPU's stack (sysrq w and l), from the
        console, for a failure message. Never raises."""
        if self.proc is None or self.proc.poll() is not None:
            return f"guest {self.dir} is not running (no sysrq dump)\n" + self.console_text()[-3000:]
        start = len(self.console_text())
        try:
            self.sysrq("wl")
        except OSError as e:
            return f"guest {self.dir}: sysrq channel: {e!r}\n" + self.console_text()[-3000:]
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(0.5)
        dump = self.console_text()[start:]
        if not dump.strip():
            return (f"guest {self.dir}: no answer to sysrq w/l (QEMU: {self._run_state()})\n"
                    + self.console_text()[-3000:])
        lines = dump.splitlines()
        if len(lines) > 400:
            lines = lines[:400] + [f"... ({len(lines) - 400} more lines in {self.console})"]
        return f"sysrq w and l on {self.dir}:\n" + "\n".join(lines)

    def _run_state(self):
        """QEMU's run state ("running", "suspended", ...) for a report."""
        try:
            return self.qmp.cmd("query-status")["status"]
        except Exception as e:  # noqa: BLE001 - a report never raises
            return f"unknown ({e!r})"

    # -- observations -----------------------------------------------------
    def console_text(self):
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # Set by a test that drives the guest into the OOM killer on purpose:
    # the OOM report's stack trace is then expected output, not a splat.
    expect_oom = False

    @staticmethod
    def _stack(lines, i):
        """The frames of the stack trace whose "Call Trace:" line is
        lines[i]: the indented lines after it, to the end of the trace."""
        frames = []
        for l in lines[i + 1:i + 120]:
            text = STAMP_RE.sub("", l)
            if text.strip() == "</TASK>" or not text.startswith(" "):
                break
            frames.append(l)
        return frames

    def splats(self):
        """The console lines that show a problem. With `expect_oom`, the
        stack trace of an OOM-killer or allocation-failure report is
        expected output, unless this driver is on that stack: the driver's
        allocations must never warn nor invoke the OOM killer."""
        lines = self.console_text().splitlines()
        out = []
        for i, l in enumerate(lines):
            if not SPLAT_RE.search(l):
                continue
            if TRACE_RE.search(l):
                reports = [p for p in lines[max(0, i - 6):i] if OOM_REPORT_RE.search(p)]
                if self.expect_oom and reports:
                    ours = [f for f in self._stack(lines, i) if DRIVER_FRAME in f]
                    if not ours:
                        continue
                    out.append(f"{self.dir.name}: the driver is on the stack of: {reports[-1]}")
                    out += [f"{self.dir.name}: {f}" for f in ours]
                    continue
                # A bare trace: the lines before it say what printed it.
                out += [f"{self.dir.name}: {p}" for p in lines[max(0, i - 6):i]]
            out.append(f"{self.dir.name}: {l}")
        return out

    def meminfo(self):
        out = self.run("cat /proc/meminfo")
        return {k: int(v.split()[0]) for k, v in
                (l.split(":", 1) for l in out.splitlines() if ":" in l)}

    def kmemleak_reports(self):
        """On a kernel with kmemleak: scans and returns its reports, those
        that name this project's module first, or "" when there are none
        (or the kernel has no kmemleak). kmemleak reports no object younger than 5 s
        (its minimum age), so the scans wait 6 s first: a leak made by the
        test's last command (an rmmod just before the end, say) is old
        enough by then. Two scans, as kmemleak's documentation advises
        against stale references on stacks and in registers. A guest that
        cannot be asked (hung, dead) is a failure too: it says so instead of
        passing."""
        if self.proc is None or self.proc.poll() is not None:
            return f"guest {self.dir} is not running: kmemleak could not be asked"
        try:
            rc, out = self.run_rc("k=/sys/kernel/debug/kmemleak; [ -e $k ] || exit 0; "
                                  "sleep 6; echo scan > $k; sleep 1; echo scan > $k; cat $k",
                                  timeout=180)
        except (GuestError, OSError) as e:
            return f"guest {self.dir} did not answer the kmemleak scan: {e}"
        if rc != 0:
            return f"kmemleak scan failed ({rc}) in {self.dir}:\n{out}"
        # Every report fails the test (the console says "kmemleak: N new
        # suspected memory leaks"), and all are shown: a leak made by the
        # driver's last moments has no module name in its backtrace once
        # the module is gone, only addresses.
        reports = [r for r in re.split(r"(?=unreferenced object)", out) if r.startswith("unreferenced")]
        ours = [r for r in reports if "virtio_balloon_rs" in r]
        return "".join(ours + [r for r in reports if r not in ours])

    def free_kib(self):
        """Free memory in KiB, pages on the per-CPU free lists included
        (MemFree leaves those out, and freed pages often wait there)."""
        out = self.run("cat /proc/meminfo /proc/zoneinfo")
        free = int(re.search(r"MemFree:\s+(\d+)", out).group(1))
        pcp = sum(int(n) for n in re.findall(r"^\s+count:\s+(\d+)", out, re.M))
        return free + pcp * PAGE_KIB

    def vmstat(self):
        out = self.run("cat /proc/vmstat")
        return {k: int(v) for k, v in (l.split() for l in out.splitlines() if l.strip())}

    def balloon_virtio_dev(self):
        """The sysfs name (virtioN) of the balloon device."""
        out = self.run("grep -l 0x0005 /sys/bus/virtio/devices/*/device")
        return out.strip().splitlines()[0].split("/")[-2]

    def virtio_status(self):
        """QEMU's view of the balloon device (features, status)."""
        return self.qmp.cmd("x-query-virtio-status", path=self.balloon_qom_path(backend=True))

    def stats_buffer_on_host(self):
        """The stats buffer QEMU took last, as (tag, value) pairs read from
        guest memory: the stats queue's (2) last available descriptor, from
        QEMU's own view of the ring (`x-query-virtio-queue-element`), and
        its bytes (HMP `xp`). QEMU keeps the buffer until it asks for fresh
        stats, so with polling off it holds still."""
        path = self.balloon_qom_path(backend=True)
        status = self.qmp.cmd("x-query-virtio-queue-status", path=path, queue=2)
        last = status["last-avail-idx"]
        assert last > 0, status
        elem = self.qmp.cmd("x-query-virtio-queue-element", path=path, queue=2,
                            index=(last - 1) % status["vring-num"])
        descs = elem["descs"]
        assert len(descs) == 1, elem
        addr, length = descs[0]["addr"], descs[0]["len"]
        out = self.qmp.cmd("human-monitor-command",
                           **{"command-line": f"xp /{length}xb {addr:#x}"})
        data = bytes(int(b, 16) for line in out.splitlines()
                     for b in line.split(":", 1)[1].split())
        assert len(data) == length, (length, out)
        return [(int.from_bytes(data[i:i + 2], "little"),
                 int.from_bytes(data[i + 2:i + 10], "little"))
                for i in range(0, length, 10)]

    def balloon_qom_path(self, backend=False):
        """The balloon device in QEMU's object tree: the PCI proxy (whose
        virtio device is its `virtio-backend` child), or the virtio-mmio
        device itself."""
        path = "/machine/peripheral/balloon0"
        return path + "/virtio-backend" if backend and self.transport == "pci" else path

    # -- balloon ------------------------------------------------------------
    MIB = 1024 * 1024

    def set_balloon_mib(self, mib):
        """Asks (over QMP) for a balloon of `mib` MiB: QEMU's `balloon`
        command takes the guest RAM size it wants to leave."""
        self.qmp.cmd("balloon", value=(self.mem_mib - mib) * self.MIB)

    def balloon_mib(self):
        """The balloon size the device reports (from the driver's `actual`),
        in MiB, as a float."""
        actual = self.qmp.cmd("query-balloon")["actual"]
        return (self.mem_mib * self.MIB - actual) / self.MIB

    def hang_reported(self):
        """The first report of a hang on the console, or None."""
        m = HANG_RE.search(self.console_text())
        if not m:
            return None
        start = self.console_text().rfind("\n", 0, m.start()) + 1
        return self.console_text()[start:].splitlines()[0]

    def wait(self, fetch, pred, timeout, poll, what):
        """wait_until() for this guest: on timeout, or as soon as the
        kernel reports a hang, the GuestError also holds the guest's
        blocked tasks and CPU stacks."""
        def fetch_unless_hung():
            hang = self.hang_reported()
            if hang:
                raise GuestError(f"waiting for {what}, the guest reported a hang: {hang}")
            return fetch()
        try:
            return wait_until(fetch_unless_hung, pred, timeout, poll, what)
        except GuestError as e:
            raise GuestError(f"{e}\n{self.hang_report()}") from None

    def wait_balloon(self, pred, timeout=120, poll=0.1):
        """Polls query-balloon until pred(balloon MiB) holds; returns the
        last size. Raises GuestError on timeout."""
        return self.wait(self.balloon_mib, pred, timeout, poll, "balloon size (MiB)")

    def wait_counters(self, pred, timeout=60, poll=0.2):
        """Polls the driver's counters until pred(counters) holds; returns
        them. Raises GuestError on timeout."""
        return self.wait(self.counters, pred, timeout, poll, "driver counters")

    def balloon_moved_since(self, vm0):
        """Kernel pages put into and taken out of balloons (vmstat
        balloon_inflate, balloon_deflate) since the reading `vm0`."""
        vm1 = self.vmstat()
        return (vm1["balloon_inflate"] - vm0["balloon_inflate"],
                vm1["balloon_deflate"] - vm0["balloon_deflate"])

    def balloon_sysfs(self):
        """The driver's state in sysfs (/sys/bus/virtio/devices/virtioN/
        balloon/): numbers as ints, words as they are."""
        dev = self.balloon_virtio_dev()
        out = self.run(f"cd /sys/bus/virtio/devices/{dev}/balloon && grep . *")
        pairs = (l.split(":", 1) for l in out.split())
        return {k: int(v) if v.isdigit() else v for k, v in pairs}

    def counters(self, driver="virtio_balloon_rs"):
        """The driver's debugfs counters for the balloon device."""
        dev = self.balloon_virtio_dev()
        out = self.run(f"cd /sys/kernel/debug/{driver}/{dev} && grep . *")
        return {k: int(v) for k, v in (l.split(":", 1) for l in out.split())}

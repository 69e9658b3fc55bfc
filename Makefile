# SPDX-License-Identifier: GPL-2.0
#
# virtio_balloon_rs: user-facing entry points. Kbuild reads ./Kbuild, not
# this file, when the kernel's build system compiles the module.
#
#   make                 build virtio_balloon_rs.ko against the project's guest kernel
#   make KDIR=<dir>      build against another Rust-enabled 6.12 build tree (no patches)
#   make install         install the driver into /lib/modules/<release>/updates, depmod
#   make run             boot a guest with a balloon device and watch the driver
#   make check           rustfmt, clippy, compile-fail, KUnit, virtme-ng, end-to-end
#                        (x86_64), then KUnit and end-to-end on arm64 with 64k pages
#   make check-arm64     KUnit and end-to-end on arm64 with 16k and with 4k pages
#   make check-configs   the module against Debian's 6.12 configurations and a
#                        small and a microVM one (modules_prepare trees; CONFIGS= picks)
#   make bench           Rust vs the in-tree C driver, side by side (REPS=11), and a plot
#
#   ARCH=x86_64|arm64 PAGE=4k|16k|64k select the guest for every target
#   (arm64 defaults to 64k). `make check` with ARCH given checks that target only.
#
# Everything heavy lives in ~/.cache/virtio-balloon-rs (override: VBRS_CACHE).

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
KDIR ?=
PYTEST_ARGS ?=
SHELL := /bin/bash
# The target, for the scripts (lib.sh checks it). ARCH is also kbuild's
# variable: the scripts pass it on to kbuild themselves.
export VBRS_ARCH := $(or $(ARCH),x86_64)
export VBRS_ARCH_GIVEN := $(ARCH)
export VBRS_PAGE := $(PAGE)
VENV_PY = $(shell bash -c '. $(ROOT)/scripts/lib.sh && echo $$VBRS_VENV')/bin/python
# Guests at a time in the end-to-end suites (pytest-xdist workers; one TCG
# guest keeps about one core busy). JOBS=0: one at a time, in one process.
JOBS ?= 2
PYTEST = $(VENV_PY) -m pytest -v -p no:cacheprovider --durations=10 -n $(JOBS)

.PHONY: all module deps kernel debug-kernel run check check-guest check-arm64 check-debug \
	check-configs compile-fail build-tests kunit vng e2e bench fmt fmtcheck clippy install clean

all: module

module:
	@$(ROOT)/scripts/build-module.sh "$(KDIR)"

deps:
	@$(ROOT)/scripts/deps.sh

kernel: deps
	@$(ROOT)/scripts/kernel/build.sh guest

run: module
	@$(VENV_PY) $(ROOT)/scripts/demo.py

# The KDIR for the tests is always the project's own guest kernel.
check: module
	@$(MAKE) --no-print-directory fmtcheck
	@$(MAKE) --no-print-directory clippy
	@$(MAKE) --no-print-directory compile-fail
	@$(MAKE) --no-print-directory build-tests
	@$(MAKE) --no-print-directory kunit
	@$(MAKE) --no-print-directory vng
	@$(MAKE) --no-print-directory e2e
ifeq ($(origin ARCH),undefined)
	@$(MAKE) --no-print-directory ARCH=arm64 PAGE=64k check-guest
endif

# What runs in guests of the selected target: KUnit and the end-to-end suite.
check-guest: module
	@$(MAKE) --no-print-directory kunit
	@$(MAKE) --no-print-directory e2e

check-arm64:
	@$(MAKE) --no-print-directory ARCH=arm64 PAGE=16k check-guest
	@$(MAKE) --no-print-directory ARCH=arm64 PAGE=4k check-guest

# The debug kernel: the guest kernel plus scripts/kernel/debug.config (KASAN,
# lockdep, kmemleak, fault injection); x86_64.
debug-kernel: deps
	@$(ROOT)/scripts/kernel/build.sh debug

# The end-to-end suite on the debug kernel: any KASAN, lockdep, kmemleak or
# WARN report fails it. The build and install tests (KDIR checks, make
# install, DKMS) run in make check; here they would only take CI's time.
check-debug: debug-kernel
	@echo "==> end-to-end tests on the debug kernel (KASAN, lockdep, kmemleak)"
	@$(ROOT)/scripts/build-module.sh "$$($(ROOT)/scripts/kernel/build.sh debug)" >/dev/null
	@cd $(ROOT)/tests && VBRS_KERNEL_KIND=debug VBRS_DEBUG_KERNEL=1 $(PYTEST) \
		--ignore=test_build.py --ignore=test_install.py $(PYTEST_ARGS) .

# Rust vs the in-tree C driver, side by side in the same guests (REPS=11;
# PARTS=resize,oom,cache,sweep picks parts); also writes
# scripts/bench-<arch>.png, the balloon's size over time. KERNEL=lean runs
# it on the guest kernel without memory hot-plug and system sleep
# (scripts/kernel/lean.config), built once and cached like the others.
BENCH_KERNEL := $(or $(KERNEL),guest)
bench:
	@case "$(BENCH_KERNEL)" in guest|lean) ;; *) echo "make bench: KERNEL=$(BENCH_KERNEL): guest (the default) or lean" >&2; exit 2 ;; esac
	@$(ROOT)/scripts/deps.sh bench
	@$(ROOT)/scripts/build-module.sh "$$($(ROOT)/scripts/kernel/build.sh $(BENCH_KERNEL))"
	@VBRS_KERNEL_KIND=$(BENCH_KERNEL) REPS=$(or $(REPS),11) $(VENV_PY) $(ROOT)/scripts/bench.py

# Misuses of the safe layer that must not build (tests/compile_fail/).
compile-fail: module
	@echo "==> compile-fail cases (kapi misuse must not build)"
	@$(VENV_PY) $(ROOT)/tests/compile_fail/run.py

# With KDIR, that kernel must have CONFIG_KUNIT=y, and its image boots.
kunit:
	@VBRS_KUNIT=required $(ROOT)/scripts/build-module.sh "$(KDIR)"
	@echo "==> KUnit ($(VBRS_ARCH) $(or $(PAGE),default pages) guest, parsed by kunit.py)"
	@$(VENV_PY) $(ROOT)/tests/run_kunit.py $(KDIR)

# virtme-ng boots the host's root filesystem: x86_64 guests only.
vng: module
	@echo "==> virtme-ng boot test"
	@if [ "$(VBRS_ARCH)" = x86_64 ]; then $(VENV_PY) $(ROOT)/tests/vng/boot_test.py; \
	else echo "vng: skipped for $(VBRS_ARCH) (it boots the x86_64 host's root filesystem)"; fi

# The guests' suite: everything but the build and install tests, which
# build-tests runs on their own (their compiles would compete with the
# guests for the CPUs, and they do not depend on the target).
e2e: module
	@echo "==> end-to-end tests (QEMU + QMP, $(VBRS_ARCH) $(or $(PAGE),default pages))"
	@cd $(ROOT)/tests && $(PYTEST) --ignore=test_build.py --ignore=test_install.py $(PYTEST_ARGS) .

# make KDIR= with broken and foreign trees, Debian's cloud-amd64
# configuration, make install and DKMS.
build-tests: module
	@echo "==> build and install tests (KDIR checks, Debian cloud-amd64, make install, DKMS)"
	@cd $(ROOT)/tests && $(PYTEST) $(PYTEST_ARGS) test_build.py test_install.py

# The build matrix: the module against kernels configured as users' are
# (scripts/kernel/config-tree.sh --list; CONFIGS="name ..." picks some).
check-configs: deps
	@$(ROOT)/scripts/deps.sh configs
	@echo "==> build matrix (Debian's 6.12 configurations, a small one and a microVM's, modules_prepare trees)"
	@$(VENV_PY) $(ROOT)/tests/configs/run.py $(CONFIGS)

fmt:
	@$(ROOT)/scripts/rustfmt.sh fix

fmtcheck:
	@echo "==> rustfmt (kernel settings)"
	@$(ROOT)/scripts/rustfmt.sh check

clippy:
	@echo "==> CLIPPY=1 build"
	@$(ROOT)/scripts/clippy.sh

# Installs virtio_balloon_rs.ko (only) into /lib/modules/<release>/updates,
# or under INSTALL_MOD_PATH, and runs depmod, with kbuild's own
# modules_install (signing and compression as the kernel is configured).
install:
	@$(ROOT)/scripts/build-module.sh "$(KDIR)" VBRS_DRIVER_ONLY=1 >/dev/null
	@$(ROOT)/scripts/build-module.sh "$(KDIR)" VBRS_DRIVER_ONLY=1 INSTALL_MOD_DIR=updates \
		$(if $(INSTALL_MOD_PATH),INSTALL_MOD_PATH=$(INSTALL_MOD_PATH)) modules_install

clean:
	@rm -f *.o *.ko *.mod *.mod.c *.mod.o .*.cmd Module.symvers modules.order .kdir-built-against \
		kapi/*.o kapi/.*.cmd kapi/bindings_generated.rs \
		kunit/*.o kunit/*.ko kunit/*.mod kunit/*.mod.c kunit/.*.cmd \
		tests/oom_stopwatch/*.o tests/oom_stopwatch/*.ko tests/oom_stopwatch/*.mod \
		tests/oom_stopwatch/*.mod.c tests/oom_stopwatch/.*.cmd
	@rm -rf .tmp_versions

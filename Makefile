# SPDX-License-Identifier: GPL-2.0
#
# virtio_balloon_rs: user-facing entry points. Kbuild reads ./Kbuild, not
# this file, when the kernel's build system compiles the module.
#
#   make                 build virtio_balloon_rs.ko against the project's guest kernel
#   make KDIR=<dir>      build against another Rust-enabled 6.12 tree (patched)
#   make run             boot a guest with a balloon device and watch the driver
#   make check           rustfmt, clippy, compile-fail, KUnit, virtme-ng, end-to-end
#   make bench           Rust vs the in-tree C driver, side by side (REPS=5)
#
# Everything heavy lives in ~/.cache/virtio-balloon-rs (override: VBRS_CACHE).

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
KDIR ?=
PYTEST_ARGS ?=
SHELL := /bin/bash
VENV_PY = $(shell bash -c '. $(ROOT)/scripts/lib.sh && echo $$VBRS_VENV')/bin/python

.PHONY: all module deps kernel debug-kernel run check check-debug compile-fail kunit vng e2e bench fmt fmtcheck clippy clean

all: module

module:
	@$(ROOT)/scripts/build-module.sh "$(KDIR)"

deps:
	@$(ROOT)/scripts/deps.sh

kernel: deps
	@$(ROOT)/scripts/kernel/build.sh

run: module
	@$(VENV_PY) $(ROOT)/scripts/demo.py

# The KDIR for the tests is always the project's own guest kernel.
check: module
	@$(MAKE) --no-print-directory fmtcheck
	@$(MAKE) --no-print-directory clippy
	@$(MAKE) --no-print-directory compile-fail
	@$(MAKE) --no-print-directory kunit
	@$(MAKE) --no-print-directory vng
	@$(MAKE) --no-print-directory e2e

# The debug kernel: guest.config + debug.config (KASAN, lockdep, kmemleak,
# fault injection), as one fragment in the cache so that it gets its own key.
DEBUG_FRAGMENT = $(shell . $(ROOT)/scripts/lib.sh && echo $$VBRS_CACHE)/fragments/debug.config

debug-kernel: deps
	@mkdir -p $(dir $(DEBUG_FRAGMENT))
	@cat $(ROOT)/scripts/kernel/guest.config $(ROOT)/scripts/kernel/debug.config > $(DEBUG_FRAGMENT)
	@$(ROOT)/scripts/kernel/build.sh $(DEBUG_FRAGMENT)

# The end-to-end suite on the debug kernel: any KASAN, lockdep, kmemleak or
# WARN report fails it.
check-debug: debug-kernel
	@echo "==> end-to-end tests on the debug kernel (KASAN, lockdep, kmemleak)"
	@$(ROOT)/scripts/build-module.sh "$$($(ROOT)/scripts/kernel/build.sh $(DEBUG_FRAGMENT))" >/dev/null
	@cd $(ROOT)/tests && VBRS_KERNEL_FRAGMENT=$(DEBUG_FRAGMENT) VBRS_DEBUG_KERNEL=1 \
		$(VENV_PY) -m pytest -v -p no:cacheprovider --durations=10 $(PYTEST_ARGS) .

# Rust vs the in-tree C driver, side by side in one guest (REPS=5).
bench: module
	@REPS=$(or $(REPS),5) $(VENV_PY) $(ROOT)/scripts/bench.py

# Misuses of the safe layer that must not build (tests/compile_fail/).
compile-fail: module
	@echo "==> compile-fail cases (kapi misuse must not build)"
	@$(VENV_PY) $(ROOT)/tests/compile_fail/run.py

kunit: module
	@echo "==> KUnit (in a guest, parsed by kunit.py)"
	@$(VENV_PY) $(ROOT)/tests/run_kunit.py

vng: module
	@echo "==> virtme-ng boot test"
	@$(VENV_PY) $(ROOT)/tests/vng/boot_test.py

e2e: module
	@echo "==> end-to-end tests (QEMU + QMP)"
	@cd $(ROOT)/tests && $(VENV_PY) -m pytest -v -p no:cacheprovider --durations=10 $(PYTEST_ARGS) .

fmt:
	@$(ROOT)/scripts/rustfmt.sh fix

fmtcheck:
	@echo "==> rustfmt (kernel settings)"
	@$(ROOT)/scripts/rustfmt.sh check

clippy:
	@echo "==> CLIPPY=1 build"
	@$(ROOT)/scripts/clippy.sh

clean:
	@rm -f *.o *.ko *.mod *.mod.c *.mod.o .*.cmd Module.symvers modules.order \
		kunit/*.o kunit/*.ko kunit/*.mod kunit/*.mod.c kunit/.*.cmd \
		tests/oom_stopwatch/*.o tests/oom_stopwatch/*.ko tests/oom_stopwatch/*.mod \
		tests/oom_stopwatch/*.mod.c tests/oom_stopwatch/.*.cmd
	@rm -rf .tmp_versions

# SPDX-License-Identifier: GPL-2.0
#
# virtio_balloon_rs: user-facing entry points. Kbuild reads ./Kbuild, not
# this file, when the kernel's build system compiles the module.
#
#   make                 build virtio_balloon_rs.ko against the project's guest kernel
#   make KDIR=<dir>      build against another Rust-enabled 6.12 tree (patched)
#   make run             boot a guest with a balloon device and watch the driver
#   make check           rustfmt, clippy, KUnit, virtme-ng, end-to-end
#   make bench           Rust vs the in-tree C driver, side by side (REPS=5)
#
# Everything heavy lives in ~/.cache/virtio-balloon-rs (override: VBRS_CACHE).

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
KDIR ?=
PYTEST_ARGS ?=
SHELL := /bin/bash
VENV_PY = $(shell bash -c '. $(ROOT)/scripts/lib.sh && echo $$VBRS_VENV')/bin/python

.PHONY: all module deps kernel run check kunit vng e2e bench fmt fmtcheck clippy clean

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
	@$(MAKE) --no-print-directory kunit
	@$(MAKE) --no-print-directory vng
	@$(MAKE) --no-print-directory e2e

# Rust vs the in-tree C driver, side by side in one guest (REPS=5).
bench: module
	@REPS=$(or $(REPS),5) $(VENV_PY) $(ROOT)/scripts/bench.py

kunit: module
	@echo "==> KUnit (in a guest, parsed by kunit.py)"
	@$(VENV_PY) $(ROOT)/tests/run_kunit.py

vng: module
	@echo "==> virtme-ng boot test"
	@$(ROOT)/tests/vng/boot_test.sh

e2e: module
	@echo "==> end-to-end tests (QEMU + QMP)"
	@cd $(ROOT)/tests && $(VENV_PY) -m pytest -v -p no:cacheprovider $(PYTEST_ARGS) .

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
		kunit/*.o kunit/*.ko kunit/*.mod kunit/*.mod.c kunit/.*.cmd
	@rm -rf .tmp_versions

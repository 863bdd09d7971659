# Two entry points that work on a fresh Debian/Ubuntu machine:
#   make demo   set up, then run the main job
#   make test   set up, then run the whole test suite
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := qemu-system-x86 qemu-utils e2fsprogs mmdebstrap busybox-static skopeo \
	nftables openssh-client cpio zstd kmod iproute2 docker-registry python3-venv git procps util-linux systemd
STAMP_APT := $(VENV)/.apt-done
STAMP_PY  := $(VENV)/.py-done

.PHONY: setup demo test unit lint vm-test bench clean

setup: $(STAMP_APT) $(STAMP_PY)

$(STAMP_APT):
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP_PY): pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m banger.version --write
	@touch $@

# The main job: a real microVM runs a command. On first use banger pulls the
# default kernel and builds the default image (about a minute), with progress.
demo: setup
	$(VENV)/bin/banger doctor || true
	$(VENV)/bin/banger vm run --rm -- sh -c 'echo "hello from $$(hostname)"; uname -sr; head -1 /etc/os-release'
	if [ -d .git ]; then $(VENV)/bin/banger vm run . --rm -- sh -c 'echo "this repo in $$(pwd):"; git log --oneline -1; ls | head -4'; fi

lint: setup
	$(VENV)/bin/ruff check banger tests bench
	$(VENV)/bin/mypy banger bench tests/support/fake_backend.py tests/support/fake_vms.py tests/support/fake_firecracker.py tests/support/firecracker_spec.py

# Fetch what needs the package registries first (test kernel and image, cached
# under ~/.cache/banger-test), then run the suite in a network namespace.
test: setup
	$(VENV)/bin/ruff check banger tests bench
	$(VENV)/bin/mypy banger bench tests/support/fake_backend.py tests/support/fake_vms.py tests/support/fake_firecracker.py tests/support/firecracker_spec.py
	$(PY) -m tests.support.prepare
	tests/run-in-netns $(PY) -m pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

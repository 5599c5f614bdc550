# agentshim — top-level entry points. Every target installs the Debian build
# dependencies it needs when they are missing (scripts/deps.sh), so a fresh
# machine needs nothing but `make demo` or `make test`.
BUILD      ?= build
ASAN_BUILD ?= build-asan
PREFIX     ?= /usr/local
JOBS       ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps build asan unit unit-asan integration test-guest test demo bench install uninstall format clean fuzz

all: build

deps:
	@scripts/deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

$(ASAN_BUILD)/build.ninja:
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DAGENTSHIM_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug $(CMAKE_FLAGS)

asan: deps $(ASAN_BUILD)/build.ninja
	cmake --build $(ASAN_BUILD) -j $(JOBS)

unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

unit-asan: asan
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS)

integration: build
	scripts/integration.sh $(BUILD)

# The integration suites that exercise cgroups on pure cgroup v2, in booted
# QEMU guests (scripts/guest): no systemd with the runner in the root cgroup
# and in a child cgroup, and systemd as PID 1. The guest image is built from
# Debian packages with mmdebstrap and cached in /var/cache/agentshim-guest.
# GUEST_CONFIGS / GUEST_SUITES narrow it (docs/OPERATIONS.md has the times).
GUEST_CONFIGS ?= v2-root v2-child systemd
GUEST_SUITES ?=
test-guest: build
	GUEST_CONFIGS="$(GUEST_CONFIGS)" scripts/guest/test.sh $(BUILD) $(GUEST_SUITES)

# libFuzzer targets for every parser of hostile input, run briefly.
fuzz: deps
	FUZZ_SECONDS=$${FUZZ_SECONDS:-20} scripts/fuzz.sh

# The README's test command: unit tests (normal and sanitizer builds), the
# integration suites as root against real runtimes and clients, the fuzzers,
# and the pure-v2 guests (`make test-guest`: ~13 min of guests plus the
# image build, ~4 min, on a machine without /var/cache/agentshim-guest;
# docs/OPERATIONS.md has the figures).
test: unit unit-asan integration fuzz test-guest

demo: build
	scripts/demo.sh $(BUILD)

bench: build
	bench/run.sh $(BUILD)

# Binary, man-style help, default policy (policy.json only when absent: an
# operator's edited policy is never overwritten), seccomp profile when the
# tree ships one. `agentshim install docker|containerd` then registers it.
install: build
	install -D -m 0755 $(BUILD)/shim/agentshim $(DESTDIR)$(PREFIX)/bin/agentshim
	ln -sfn agentshim $(DESTDIR)$(PREFIX)/bin/agentshim-strict
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/doc/agentshim
	$(BUILD)/shim/agentshim --help > $(DESTDIR)$(PREFIX)/share/doc/agentshim/agentshim.txt
	install -m 0644 docs/OPERATIONS.md docs/KUBERNETES.md $(DESTDIR)$(PREFIX)/share/doc/agentshim/
	install -D -m 0644 configs/policy/default.json $(DESTDIR)/etc/agentshim/policy.default.json
	[ -e $(DESTDIR)/etc/agentshim/policy.json ] || install -m 0644 configs/policy/default.json $(DESTDIR)/etc/agentshim/policy.json
	if [ -e configs/policy/strict.json ]; then \
	  install -m 0644 configs/policy/strict.json $(DESTDIR)/etc/agentshim/policy.strict.json; fi
	for f in configs/agentshim/*.json; do \
	  [ -e $(DESTDIR)/etc/agentshim/$$(basename $$f) ] || install -m 0644 $$f $(DESTDIR)/etc/agentshim/; done
	if [ -e configs/seccomp/default.json ]; then \
	  install -D -m 0644 configs/seccomp/default.json $(DESTDIR)/etc/agentshim/seccomp.default.json; fi
	install -D -m 0644 configs/docker/daemon.json $(DESTDIR)$(PREFIX)/share/agentshim/docker/daemon.json
	install -D -m 0644 configs/containerd/config.toml $(DESTDIR)$(PREFIX)/share/agentshim/containerd/config.toml
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/agentshim/kubernetes
	install -m 0644 configs/kubernetes/*.yaml $(DESTDIR)$(PREFIX)/share/agentshim/kubernetes/

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/agentshim $(DESTDIR)$(PREFIX)/bin/agentshim-strict
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/agentshim $(DESTDIR)$(PREFIX)/share/agentshim
	rm -f $(DESTDIR)/etc/agentshim/policy.default.json $(DESTDIR)/etc/agentshim/seccomp.default.json

format:
	clang-format -i $$(git ls-files '*.cpp' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)

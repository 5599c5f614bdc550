# agentshim — top-level entry points. Every target installs the Debian build
# dependencies it needs when they are missing (scripts/deps.sh), so a fresh
# machine needs nothing but `make demo` or `make test`.
BUILD      ?= build
ASAN_BUILD ?= build-asan
PREFIX     ?= /usr/local
JOBS       ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps build asan unit unit-asan integration test demo bench install format clean fuzz

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

# libFuzzer targets for every parser of hostile input, run briefly.
fuzz: deps
	FUZZ_SECONDS=$${FUZZ_SECONDS:-20} scripts/fuzz.sh

# The README's test command: unit tests (normal and sanitizer builds), the
# integration suites as root against real runtimes and clients, the fuzzers.
test: unit unit-asan integration fuzz

demo: build
	scripts/demo.sh $(BUILD)

bench: build
	bench/run.sh $(BUILD)

install: build
	install -D -m 0755 $(BUILD)/shim/agentshim $(DESTDIR)$(PREFIX)/bin/agentshim
	install -D -m 0644 configs/policy/default.json $(DESTDIR)/etc/agentshim/policy.default.json
	install -D -m 0644 configs/seccomp/default.json $(DESTDIR)/etc/agentshim/seccomp.default.json

format:
	clang-format -i $$(git ls-files '*.cpp' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)

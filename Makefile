# tiervisor: the two commands that matter are `make demo` and `make test`.
# Every target installs what it needs first (resources/scripts/setup.sh).

CARGO ?= cargo
OUT := resources/out
GUEST := $(OUT)/testguest.elf
TIERVISOR := target/release/tiervisor

.PHONY: all setup build guest demo test lint linux bench-boot bench-fault traces model bench-predict clean

all: build

setup:
	@resources/scripts/setup.sh

build: setup guest
	$(CARGO) build --release -p vmm

guest: setup
	@mkdir -p $(OUT)
	cd resources/testguest && $(CARGO) build --release
	cp resources/testguest/target/x86_64-unknown-none/release/testguest $(GUEST)

demo: build
	resources/scripts/demo.sh

test: build linux
	$(CARGO) test --release --workspace --no-fail-fast
	cd resources/testguest && $(CARGO) test --release --target x86_64-unknown-linux-gnu --lib

lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings

linux: setup
	resources/scripts/fetch-linux.sh $(OUT)

bench-boot: build
	resources/scripts/bench-boot.sh

# Demand fault from tier 2 (raw file, O_DIRECT) through tiervisor's fault path vs the
# raw event + O_DIRECT read + UFFDIO_COPY, interleaved in one run (docs/benchmarks.md).
bench-fault: setup
	$(CARGO) run --release -p tiering --example bench_fault -- 4096 5 target/bench-fault

# Real-program traces (valgrind lackey) and test-guest recordings into
# $(OUT)/traces/{train,eval}/ (docs/traces.md says which is which).
traces: build
	resources/scripts/make-traces.sh

clean:
	$(CARGO) clean
	rm -rf $(OUT) resources/testguest/target

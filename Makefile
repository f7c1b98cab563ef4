# tiervisor: the two commands that matter are `make demo` and `make test`.
# Every target installs what it needs first (resources/scripts/setup.sh).

CARGO ?= cargo
OUT := resources/out
GUEST := $(OUT)/testguest.elf
TIERVISOR := target/release/tiervisor

.PHONY: all setup build guest demo test lint linux bench-boot bench-fault bench-live bench-pool bench-swap bench-density bench-priority traces model prior bench-predict clean

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

# The paging advisors in live VMs: test-guest workloads at 25% RAM over an NVMe-profiled
# file tier, each advisor against all-in-RAM, interleaved rounds (docs/benchmarks.md).
bench-live: build
	resources/scripts/bench-live.sh

# Two VMs sharing one RAM budget through `tiervisor pool`, against static halves of it
# (docs/pool.md).
bench-pool: build
	resources/scripts/bench-pool.sh

# Baseline B1: stock QEMU over Linux swap in a memory cgroup against tiervisor at the
# same guest RAM, both paging to the same disk (root, cgroup v1; docs/benchmarks.md).
bench-swap: build
	resources/scripts/bench-swap.sh

# Baseline B1 with several VMs: four VMs under QEMU + swap in one memory cgroup against
# the same VMs in a `tiervisor pool` of the guest RAM QEMU's guests had (root, cgroup v1;
# docs/benchmarks.md, "Several VMs in one RAM budget").
bench-density: build
	resources/scripts/bench-density.sh

bench-priority: build
	resources/scripts/bench-priority.sh

# Real-program traces (valgrind lackey) and test-guest recordings into
# $(OUT)/traces/{train,eval}/ (docs/traces.md says which is which).
traces: build
	resources/scripts/make-traces.sh

# The GRU base model shipped in resources/models (docs/predictor.md): trained on the
# training traces of `make traces` (run that first; it takes a while).
model: build
	@ls $(OUT)/traces/train/*.tvt >/dev/null 2>&1 || { echo "make model: no traces in $(OUT)/traces/train (make traces)" >&2; exit 1; }
	$(TIERVISOR) train --trace $(OUT)/traces/train/*.tvt -o resources/models/gru-base.bpk --epochs 4 --ram-fractions 0.25 --visibility sampled:4 --hidden 16

# The first-touch prior gru follows (TIERVISOR_GRU_FIRST_TOUCH_PRIOR), from the same
# training traces as the model; seconds.
prior: build
	@ls $(OUT)/traces/train/*.tvt >/dev/null 2>&1 || { echo "make prior: no traces in $(OUT)/traces/train (make traces)" >&2; exit 1; }
	$(TIERVISOR) train-prior --trace $(OUT)/traces/train/*.tvt -o resources/models/first-touch-prior.json

# gru against the baselines on the held-out evaluation traces at 25% RAM: unbounded
# storage tiers, then little fast room (placement matters); the same on the holdout
# and holdout2 sets if `make traces` made them; then the GRU's cost for a 1 M-page VM.
BENCH_PREDICT := $(CARGO) run --release -p predictor --example bench_predict -- --ram-fraction 0.25
CONSTRAINED := --tiers resources/tiers/bench-constrained.toml
bench-predict: build
	@ls $(OUT)/traces/eval/*.tvt >/dev/null 2>&1 || { echo "make bench-predict: no traces in $(OUT)/traces/eval (make traces)" >&2; exit 1; }
	$(BENCH_PREDICT) $(OUT)/traces/eval/*.tvt
	$(BENCH_PREDICT) $(CONSTRAINED) $(OUT)/traces/eval/*.tvt
	@if ls $(OUT)/traces/holdout/*.tvt >/dev/null 2>&1; then \
		echo "== the holdout set (a second held-out check; the targets are defined on the evaluation set above)"; \
		$(BENCH_PREDICT) $(OUT)/traces/holdout/*.tvt && \
		$(BENCH_PREDICT) $(CONSTRAINED) $(OUT)/traces/holdout/*.tvt; \
	else echo "make bench-predict: no traces in $(OUT)/traces/holdout (make traces): holdout set skipped" >&2; fi
	@if ls $(OUT)/traces/holdout2/*.tvt >/dev/null 2>&1; then \
		echo "== the holdout2 set (a third held-out check, session 15)"; \
		$(BENCH_PREDICT) $(OUT)/traces/holdout2/*.tvt && \
		$(BENCH_PREDICT) $(CONSTRAINED) $(OUT)/traces/holdout2/*.tvt; \
	else echo "make bench-predict: no traces in $(OUT)/traces/holdout2 (make traces): holdout2 set skipped" >&2; fi
	$(CARGO) run --release -p predictor --example gru_cost

# Pattern-change detection on spliced evaluation traces with known change points, then on
# the holdout set's splices, then in live VMs of the phases workload (docs/anomaly.md).
bench-anomaly: build
	@ls $(OUT)/traces/eval/*.tvt >/dev/null 2>&1 || { echo "make bench-anomaly: no traces in $(OUT)/traces/eval (make traces)" >&2; exit 1; }
	$(CARGO) run --release -p predictor --example anomaly_eval -- --set eval
	@if ls $(OUT)/traces/anomaly/guest-phases.tvt $(OUT)/traces/holdout/*.tvt >/dev/null 2>&1; then \
		echo "== the holdout set (a second check: the rules of docs/anomaly.md are decided on it)"; \
		$(CARGO) run --release -p predictor --example anomaly_eval -- --set holdout; \
	else echo "make bench-anomaly: no holdout or anomaly traces (make traces): holdout set skipped" >&2; fi
	@echo "== live VMs: the phases workload recorded, its region moves against the changes gru logs"
	resources/scripts/anomaly-live.sh

clean:
	$(CARGO) clean
	rm -rf $(OUT) resources/testguest/target

# Load tests (Locust, loadtests/) and the serving and overload benchmarks (benchmarks/). Included by the Makefile.
# Reports go to results/<kind>-<UTC timestamp>/ (or results/$(LOADTEST_NAME)/): Locust's CSV
# files, an HTML report and a JSON summary. A run exits non-zero when a threshold of
# loadtests/locust.conf (or of LOADTEST_ARGS, e.g. "--max-p95-ms 500") is exceeded.

HOST          ?= http://127.0.0.1:8080
LOCUST        := $(VENV)/bin/locust
LOADTEST_CONF ?= loadtests/locust.conf
LOADTEST_ARGS ?=
LOADTEST_NAME ?=
# Step profile: STEPS steps of STEP_USERS more users every STEP_SECONDS, then 2 steps down (14 min).
STEP_ARGS     ?= --step-users 8 --step-seconds 120 --steps 5
BENCH_ARGS    ?=
OVERLOAD_ARGS ?=
RESULTS_STAMP := $(shell date -u +%Y%m%dT%H%M%SZ)

.PHONY: loadtest loadtest-smoke loadtest-step benchmark benchmark-overload benchmark-training

# $(call locust_run,<kind>,<extra locust arguments>)
define locust_run
	@dir=results/$(or $(LOADTEST_NAME),$(1)-$(RESULTS_STAMP)); mkdir -p $$dir; \
	echo "Locust $(1) profile against $(HOST); reports in $$dir"; \
	$(LOCUST) --config $(LOADTEST_CONF) --host $(HOST) --headless $(2) $(LOADTEST_ARGS) \
	  --csv $$dir/locust --html $$dir/report.html --json-file $$dir/summary; status=$$?; \
	echo "Reports: $$dir/report.html, $$dir/locust_stats.csv (exit code $$status)"; exit $$status
endef

loadtest: $(STAMP) ## Locust against HOST (default profile of loadtests/locust.conf), reports in results/, fails on thresholds
	$(call locust_run,loadtest,)

loadtest-smoke: $(STAMP) ## Short Locust smoke run (~30 s, a few users) against HOST, fails on thresholds
	$(call locust_run,smoke,--load-shape smoke)

loadtest-step: $(STAMP) ## Step load for autoscaling demos (STEP_ARGS; ~14 min) against HOST, e.g. HOST=http://<ingress>
	$(call locust_run,step,--load-shape step $(STEP_ARGS))

# $(call need_model): stop early, with the fix, when MODEL_URI names no local model
define need_model
@case "$(MODEL_URI)" in s3://*) ;; *) test -e "$(MODEL_URI)" || { echo "No model at $(MODEL_URI): run 'make train' first (or set MODEL_URI)"; exit 1; };; esac
endef

benchmark: $(STAMP) ## Ceiling vs served throughput/latency, batching on/off, cold start from S3 (MODEL_URI, BENCH_ARGS=--quick)
	$(call need_model)
	@dir=results/benchmark-$(RESULTS_STAMP); mkdir -p $$dir; set -o pipefail; \
	$(PY) benchmarks/serving_benchmark.py --model-uri $(MODEL_URI) --json $$dir/benchmark.json $(BENCH_ARGS) \
	  | tee $$dir/benchmark.txt

benchmark-overload: $(STAMP) ## Capacity, then open-loop 1x and 4x capacity: goodput, p99, RSS, probes (MODEL_URI, OVERLOAD_ARGS=--quick)
	$(call need_model)
	@dir=results/overload-$(RESULTS_STAMP); mkdir -p $$dir; set -o pipefail; \
	$(PY) benchmarks/overload.py --model-uri $(MODEL_URI) --json $$dir/overload.json $(OVERLOAD_ARGS) \
	  | tee $$dir/overload.txt

benchmark-training: $(STAMP) ## Peak RSS and samples/s of one training epoch at 10k/40k/85k rows, 128 px (TRAINING_BENCH_ARGS)
	@dir=results/benchmark-training-$(RESULTS_STAMP); mkdir -p $$dir; set -o pipefail; \
	$(PY) benchmarks/training_memory.py --workdir $$dir/work --json $$dir/training-memory.json $(TRAINING_BENCH_ARGS) \
	  | tee $$dir/training-memory.txt

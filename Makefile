# Every target CI runs is here; `make help` lists them. Local runs and CI share one target
# directory: the disk holds one warm build, not two.
CARGO_TARGET_DIR ?= /var/cache/lag-target/ci
export CARGO_TARGET_DIR

.PHONY: help run test lint deps-check fmt arroyo-udfs arroyo-udfs-lint arroyo-job deploy-check bench bench-overhead bench-scenarios services-up services-down
help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
run: ## the embedded default: demo upstream + enforcer + SQL job + operator API in one process, no services (Ctrl-C stops)
	cargo run --release -p pipeline -- demo --config deploy/enforcer.demo.yaml --sql sql/incident.sql
test: arroyo-udfs ## run every test (what .ci/run calls)
	# The multi-process test runs the binaries themselves: build them first.
	cargo build -p enforcer -p pipeline --bins
	cargo test --workspace --all-targets
lint: deps-check arroyo-udfs-lint ## formatting, clippy (warnings are errors) and the enforcer's dependency rule
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
# The Arroyo UDF wrappers are a workspace of their own (Arrow 51; see arroyo-udfs/Cargo.toml).
ARROYO_UDFS := --manifest-path arroyo-udfs/Cargo.toml --workspace
arroyo-udfs: ## build the Arroyo UDF wrappers as the cdylibs Arroyo's compiler builds, check each exports __run, test them
	cargo build $(ARROYO_UDFS)
	@for n in mask_pii template_id template cluster_of embedding request_row; do \
		nm -D --defined-only "$(CARGO_TARGET_DIR)/debug/libarroyo_udf_$$n.so" | grep -q ' T __run$$' \
			|| { echo "libarroyo_udf_$$n.so does not export __run"; exit 1; }; \
	done; echo "arroyo-udfs: 6 cdylibs export __run"
	cargo test $(ARROYO_UDFS) --all-targets
arroyo-job: ## regenerate deploy/arroyo/*.json, the Arroyo job definitions (`pipeline submit --dry-run`)
	cargo run -q -p pipeline -- submit --dry-run --unsupported skip --out deploy/arroyo/pipeline.json
	cargo run -q -p pipeline -- submit --dry-run --unsupported keep --out deploy/arroyo/pipeline.full.json
arroyo-udfs-lint: ## formatting and clippy of the Arroyo UDF wrappers
	cargo fmt --all --manifest-path arroyo-udfs/Cargo.toml -- --check
	cargo clippy $(ARROYO_UDFS) --all-targets -- -D warnings
deps-check: ## the enforcer must never pull in the pipeline side (udfs, pipeline, arrow, datafusion, candle)
	@bad=$$(cargo tree -p enforcer -e normal,build --prefix none --format '{p}' | awk '{print $$1}' | sort -u | grep -E '^(udfs|pipeline|arrow.*|datafusion.*|candle.*|tokenizers)$$' || true); \
	if [ -n "$$bad" ]; then echo "enforcer depends on the pipeline side: $$bad"; exit 1; fi; echo "enforcer dependency rule: ok"
fmt: ## format the tree
	cargo fmt --all
	cargo fmt --all --manifest-path arroyo-udfs/Cargo.toml
deploy-check: ## deploy/ against the code: manifests, Helm chart (installs helm once, ~3 min), Dockerfiles, metric names
	LAG_HELM="$$(bash deploy/helm/install-helm.sh)" cargo test -p e2e --test deploy_files
bench: ## criterion benchmarks of the hot paths
	cargo bench -p enforcer
bench-overhead: ## wrk: direct vs nginx vs enforcer with 50 inactive policies (installs wrk and nginx)
	bash deploy/bench/overhead.sh
bench-scenarios: ## the scenario bench: 5 scenarios x (no protection, classic breaker, semantic pipeline), ~17 min; writes deploy/bench/scenarios.md
	cargo run --release -p e2e --bin scenarios -- --out deploy/bench/scenarios.md
services-up: ## start Kafka, etcd, PostgreSQL+pgvector and Redis on loopback (installs them if missing)
	bash deploy/services.sh up
services-down: ## stop them
	bash deploy/services.sh down

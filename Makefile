# Every target CI runs is here; `make help` lists them.
CARGO_TARGET_DIR ?= /var/cache/lag-target/main
export CARGO_TARGET_DIR

.PHONY: help run test lint fmt bench
help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
test: ## run every test (what .ci/run calls)
	cargo test --workspace --all-targets
lint: ## formatting and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
fmt: ## format the tree
	cargo fmt --all

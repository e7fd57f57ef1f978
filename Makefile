# imagegen: the two commands that matter are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: demo run test fmt-check clippy test-rust test-schemathesis

## Run the whole job loop once on the embedded default and exit 0 (non-zero on failure).
demo:
	$(CARGO) run --quiet -p imagegen-local -- demo

## Serve the API locally until Ctrl-C, printing a tenant key and a curl example.
run:
	IMAGEGEN_ALLOW_LOOPBACK=1 $(CARGO) run --quiet -p imagegen-local -- serve

## Everything CI checks: formatting, lints, the template lint, every test (the AWS adapters on
## moto and the Redis limiter on a redis-server, both started by the tests), and API fuzzing.
test: fmt-check clippy lint-template test-rust test-schemathesis

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust: venv
	bash infra/ensure-redis.sh
	$(CARGO) test --workspace

## Fuzz the local runner from docs/openapi.yaml (installs schemathesis into the project venv).
test-schemathesis:
	infra/schemathesis.sh

-include infra/*.mk

# Limiter benchmarks and Redis limiter tests. Included by the top-level Makefile.
#
#   make bench                  every figure of docs/benchmarks.md (release build, a few minutes)
#   make bench BENCH_SECONDS=5  shorter timed parts
#   make test-limiter-redis     the limiter suite on both adapters, plus the Redis-only tests

BENCH_SECONDS ?= 10

.PHONY: bench test-limiter-redis

bench:
	bash infra/ensure-redis.sh
	cargo run --release -q -p imagegen-bench -- all --seconds $(BENCH_SECONDS)

test-limiter-redis:
	bash infra/ensure-redis.sh
	cargo test -p imagegen-shared --features redis --test limiter --test limiter_redis

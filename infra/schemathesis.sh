#!/usr/bin/env bash
# Fuzzes the local runner from docs/openapi.yaml with schemathesis: positive and negative cases,
# every check. Fails on any 5xx, any undocumented status or body, or any invalid input accepted.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$(infra/venv.sh)
cargo build --quiet -p imagegen-local
bin="${CARGO_TARGET_DIR:-$root/target}/debug/imagegen-local"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d)
admin="schemathesis-admin-$$"
# Fuzzed URLs may name public addresses: the runner must never call them.
IMAGEGEN_ALLOW_LOOPBACK=1 IMAGEGEN_OUTBOUND=loopback-only IMAGEGEN_ADMIN_TOKEN="$admin" "$bin" serve --data "$data" --port "$port" >"$data/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$data"' EXIT

base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -sf "$base/healthz" >/dev/null && break
  sleep 0.1
done
key=$(curl -sf -X POST "$base/v1/admin/tenants" -H "Authorization: Bearer $admin" \
  -H 'Content-Type: application/json' \
  -d '{"name":"schemathesis","plan":{"requestsPerMinute":1000000,"dailyCap":1000000,"maxConcurrency":8}}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["apiKey"])')

# Every request here carries the tenant key, and /v1/admin/* takes only the operator token, so
# fuzzing the admin routes would test nothing but their 401. They are left out; tests/openapi.rs
# checks their documented answers with the operator token, and tests/admin_keys.rs and
# tests/api.rs their behaviour.
"$venv/bin/st" --config-file infra/schemathesis.toml run docs/openapi.yaml --url "$base" \
  -H "Authorization: Bearer $key" \
  --exclude-path-regex '^/v1/admin/' \
  --checks all \
  --mode all \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-40}" \
  --seed "${SCHEMATHESIS_SEED:-20261203}" \
  --no-color \
  --report-dir "${SCHEMATHESIS_REPORT_DIR:-$data/report}"

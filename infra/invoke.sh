#!/usr/bin/env bash
# Run one function under cargo-lambda's local Lambda emulator and send it one event.
#
# Usage: infra/invoke.sh FN EVENT CARGO_LAMBDA   (make invoke FN=poll EVENT=events/poll.json)
#
# The function reads its settings from the environment (docs/aws.md), so set them, and
# AWS_ENDPOINT_URL for an emulator, first; without them it stops at init naming the first
# missing variable.
set -euo pipefail

fn="$1"
event="$2"
cargo_lambda="$3"
port="${IMAGEGEN_INVOKE_PORT:-9001}"

"$cargo_lambda" lambda watch --invoke-port "$port" -p "imagegen-$fn" &
watcher=$!
trap 'kill "$watcher" 2>/dev/null || true' EXIT

for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.2
done

# A function that dies at init never answers: give up rather than wait for ever.
timeout "${IMAGEGEN_INVOKE_TIMEOUT:-300}" \
    "$cargo_lambda" lambda invoke --invoke-port "$port" --data-file "$event" "$fn"

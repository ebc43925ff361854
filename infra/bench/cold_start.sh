#!/usr/bin/env bash
# Time from `make up` to the first streamed token, then stop the stack.
#   infra/bench/cold_start.sh [checkout]     (a fresh clone measures the installs too)
set -euo pipefail
cd "${1:-$(dirname "$0")/../..}"
log=$(mktemp)
t0=$(date +%s.%N)
# Own process group: SIGTERM reaches make and the stack launcher, which stops what it started.
setsid make up >"$log" 2>&1 &
pid=$!
trap 'kill -TERM -- -$pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
until grep -q "Sluice is serving" "$log"; do
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2  # a log line to wait for: nothing to await from a shell
done
t_ready=$(date +%s.%N)
url=$(grep -o 'http://[^ ]*/v1' "$log" | head -1)
model=$(curl -s "$url/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
curl -sN "$url/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"max_tokens\":8,\"stream\":true}" \
  | head -c 1 >/dev/null || true  # curl ends on SIGPIPE once the first byte is read
t_first=$(date +%s.%N)
python3 -c "print(f'serving after {$t_ready-$t0:.1f} s; first token after {$t_first-$t0:.1f} s')"

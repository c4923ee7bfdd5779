#!/usr/bin/env bash
# `make run`: the local stack, the topics, a worker and the traffic simulator, until Ctrl-C.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
bin=$repo/.venv/bin

deploy/local/stack.sh start
eval "$(deploy/local/stack.sh env | sed 's/^/export /')"
export CX_HTTP_PORT=${CX_HTTP_PORT:-6066}
# Example prices per handled contact, so the cost figures show (CX_CONTACT_COSTS in
# docs/configuration.md); set CX_CONTACT_COSTS= (empty) to run without costs.
export CX_CONTACT_COSTS=${CX_CONTACT_COSTS-'{"currency": "USD", "channel": {"voice": 6.5, "chat": 3.2, "email": 2.1, "sms": 1.2, "social": 2.4, "video": 7.5}, "queue": {"tech_support": 8.4}}'}
# The simulator attaches a value to most contacts; the rest are valued by segment.
export CX_SEGMENT_VALUES=${CX_SEGMENT_VALUES:-'{"standard": 45, "gold": 180, "platinum": 650}'}
"$bin/cx-stream" topics

mkdir -p .cx-local
worker_log=$repo/.cx-local/worker.log
: >"$worker_log"
"$bin/cx-stream" worker >>"$worker_log" 2>&1 &
worker=$!
simulator=
stop_all() {
  trap - INT TERM
  echo
  echo "stopping the simulator and the worker (Kafka and Redis keep running: 'make stop')"
  [ -n "$simulator" ] && kill -INT "$simulator" 2>/dev/null && wait "$simulator" 2>/dev/null || true
  kill -TERM "$worker" 2>/dev/null && wait "$worker" 2>/dev/null || true
  exit 0
}
trap stop_all INT TERM

url=http://127.0.0.1:$CX_HTTP_PORT
for _ in $(seq 1 120); do
  kill -0 "$worker" 2>/dev/null || { echo "the worker exited; see $worker_log"; tail -20 "$worker_log"; exit 1; }
  curl -fs "$url/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done

# Two weeks of history first, published as fast as Kafka takes them (the worker works through
# them in a few minutes), so that the first screen already has final FCR, a week-over-week
# trend, repeat drivers and customers at risk; then live traffic in real time. Event times
# never run ahead of the present (the worker would dead-letter them as from_future).
# The traffic's density: --rate contacts per wall-clock second at --speed, i.e. 180 contacts
# an hour of event time by default, from 100,000 customers: a customer calls again within the
# week as often as in a real centre (a few in ten), not every few hours.
start=$(date -u -d "14 days ago" +%Y-%m-%dT%H:00:00Z)
until=$(date -u -d "1 day" +%Y-%m-%dT%H:00:00Z)
"$bin/cx-stream" simulate --catch-up --rate "${CX_SIM_RATE:-3}" --speed "${CX_SIM_SPEED:-60}" \
  --customers "${CX_SIM_CUSTOMERS:-100000}" --start "$start" &
simulator=$!

cat <<EOT

cx-stream is running on simulated traffic: the last two weeks as history, as fast as the worker
takes them (a few minutes: the figures fill in as it goes), then live in real time.
  wallboard    $url/wallboard
  at risk      $url/ui/at-risk        a queue  $url/ui/queues/billing
  a customer   $url/ui/customers/cust-000042
  FCR          $url/api/v1/fcr?from=$start&to=$until
  drivers      $url/api/v1/repeat-drivers?from=$start&to=$until&by=reason
  cost         $url/api/v1/cost?from=$start&to=$until
  customer     $url/api/v1/customers/cust-000042   contact $url/api/v1/contacts/{contact_id}
  at-risk API  $url/api/v1/customers/at-risk?order=value&limit=20
  metrics      $url/metrics
  health       $url/healthz   readiness $url/readyz
  worker log   $worker_log
  Kafka        $CX_KAFKA_BOOTSTRAP      Redis $CX_REDIS_URL
Counts every 10 s below; Ctrl-C stops the worker and the simulator.

EOT
while true; do
  if ! kill -0 "$worker" 2>/dev/null; then
    rc=0
    wait "$worker" 2>/dev/null || rc=$?
    [ "$rc" = 75 ] || break  # 75: Redis restarted under it; a restart rewinds (docs/reliability.md)
    echo "the worker stopped with exit code 75 (Redis restarted); starting it again"
    "$bin/cx-stream" worker >>"$worker_log" 2>&1 &
    worker=$!
  fi
  sleep 10
  curl -fs "$url/metrics" 2>/dev/null | awk '
    /^cx_events_consumed_total/ { consumed += $NF }
    /^cx_events_applied_total/ { applied += $NF }
    /^cx_events_duplicate_total/ { dup += $NF }
    /^cx_events_invalid_total/ { bad += $NF }
    END { printf "consumed %d  applied %d  duplicates dropped %d  dead-lettered %d", consumed, applied, dup, bad }' \
    || true
  curl -fs "$url/api/v1/fcr?from=$start&to=$until" 2>/dev/null \
    | "$bin/python" deploy/local/fcr_line.py 2>/dev/null || echo
done
echo "the worker stopped; see $worker_log"

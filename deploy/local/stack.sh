#!/usr/bin/env bash
# Local Apache Kafka (KRaft, single node) and Redis for cx-stream, without Docker.
#
#   deploy/local/stack.sh start|stop|status|env
#
# Kafka: the official jars from Maven Central (deploy/local/kafka/pom.xml, fetched once with mvn
# into $CX_CACHE_DIR), storage formatted on first start, `kafka.Kafka` run in the background.
# Redis: Debian's redis-server with its own data folder, appendonly yes, appendfsync everysec.
# Both bind 127.0.0.1. `start` reuses what already runs; `stop` stops only what this script
# started (pid files in $CX_STACK_DIR). When CX_KAFKA_BOOTSTRAP / CX_REDIS_URL name servers that
# answer, nothing local is started for them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

STACK_DIR=${CX_STACK_DIR:-$repo/.cx-local}
CACHE_DIR=${CX_CACHE_DIR:-$repo/.cx-cache}
KAFKA_PORT=${CX_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${CX_KAFKA_CONTROLLER_PORT:-19093}
REDIS_PORT=${CX_REDIS_PORT:-16379}
KAFKA_HEAP=${CX_KAFKA_HEAP:-512m}
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")
KAFKA_LIBS=$CACHE_DIR/kafka-$KAFKA_VERSION/libs

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- helpers -------------------------------------------------------------------------------

apt_updated=0
apt_install() {
  # Installs Debian packages when we are root; otherwise says what is missing.
  if [ "$(id -u)" != 0 ]; then die "missing $*: install with 'sudo apt-get install -y $*'"; fi
  if [ $apt_updated = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
    apt_updated=1
  fi
  log "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

host_of() { local hp=${1##*://}; hp=${hp##*@}; hp=${hp%%/*}; echo "${hp%:*}"; }
port_of() { local hp=${1##*://}; hp=${hp##*@}; hp=${hp%%/*}; echo "${hp##*:}"; }

external_kafka() {
  # True when CX_KAFKA_BOOTSTRAP names a broker other than ours that accepts connections.
  [ -n "${CX_KAFKA_BOOTSTRAP:-}" ] || return 1
  [ "${CX_KAFKA_BOOTSTRAP}" != "127.0.0.1:$KAFKA_PORT" ] || return 1
  local first=${CX_KAFKA_BOOTSTRAP%%,*}
  port_open "$(host_of "$first")" "$(port_of "$first")"
}

external_redis() {
  [ -n "${CX_REDIS_URL:-}" ] || return 1
  [ "${CX_REDIS_URL}" != "redis://127.0.0.1:$REDIS_PORT/0" ] || return 1
  port_open "$(host_of "$CX_REDIS_URL")" "$(port_of "$CX_REDIS_URL")"
}

# --- Redis ---------------------------------------------------------------------------------

start_redis() {
  if external_redis; then log "redis: using $CX_REDIS_URL"; return; fi
  local dir=$STACK_DIR/redis pidf=$STACK_DIR/redis/redis.pid
  if pid_alive "$pidf"; then log "redis: already running (pid $(cat "$pidf"), port $REDIS_PORT)"; return; fi
  if port_open 127.0.0.1 "$REDIS_PORT"; then
    die "port $REDIS_PORT is taken by a process this script did not start; set CX_REDIS_PORT or CX_REDIS_URL"
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$dir"
  cat >"$dir/redis.conf" <<EOF
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile $pidf
dir $dir
logfile $dir/redis.log
appendonly yes
appendfsync everysec
save ""
EOF
  redis-server "$dir/redis.conf"
  for _ in $(seq 1 100); do
    if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
      log "redis: started on 127.0.0.1:$REDIS_PORT (data in $dir)"; return
    fi
    sleep 0.1
  done
  die "redis did not answer within 10 s; see $dir/redis.log"
}

stop_redis() {
  local pidf=$STACK_DIR/redis/redis.pid
  if pid_alive "$pidf"; then
    local pid
    pid=$(cat "$pidf")  # redis removes its pid file as it exits
    redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    wait_gone "$pid" redis
  fi
  rm -f "$pidf"
}

# --- Kafka ---------------------------------------------------------------------------------

fetch_kafka() {
  [ -f "$KAFKA_LIBS/.complete" ] && return
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  log "kafka: fetching Apache Kafka $KAFKA_VERSION jars from Maven Central (once)"
  rm -rf "$KAFKA_LIBS"
  mkdir -p "$CACHE_DIR"
  if ! mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >"$CACHE_DIR/mvn.log" 2>&1; then
    cat "$CACHE_DIR/mvn.log" >&2
    die "could not fetch the Kafka jars with mvn (log above)"
  fi
  touch "$KAFKA_LIBS/.complete"
}

start_kafka() {
  if external_kafka; then log "kafka: using $CX_KAFKA_BOOTSTRAP"; return; fi
  local dir=$STACK_DIR/kafka pidf=$STACK_DIR/kafka/kafka.pid
  if pid_alive "$pidf"; then log "kafka: already running (pid $(cat "$pidf"), port $KAFKA_PORT)"; return; fi
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_open 127.0.0.1 "$p"; then
      die "port $p is taken by a process this script did not start; set CX_KAFKA_PORT/CX_KAFKA_CONTROLLER_PORT or CX_KAFKA_BOOTSTRAP"
    fi
  done
  fetch_kafka
  mkdir -p "$dir/data"
  sed -e "s:@KAFKA_PORT@:$KAFKA_PORT:g" -e "s:@CONTROLLER_PORT@:$KAFKA_CONTROLLER_PORT:g" \
      -e "s:@DATA_DIR@:$dir/data:g" "$here/kafka/server.properties.in" >"$dir/server.properties"
  local javaopts=(-Xms128m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true
                  "-Dlog4j2.configurationFile=$here/kafka/log4j2.yaml")
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    java "${javaopts[@]}" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format --standalone \
      -t "$cluster_id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || die "kafka storage format failed; see $dir/format.log"
  fi
  : >"$dir/kafka.log"
  nohup java "${javaopts[@]}" -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" \
    >>"$dir/kafka.log" 2>&1 </dev/null &
  echo $! >"$pidf"
  local deadline=$((SECONDS + ${CX_KAFKA_START_TIMEOUT:-120}))
  while [ $SECONDS -lt $deadline ]; do
    pid_alive "$pidf" || die "kafka exited during start; see $dir/kafka.log"
    if grep -q "Kafka Server started" "$dir/kafka.log" && port_open 127.0.0.1 "$KAFKA_PORT"; then
      log "kafka: Apache Kafka $KAFKA_VERSION started on 127.0.0.1:$KAFKA_PORT (data in $dir)"; return
    fi
    sleep 0.2
  done
  die "kafka did not start within ${CX_KAFKA_START_TIMEOUT:-120} s; see $dir/kafka.log"
}

stop_kafka() {
  local pidf=$STACK_DIR/kafka/kafka.pid
  if pid_alive "$pidf"; then
    local pid
    pid=$(cat "$pidf")
    kill "$pid" 2>/dev/null || true
    wait_gone "$pid" kafka
  fi
  rm -f "$pidf"
}

wait_gone() {
  local pid=$1 name=$2
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || { log "$name: stopped"; return; }; sleep 0.1; done
  log "$name: did not stop within 30 s, killing"; kill -9 "$pid" 2>/dev/null || true
}

status_one() {
  local name=$1 pidf=$2 addr=$3 ext=$4
  if $ext; then echo "$name: external at $addr"
  elif pid_alive "$pidf"; then echo "$name: running (pid $(cat "$pidf")) at $addr"
  else echo "$name: not running"; fi
}

print_env() {
  if external_kafka; then echo "CX_KAFKA_BOOTSTRAP=$CX_KAFKA_BOOTSTRAP"
  else echo "CX_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"; fi
  if external_redis; then echo "CX_REDIS_URL=$CX_REDIS_URL"
  else echo "CX_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"; fi
}

case "${1:-}" in
  start) mkdir -p "$STACK_DIR"; start_redis; start_kafka ;;
  stop) stop_kafka; stop_redis ;;
  status)
    if external_kafka; then ek=true; else ek=false; fi
    if external_redis; then er=true; else er=false; fi
    status_one kafka "$STACK_DIR/kafka/kafka.pid" "${CX_KAFKA_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}" $ek
    status_one redis "$STACK_DIR/redis/redis.pid" "${CX_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}" $er ;;
  env) print_env ;;
  fetch) fetch_kafka ;;
  tools)  # what the tests use besides the servers
    command -v promtool >/dev/null || apt_install prometheus
    command -v chromium >/dev/null || apt_install chromium
    command -v redis-server >/dev/null || apt_install redis-server ;;
  *) echo "usage: $0 start|stop|status|env|fetch|tools" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Local Apache Kafka (KRaft, single node) and Redis for cx-stream, without Docker.
#
#   deploy/local/stack.sh start|stop [redis|kafka] | status|env|fetch|tools
#
# Kafka: the official jars from Maven Central (deploy/local/kafka/pom.xml, fetched once with mvn
# into $CX_CACHE_DIR), storage formatted on first start, `kafka.Kafka` run in the background.
# Redis: Debian's redis-server with its own data folder, appendonly yes, appendfsync everysec;
# CX_LOCAL_REDIS=cluster starts a 3-master Redis Cluster on CX_REDIS_PORT and the next two
# ports, CX_LOCAL_REDIS=sentinel a primary, a replica and a sentinel on those three ports.
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
LOCAL_REDIS=${CX_LOCAL_REDIS:-single}
SENTINEL_SERVICE=cx-primary
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
  # True when CX_REDIS_URL names a Redis other than ours that accepts connections.
  [ -n "${CX_REDIS_URL:-}" ] || return 1
  [ "${CX_REDIS_URL}" != "$(local_redis_url)" ] || return 1
  local first=${CX_REDIS_URL%%,*}
  port_open "$(host_of "$first")" "$(port_of "$first")"
}

# --- Redis ---------------------------------------------------------------------------------

redis_instance() {
  # redis_instance NAME PORT [config line...]: start one redis-server, or reuse it.
  local name=$1 port=$2; shift 2
  local dir=$STACK_DIR/$name pidf=$STACK_DIR/$name/redis.pid
  if pid_alive "$pidf"; then log "$name: already running (pid $(cat "$pidf"), port $port)"; return; fi
  if port_open 127.0.0.1 "$port"; then
    die "port $port is taken by a process this script did not start; set CX_REDIS_PORT or CX_REDIS_URL"
  fi
  mkdir -p "$dir"
  {
    printf '%s\n' "bind 127.0.0.1" "port $port" "protected-mode yes" "daemonize yes" \
      "pidfile $pidf" "dir $dir" "logfile $dir/redis.log"
    printf '%s\n' "$@"
  } >"$dir/redis.conf"
  redis-server "$dir/redis.conf"
  for _ in $(seq 1 100); do
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
      log "$name: started on 127.0.0.1:$port (data in $dir)"; return
    fi
    sleep 0.1
  done
  die "$name did not answer within 10 s; see $dir/redis.log"
}

PERSISTENCE=("appendonly yes" "appendfsync everysec" 'save ""')

start_redis() {
  if external_redis; then log "redis: using $CX_REDIS_URL"; return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  case $LOCAL_REDIS in
    single) redis_instance redis "$REDIS_PORT" "${PERSISTENCE[@]}" ;;
    cluster) start_cluster ;;
    sentinel) start_sentinel ;;
  esac
}

cluster_ports() { echo "$REDIS_PORT" $((REDIS_PORT + 1)) $((REDIS_PORT + 2)); }

start_cluster() {
  # Three masters, no replicas; each node's cluster bus listens on its port + 10000.
  local port nodes=()
  for port in $(cluster_ports); do
    redis_instance "redis-$port" "$port" "${PERSISTENCE[@]}" "cluster-enabled yes" \
      "cluster-config-file nodes.conf" "cluster-node-timeout 5000"
    nodes+=("127.0.0.1:$port")
  done
  if ! redis-cli -p "$REDIS_PORT" cluster info | grep -q '^cluster_known_nodes:3'; then
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
      >"$STACK_DIR/cluster-create.log" 2>&1 \
      || { cat "$STACK_DIR/cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
  fi
  local ok
  for _ in $(seq 1 200); do
    ok=0
    for port in $(cluster_ports); do
      if redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; then
        ok=$((ok + 1))
      fi
    done
    if [ $ok = 3 ]; then
      log "redis cluster: 3 masters on 127.0.0.1 ports $(cluster_ports)"; return
    fi
    sleep 0.1
  done
  die "the redis cluster did not reach cluster_state:ok within 20 s"
}

start_sentinel() {
  # A primary, one replica, and one sentinel watching the primary as $SENTINEL_SERVICE.
  local primary=$REDIS_PORT replica=$((REDIS_PORT + 1)) port=$((REDIS_PORT + 2))
  redis_instance "redis-$primary" "$primary" "${PERSISTENCE[@]}"
  redis_instance "redis-$replica" "$replica" "${PERSISTENCE[@]}" "replicaof 127.0.0.1 $primary"
  local dir=$STACK_DIR/sentinel-$port pidf=$STACK_DIR/sentinel-$port/redis.pid
  if pid_alive "$pidf"; then log "sentinel: already running (pid $(cat "$pidf"), port $port)"; return; fi
  if port_open 127.0.0.1 "$port"; then
    die "port $port is taken by a process this script did not start; set CX_REDIS_PORT"
  fi
  mkdir -p "$dir"
  if [ ! -f "$dir/sentinel.conf" ]; then  # the sentinel rewrites its file with what it learns
    printf '%s\n' "bind 127.0.0.1" "port $port" "daemonize yes" "pidfile $pidf" "dir $dir" \
      "logfile $dir/sentinel.log" \
      "sentinel monitor $SENTINEL_SERVICE 127.0.0.1 $primary 1" \
      "sentinel down-after-milliseconds $SENTINEL_SERVICE 5000" \
      "sentinel failover-timeout $SENTINEL_SERVICE 20000" >"$dir/sentinel.conf"
  fi
  # Debian's redis-server runs as a sentinel with --sentinel (the redis-sentinel package only
  # adds a system service, which would start a sentinel on port 26379).
  redis-server "$dir/sentinel.conf" --sentinel
  for _ in $(seq 1 100); do
    if redis-cli -p "$port" sentinel get-master-addr-by-name "$SENTINEL_SERVICE" 2>/dev/null \
        | grep -q 127.0.0.1; then
      log "sentinel: $SENTINEL_SERVICE is 127.0.0.1:$primary (replica on $replica), sentinel on 127.0.0.1:$port"
      return
    fi
    sleep 0.1
  done
  die "the sentinel did not answer within 10 s; see $dir/sentinel.log"
}

redis_pidfiles() {
  local f
  for f in "$STACK_DIR"/redis/redis.pid "$STACK_DIR"/redis-*/redis.pid \
           "$STACK_DIR"/sentinel-*/redis.pid; do
    if [ -f "$f" ]; then echo "$f"; fi
  done
}

stop_redis() {
  # SIGTERM to every instance first (each takes a moment to shut down cleanly), then wait.
  local pidf pids=() names=() i
  for pidf in $(redis_pidfiles); do
    if pid_alive "$pidf"; then
      pids+=("$(cat "$pidf")")  # redis removes its pid file as it exits
      names+=("$(basename "$(dirname "$pidf")")")
      kill "${pids[-1]}" 2>/dev/null || true
    fi
    rm -f "$pidf"
  done
  for i in "${!pids[@]}"; do wait_gone "${pids[$i]}" "${names[$i]}"; done
}

local_redis_url() {
  local p hosts=""
  case $LOCAL_REDIS in
    single) echo "redis://127.0.0.1:$REDIS_PORT/0" ;;
    cluster)
      for p in $(cluster_ports); do hosts+=${hosts:+,}127.0.0.1:$p; done
      echo "redis+cluster://$hosts" ;;
    sentinel) echo "redis+sentinel://127.0.0.1:$((REDIS_PORT + 2))/$SENTINEL_SERVICE/0" ;;
  esac
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
  else echo "CX_REDIS_URL=$(local_redis_url)"; fi
}

case $LOCAL_REDIS in
  single|cluster|sentinel) ;;
  *) die "CX_LOCAL_REDIS: expected single, cluster or sentinel, got '$LOCAL_REDIS'" ;;
esac

case "${1:-} ${2:-}" in
  "start ") mkdir -p "$STACK_DIR"; start_redis; start_kafka ;;
  "start redis") mkdir -p "$STACK_DIR"; start_redis ;;
  "start kafka") mkdir -p "$STACK_DIR"; start_kafka ;;
  "stop ") stop_kafka; stop_redis ;;
  "stop redis") stop_redis ;;
  "stop kafka") stop_kafka ;;
  "status ")
    if external_kafka; then ek=true; else ek=false; fi
    status_one kafka "$STACK_DIR/kafka/kafka.pid" "${CX_KAFKA_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}" $ek
    if external_redis; then echo "redis: external at $CX_REDIS_URL"
    elif [ -z "$(redis_pidfiles)" ]; then echo "redis: not running"
    else
      for pidf in $(redis_pidfiles); do
        status_one "$(basename "$(dirname "$pidf")")" "$pidf" "$(local_redis_url)" false
      done
    fi ;;
  "env ") print_env ;;
  "fetch ") fetch_kafka ;;
  "tools ")  # what the tests use besides the servers
    command -v promtool >/dev/null || apt_install prometheus
    command -v chromium >/dev/null || apt_install chromium
    command -v redis-server >/dev/null || apt_install redis-server ;;
  *) echo "usage: $0 start|stop [redis|kafka] | status|env|fetch|tools" >&2; exit 2 ;;
esac

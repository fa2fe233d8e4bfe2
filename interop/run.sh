#!/usr/bin/env bash
# Client interop suites (pika, amqplib, aio-pika, Kombu/Celery, rabbitmq-c, Java, Go) against warren or any AMQP 0-9-1 broker,
# then pika and a quorum queue failover scenario (pika, amqplib, Java) against a 3-node warren cluster.
#
#   interop/run.sh                                   start warren, run every suite, stop it
#   AMQP_URL=amqp://guest:guest@host:5672/%2F interop/run.sh   run against that broker
#
# Restart scenarios (reconnecting clients) run the command in INTEROP_RESTART: set here
# for the warren it starts; against another broker, set it yourself, e.g. for RabbitMQ
#   INTEROP_RESTART='rabbitmqctl stop_app && rabbitmqctl start_app'
# Without it they are reported as skipped (not counted as passed). Memory-alarm scenarios
# likewise use INTEROP_ALARM_URL: a second warren with a 1 MiB watermark started here.
#
# WARREN_BIN picks the broker binary (default: $CARGO_TARGET_DIR/release/warren,
# else ./target/release/warren). Exits non-zero if any scenario fails, or if the
# broker it started does not exit 0 on SIGTERM.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
python="${PYTHON:-python3}"
suite_timeout="${INTEROP_SUITE_TIMEOUT:-90}"

log() { printf 'interop: %s\n' "$*" >&2; }

# Client libraries: install only what is missing (CI installs them up front).
if ! "$python" -c 'import pika' >/dev/null 2>&1; then
  log "installing pika"
  "$python" -m pip install --quiet --disable-pip-version-check -r "$here/pika/requirements.txt"
fi
if ! "$python" -c 'import aio_pika' >/dev/null 2>&1; then
  log "installing aio-pika"
  "$python" -m pip install --quiet --disable-pip-version-check -r "$here/aiopika/requirements.txt"
fi
if ! "$python" -c 'import celery' >/dev/null 2>&1; then
  log "installing celery (and kombu)"
  "$python" -m pip install --quiet --disable-pip-version-check -r "$here/celery/requirements.txt"
fi
if ! command -v amqp-get >/dev/null 2>&1 || [ ! -f /usr/include/amqp.h ]; then
  log "installing rabbitmq-c (Debian amqp-tools, librabbitmq-dev)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq amqp-tools librabbitmq-dev >/dev/null
fi
if [ ! -f /usr/share/java/amqp-client.jar ] || ! command -v javac >/dev/null 2>&1; then
  log "installing the Java client (Debian librabbitmq-client-java) and a JDK"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq librabbitmq-client-java default-jdk-headless >/dev/null
fi
if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/github.com/rabbitmq/amqp091-go ]; then
  log "installing Go and amqp091-go (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-github-rabbitmq-amqp091-go-dev >/dev/null
fi
if [ ! -d "$here/amqplib/node_modules/amqplib" ]; then
  log "installing amqplib"
  (cd "$here/amqplib" && npm ci --silent --no-audit --no-fund)
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/warren-interop.XXXXXX")"
started=""
broker_log="$workdir/warren.log"

cleanup() {
  if [ -n "$started" ]; then
    "$here/broker.sh" stop "$workdir" >/dev/null 2>&1 || true
    "$here/broker.sh" stop "$workdir/alarm" >/dev/null 2>&1 || true
  fi
  for n in 1 2 3; do
    [ -d "$workdir/node$n" ] && "$here/broker.sh" stop "$workdir/node$n" >/dev/null 2>&1
  done
  true
  rm -rf "$workdir"
}
trap cleanup EXIT

show_broker_log() {
  if [ -s "$broker_log" ]; then
    log "last lines of the broker log ($broker_log):"
    tail -n 40 "$broker_log" >&2
  fi
}

if [ -z "${AMQP_URL:-}" ]; then
  if [ -n "${WARREN_BIN:-}" ]; then
    bin="$WARREN_BIN"
  elif [ -n "${CARGO_TARGET_DIR:-}" ]; then
    bin="$CARGO_TARGET_DIR/release/warren"
  else
    bin="$repo/target/release/warren"
  fi
  if [ ! -x "$bin" ]; then
    log "broker binary not found at $bin (build with cargo build --release, or set WARREN_BIN)"
    exit 2
  fi
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  started=1
  if ! "$here/broker.sh" start "$workdir" "$bin" "$port"; then
    show_broker_log
    exit 1
  fi
  export AMQP_URL="amqp://guest:guest@127.0.0.1:$port/%2F"
  # Scenarios that need a broker restart (reconnecting clients) call this.
  export INTEROP_RESTART="$here/broker.sh restart $workdir"
  # A second broker with a 1 MiB memory watermark, for memory-alarm scenarios.
  mkdir -p "$workdir/alarm"
  echo "memory_high_watermark_bytes = 1048576" >"$workdir/alarm/warren.toml"
  alarm_port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  if ! "$here/broker.sh" start "$workdir/alarm" "$bin" "$alarm_port" --config "$workdir/alarm/warren.toml"; then
    tail -n 20 "$workdir/alarm/warren.log" >&2
    exit 1
  fi
  export INTEROP_ALARM_URL="amqp://guest:guest@127.0.0.1:$alarm_port/%2F"
  log "started $bin on 127.0.0.1:$port"
else
  export AMQP_URL
  log "using the broker at AMQP_URL"
fi

total_passed=0
total_failed=0
status=0

# run_suite LABEL COMMAND...: runs one client suite, adds up its closing
# "LABEL: N passed, N failed" line; a suite that dies without one counts as a failure.
run_suite() {
  local label="$1"; shift
  local out="$workdir/$label.out"
  local rc=0
  log "running $label"
  timeout --kill-after=5 "$suite_timeout" "$@" 2>&1 | tee "$out" || rc=$?
  local summary
  summary="$(grep -E "^$label: [0-9]+ passed, [0-9]+ failed$" "$out" | tail -n 1 || true)"
  if [ -n "$summary" ]; then
    local p f
    p="$(sed -E 's/^[a-z]+: ([0-9]+) passed, ([0-9]+) failed$/\1/' <<<"$summary")"
    f="$(sed -E 's/^[a-z]+: ([0-9]+) passed, ([0-9]+) failed$/\2/' <<<"$summary")"
    total_passed=$((total_passed + p))
    total_failed=$((total_failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
      log "$label exited $rc"
      total_failed=$((total_failed + 1))
    fi
  else
    log "$label ended (exit $rc) without a summary line"
    total_failed=$((total_failed + 1))
  fi
  if [ "$rc" -ne 0 ]; then status=1; fi
}

run_suite pika "$python" "$here/pika/test_pika.py"
run_suite amqplib node "$here/amqplib/test.js"
run_suite aiopika "$python" "$here/aiopika/test_aiopika.py"
run_suite celery "$python" "$here/celery/test_celery.py"
run_suite rabbitmqc "$here/rabbitmqc/test.sh"
run_suite java "$here/java/test.sh"
run_suite go "$here/go/test.sh"

# The pika suite again against a 3-node warren cluster (127.0.0.2-4), each new connection
# on the next node: a scenario's second connection is on another node than its first.
if [ -n "$started" ]; then
  free_port() {
    "$python" -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$1"
  }
  peers=() urls=()
  for n in 1 2 3; do
    peers+=(--peer "$n=127.0.0.$((n + 1)):$(free_port "127.0.0.$((n + 1))")")
  done
  for n in 1 2 3; do
    ip="127.0.0.$((n + 1))"
    mkdir -p "$workdir/node$n"
    amqp_port="$(free_port "$ip")"
    urls+=("amqp://guest:guest@$ip:$amqp_port/%2F")
    listen="${peers[$((2 * n - 1))]#*=}"
    BROKER_HOST="$ip" "$here/broker.sh" launch "$workdir/node$n" "$bin" "$amqp_port" \
      --node-id "$n" --cluster-listen "$listen" "${peers[@]}"
  done
  cluster_up=1
  for n in 1 2 3; do
    if ! "$here/broker.sh" wait "$workdir/node$n"; then
      tail -n 20 "$workdir/node$n/warren.log" >&2
      cluster_up=""
    fi
  done
  if [ -n "$cluster_up" ]; then
    log "started a 3-node cluster: ${urls[*]}"
    AMQP_URLS="$(IFS=,; echo "${urls[*]}")" INTEROP_LABEL=pikacluster \
      run_suite pikacluster "$python" "$here/pika/test_pika.py"
    # A quorum queue led by node 2, which each client's scenario kills (kill -9) while it
    # publishes; the publisher goes on through node 3, a consumer on node 1 checks that no
    # confirmed message is lost. Node 2 is started again after each.
    export QUORUM_URLS="$(IFS=,; echo "${urls[*]}")"
    export INTEROP_KILL="$here/broker.sh kill9 $workdir/node2"
    export INTEROP_REVIVE="$here/broker.sh revive $workdir/node2"
    for suite in pikaquorum amqplibquorum javaquorum; do
      case "$suite" in
        pikaquorum) run_suite pikaquorum "$python" "$here/pika/test_quorum.py" ;;
        amqplibquorum) run_suite amqplibquorum node "$here/amqplib/quorum.js" ;;
        javaquorum) run_suite javaquorum "$here/java/test.sh" ;;
      esac
      if [ -f "$workdir/node2/broker.rc" ]; then
        "$here/broker.sh" revive "$workdir/node2" || true
      fi
    done
    unset QUORUM_URLS INTEROP_KILL INTEROP_REVIVE
  else
    total_failed=$((total_failed + 1))
    status=1
  fi
  for n in 3 2 1; do
    if ! "$here/broker.sh" stop "$workdir/node$n"; then
      log "cluster node $n did not exit 0 on SIGTERM"
      total_failed=$((total_failed + 1))
      status=1
    fi
  done
fi

if [ -n "$started" ]; then
  broker_rc=0
  "$here/broker.sh" stop "$workdir/alarm" || broker_rc=$?
  "$here/broker.sh" stop "$workdir" || broker_rc=$?
  started=""
  if [ "$broker_rc" -ne 0 ]; then
    log "broker exited with status $broker_rc after SIGTERM (expected 0)"
    total_failed=$((total_failed + 1))
    status=1
  else
    log "broker stopped cleanly (exit 0)"
  fi
fi

if [ "$status" -ne 0 ] || [ "$total_failed" -ne 0 ]; then
  show_broker_log
  status=1
fi
echo "interop: $total_passed passed, $total_failed failed"
exit "$status"

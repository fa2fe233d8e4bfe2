#!/usr/bin/env bash
# The warren that interop/run.sh tests against, with its state in DIR (broker.pid,
# broker.rc, broker.env, warren.log), so that client scenarios can restart it:
# run.sh exports INTEROP_RESTART="interop/broker.sh restart DIR".
#
#   broker.sh start DIR BIN PORT [ARG...]   start (ARGs go to warren), wait for the port
#   broker.sh launch DIR BIN PORT [ARG...]  the same without waiting (cluster nodes listen
#                                           only once a majority is up: launch all, then wait)
#   broker.sh wait DIR             wait up to 30 s for the port of a launched broker
#   broker.sh stop DIR             SIGTERM, wait up to 10 s; exits with the broker's status
#   broker.sh restart DIR          stop (it must exit 0), then start again, same port and data
#   broker.sh kill9 DIR            SIGKILL, wait for it to be gone
#   broker.sh revive DIR           start a killed broker again, same port, data and arguments
# BROKER_HOST (default 127.0.0.1) is the address it listens on.
set -euo pipefail
cmd="$1"
dir="$2"
case "$cmd" in
start)
  "$0" launch "${@:2}"
  exec "$0" wait "$dir"
  ;;
launch)
  bin="$3"
  port="$4"
  host="${BROKER_HOST:-127.0.0.1}"
  extra=("${@:5}")
  printf 'bin=%q\nport=%q\nhost=%q\n' "$bin" "$port" "$host" >"$dir/broker.env"
  declare -p extra >>"$dir/broker.env"
  rm -f "$dir/broker.rc" "$dir/broker.pid"
  mkdir -p "$dir/data"
  (
    "$bin" --listen "$host:$port" --data-dir "$dir/data" "${extra[@]}" \
      </dev/null >>"$dir/warren.log" 2>&1 &
    echo $! >"$dir/broker.pid"
    rc=0
    wait $! || rc=$?
    echo "$rc" >"$dir/broker.rc"
  ) </dev/null >/dev/null 2>&1 &
  # The pid file is written by the subshell: wait for it, so that stop finds it.
  for _ in $(seq 100); do
    [ -s "$dir/broker.pid" ] && exit 0
    sleep 0.05
  done
  echo "broker did not start" >&2
  exit 1
  ;;
wait)
  # shellcheck source=/dev/null
  . "$dir/broker.env"
  for _ in $(seq 300); do
    if [ -f "$dir/broker.rc" ]; then
      echo "broker exited before accepting connections" >&2
      exit 1
    fi
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
      exit 0
    fi
    sleep 0.1
  done
  echo "broker did not accept connections on $host:$port within 30 s" >&2
  exit 1
  ;;
stop)
  [ -f "$dir/broker.pid" ] || exit 0
  kill -TERM "$(cat "$dir/broker.pid")" 2>/dev/null || true
  for _ in $(seq 100); do
    if [ -f "$dir/broker.rc" ]; then
      rm -f "$dir/broker.pid"
      exit "$(cat "$dir/broker.rc")"
    fi
    sleep 0.1
  done
  echo "broker did not exit within 10 s of SIGTERM" >&2
  kill -KILL "$(cat "$dir/broker.pid")" 2>/dev/null || true
  exit 124
  ;;
restart)
  # shellcheck source=/dev/null
  . "$dir/broker.env"
  rc=0
  "$0" stop "$dir" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "broker exited $rc on SIGTERM (expected 0)" >&2
    exit 1
  fi
  BROKER_HOST="$host" exec "$0" start "$dir" "$bin" "$port" "${extra[@]}"
  ;;
kill9)
  [ -f "$dir/broker.pid" ] || exit 0
  kill -KILL "$(cat "$dir/broker.pid")" 2>/dev/null || true
  for _ in $(seq 100); do
    if [ -f "$dir/broker.rc" ]; then
      rm -f "$dir/broker.pid"
      exit 0
    fi
    sleep 0.1
  done
  echo "broker still there 10 s after SIGKILL" >&2
  exit 1
  ;;
revive)
  # shellcheck source=/dev/null
  . "$dir/broker.env"
  BROKER_HOST="$host" exec "$0" start "$dir" "$bin" "$port" "${extra[@]}"
  ;;
*)
  echo "usage: $0 start|launch DIR BIN PORT [ARG...] | wait DIR | stop DIR | restart DIR | kill9 DIR | revive DIR" >&2
  exit 2
  ;;
esac

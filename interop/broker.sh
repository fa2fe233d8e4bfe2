#!/usr/bin/env bash
# The warren that interop/run.sh tests against, with its state in DIR (broker.pid,
# broker.rc, broker.env, warren.log), so that client scenarios can restart it:
# run.sh exports INTEROP_RESTART="interop/broker.sh restart DIR".
#
#   broker.sh start DIR BIN PORT [ARG...]   start (ARGs go to warren), wait for the port
#   broker.sh stop DIR             SIGTERM, wait up to 10 s; exits with the broker's status
#   broker.sh restart DIR          stop (it must exit 0), then start again, same port and data
set -euo pipefail
cmd="$1"
dir="$2"
case "$cmd" in
start)
  bin="$3"
  port="$4"
  extra=("${@:5}")
  printf 'bin=%q\nport=%q\n' "$bin" "$port" >"$dir/broker.env"
  declare -p extra >>"$dir/broker.env"
  rm -f "$dir/broker.rc"
  mkdir -p "$dir/data"
  (
    "$bin" --listen "127.0.0.1:$port" --data-dir "$dir/data" "${extra[@]}" \
      </dev/null >>"$dir/warren.log" 2>&1 &
    echo $! >"$dir/broker.pid"
    rc=0
    wait $! || rc=$?
    echo "$rc" >"$dir/broker.rc"
  ) </dev/null >/dev/null 2>&1 &
  for _ in $(seq 200); do
    if [ -f "$dir/broker.rc" ]; then
      echo "broker exited before accepting connections" >&2
      exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      exit 0
    fi
    sleep 0.1
  done
  echo "broker did not accept connections on 127.0.0.1:$port within 20 s" >&2
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
  exec "$0" start "$dir" "$bin" "$port" "${extra[@]}"
  ;;
*)
  echo "usage: $0 start DIR BIN PORT | stop DIR | restart DIR" >&2
  exit 2
  ;;
esac

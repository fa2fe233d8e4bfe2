#!/usr/bin/env bash
# Interop scenarios for rabbitmq-c: the amqp-tools command-line round trip, and a small C
# program linked against librabbitmq (interop.c). Needs Debian's amqp-tools and
# librabbitmq-dev (.ci/run installs them). The last line is "rabbitmqc: N passed, N failed".
set -uo pipefail

url="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}"
here="$(cd "$(dirname "$0")" && pwd)"
run="$(head -c 5 /dev/urandom | od -An -tx1 | tr -d ' \n')"
work="$(mktemp -d "${TMPDIR:-/tmp}/rabbitmqc.XXXXXX")"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

ok() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

# host and port out of amqp://user:pass@host:port/vhost
hostport="${url#*@}"
hostport="${hostport%%/*}"
host="${hostport%%:*}"
port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=5672

echo "rabbitmq-c $(dpkg-query -W -f='${Version}' librabbitmq-dev 2>/dev/null) against $url (run $run)"

# amqp-tools: declare, publish three (persistent), get one, consume two, delete.
cli() {
  local q="interop.rabbitmqc.$run.cli" got
  [ "$(amqp-declare-queue -u "$url" -d -q "$q")" = "$q" ] || { echo "declare"; return 1; }
  for b in one two three; do
    amqp-publish -u "$url" -r "$q" -p -b "$b" || { echo "publish $b"; return 1; }
  done
  got="$(amqp-get -u "$url" -q "$q")" || { echo "get"; return 1; }
  [ "$got" = "one" ] || { echo "get returned '$got'"; return 1; }
  # amqp-consume runs the command once per message, with the body on its stdin.
  got="$(timeout 20 amqp-consume -u "$url" -q "$q" -c 2 cat)" || { echo "consume"; return 1; }
  [ "$got" = "twothree" ] || { echo "consumed '$got'"; return 1; }
  if amqp-get -u "$url" -q "$q" >/dev/null 2>&1; then echo "queue not empty"; return 1; fi
  amqp-delete-queue -u "$url" -q "$q" >/dev/null || { echo "delete"; return 1; }
}
if why="$(cli 2>&1)"; then ok amqp_tools_round_trip; else fail amqp_tools_round_trip "$why"; fi

if gcc -O1 -Wall -o "$work/interop" "$here/interop.c" -lrabbitmq 2>"$work/gcc.log"; then
  out="$(timeout 30 "$work/interop" "$host" "$port" "interop.rabbitmqc.$run.c" 2>&1)"
  echo "$out"
  passed=$((passed + $(grep -c '^ok ' <<<"$out")))
  failed=$((failed + $(grep -c '^FAIL ' <<<"$out")))
  if [ "$(grep -c -E '^(ok|FAIL) ' <<<"$out")" -ne 2 ]; then
    fail c_program "did not report both scenarios"
  fi
else
  fail c_program "does not compile: $(cat "$work/gcc.log")"
fi

echo "rabbitmqc: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

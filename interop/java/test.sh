#!/usr/bin/env bash
# Builds and runs Interop.java against AMQP_URL with Debian's RabbitMQ Java client
# (librabbitmq-client-java; .ci/run installs it). Last line: "java: N passed, N failed".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cp="/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar"
work="$(mktemp -d "${TMPDIR:-/tmp}/java-interop.XXXXXX")"
trap 'rm -rf "$work"' EXIT
javac -d "$work" -cp "$cp" "$here/Interop.java" "$here/Quorum.java"
# With QUORUM_URLS (run.sh, against its 3-node cluster): the quorum queue failover scenario.
if [ -n "${QUORUM_URLS:-}" ]; then
  exec java -cp "$cp:$work" Quorum
fi
exec java -cp "$cp:$work" Interop "${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}"

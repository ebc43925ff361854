#!/usr/bin/env bash
# Resolve Apache Kafka's broker jars from Maven Central once; later runs use the cache offline.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
libs="${SLUICE_KAFKA_LIBS:-$root/.cache/kafka/$version/libs}"
if [ -f "$libs/.complete" ]; then
  echo "$libs"; exit 0
fi
rm -rf "$libs.tmp" && mkdir -p "$libs.tmp"
mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$libs.tmp" >&2
touch "$libs.tmp/.complete"
rm -rf "$libs" && mv "$libs.tmp" "$libs"
echo "$libs"

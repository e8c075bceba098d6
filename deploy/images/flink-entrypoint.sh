#!/usr/bin/env bash
# The Flink image's entry point. The Flink Kubernetes operator starts pods through it (kubernetes.entry.path,
# /docker-entrypoint.sh by default) with e.g. `bash -c kubernetes-jobmanager.sh kubernetes-application`.
# It enables the plugins ENABLE_BUILT_IN_PLUGINS names (';'-separated jars from $FLINK_HOME/opt, each into
# its own folder under $FLINK_HOME/plugins), then runs the command it was given.
set -euo pipefail
IFS=';' read -ra plugins <<< "${ENABLE_BUILT_IN_PLUGINS:-}"
for jar in "${plugins[@]}"; do
  [ -n "$jar" ] || continue
  if [ ! -f "$FLINK_HOME/opt/$jar" ]; then
    echo "ENABLE_BUILT_IN_PLUGINS names $jar, which is not in $FLINK_HOME/opt: $(ls "$FLINK_HOME/opt")" >&2
    exit 1
  fi
  mkdir -p "$FLINK_HOME/plugins/${jar%.jar}"
  cp -f "$FLINK_HOME/opt/$jar" "$FLINK_HOME/plugins/${jar%.jar}/"
done
exec "$@"

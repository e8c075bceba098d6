#!/usr/bin/env bash
# The Flink image's entry point. The Flink Kubernetes operator starts pods through it (kubernetes.entry.path,
# /docker-entrypoint.sh by default) with e.g. `bash -c kubernetes-jobmanager.sh kubernetes-application`.
# Plugins are baked into $FLINK_HOME/plugins at build time, as the pods' root filesystem is read-only; a
# plugin that ENABLE_BUILT_IN_PLUGINS (Flink's images' convention) asks for must already be there.
set -euo pipefail
IFS=';' read -ra plugins <<< "${ENABLE_BUILT_IN_PLUGINS:-}"
for jar in "${plugins[@]}"; do
  [ -n "$jar" ] || continue
  if ! compgen -G "$FLINK_HOME/plugins/*/$jar" > /dev/null; then
    echo "ENABLE_BUILT_IN_PLUGINS names $jar, which is not baked into $FLINK_HOME/plugins (this image cannot" \
         "copy it there at start: its root filesystem is read-only). Baked in: $(cd "$FLINK_HOME/plugins" && ls -d */)" >&2
    exit 1
  fi
done
exec "$@"

#!/usr/bin/env bash
# Install the pinned tools the deploy/monitoring checks need into $REASEQ_TOOLS (default
# ~/.cache/reaseq/tools/bin): kustomize and kubeconform from the Go module proxy, prometheus and
# promtool from Debian's prometheus package (unpacked, not installed). Idempotent: a tool already
# there at its pinned version is skipped.
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.2
KUBECONFORM_VERSION=v0.8.0
PROMETHEUS_DEB_VERSION=2.42.0+ds-5+deb12u1

TOOLS=${REASEQ_TOOLS:-$HOME/.cache/reaseq/tools}
BIN=$TOOLS/bin
mkdir -p "$BIN"

stamp_ok() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$BIN/.$1.version"; }

go_tool() {  # name module version
  local name=$1 module=$2 version=$3
  stamp_ok "$name" "$version" && return 0
  command -v go >/dev/null || { echo "go is needed to build $name ($module@$version)" >&2; exit 1; }
  echo "building $name $version from the Go module proxy …"
  GOBIN="$BIN" CGO_ENABLED=0 nice -n 10 go install "$module@$version"
  stamp "$name" "$version"
}

go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"
go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"

if ! stamp_ok promtool "$PROMETHEUS_DEB_VERSION" || ! stamp_ok prometheus "$PROMETHEUS_DEB_VERSION"; then
  command -v apt-get >/dev/null || { echo "apt-get is needed to fetch Debian's prometheus package" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "fetching Debian's prometheus $PROMETHEUS_DEB_VERSION …"
  if ! (cd "$work" && apt-get download -q "prometheus=$PROMETHEUS_DEB_VERSION" >/dev/null 2>&1); then
    # a fresh machine has no package lists yet
    apt-get update -q >/dev/null
    (cd "$work" && apt-get download -q "prometheus=$PROMETHEUS_DEB_VERSION")
  fi
  dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
  install -m 0755 "$work/x/usr/bin/prometheus" "$work/x/usr/bin/promtool" "$BIN/"
  stamp promtool "$PROMETHEUS_DEB_VERSION"
  stamp prometheus "$PROMETHEUS_DEB_VERSION"
fi
"$BIN/kustomize" version >/dev/null && "$BIN/kubeconform" -v >/dev/null && "$BIN/promtool" --version >/dev/null

# The image builder (make images): buildah, podman (import only) and debootstrap, Debian's packages. They
# install system-wide, so only as root; otherwise say how, and the image tests skip with that reason.
if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing buildah, podman and debootstrap (Debian packages) for make images …"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends buildah podman debootstrap \
      >/dev/null || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends buildah podman debootstrap >/dev/null; }
  else
    echo "note: buildah/podman/debootstrap missing; as root: apt-get install buildah podman debootstrap" >&2
  fi
fi

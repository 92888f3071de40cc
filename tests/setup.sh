#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12 (idempotent; quick when everything is present):
# podman, skopeo, docker-registry, nginx, wrk, curl, time, debootstrap, prometheus (and promtool),
# containerd (and ctr) and docker.io (dockerd; the tests start their own daemons, the packages'
# services are not used) from apt; cosign from Debian 13's
# package (it needs only libc6 >= 2.34) into $PORTCULLIS_TOOLS/bin; a minimal Debian 13 tree
# with its skopeo (sigstore enabled, unlike Debian 12's) in $PORTCULLIS_TOOLS/trixie; a Debian 12
# base image tarball for the container image test; componentize-py (Python package index) and
# componentize-js (npm registry) for the JavaScript and Python policies; the wasm32-wasip2 Rust
# target.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
tools="${PORTCULLIS_TOOLS:-${HOME:-/root}/.cache/portcullis-tools}"
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"

missing=()
for pair in podman:podman skopeo:skopeo docker-registry:docker-registry nginx:nginx wrk:wrk \
            curl:curl setsid:util-linux dpkg-deb:dpkg debootstrap:debootstrap \
            prometheus:prometheus promtool:prometheus containerd:containerd ctr:containerd \
            dockerd:docker.io docker:docker.io node:nodejs npm:npm python3:python3 /usr/bin/time:time; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
  echo "setup: installing python3-venv"
  $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

# the JavaScript and Python policy toolchains (policies/build-guests.sh), pinned
if [ ! -x "$tools/componentize-py/bin/componentize-py" ]; then
  echo "setup: installing componentize-py into $tools/componentize-py"
  rm -rf "$tools/componentize-py"
  python3 -m venv "$tools/componentize-py"
  "$tools/componentize-py/bin/pip" install -q componentize-py==0.25.1
fi
if [ ! -d "$tools/js/node_modules/@bytecodealliance/componentize-js" ]; then
  echo "setup: installing componentize-js into $tools/js"
  mkdir -p "$tools/js"
  npm install --silent --prefix "$tools/js" @bytecodealliance/componentize-js@0.23.0 >/dev/null
fi

mirror() { # the machine's Debian mirror, from its apt sources
  local uri
  uri=$(sed -n 's/^URIs: *\([^ ]*\/debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
  [ -n "$uri" ] || uri=$(sed -n 's/^deb  *\([^ ]*\/debian\)\/* .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
  [ -n "$uri" ] || { echo "setup: no Debian mirror found in the apt sources" >&2; exit 1; }
  echo "$uri"
}

if [ ! -x "$tools/bin/cosign" ] && ! command -v cosign >/dev/null 2>&1; then
  echo "setup: fetching cosign from Debian 13 (trixie)"
  t="$(mktemp -d)"; trap 'rm -rf "$t"' EXIT
  mkdir -p "$t/lists/partial" "$t/cache/archives/partial" "$tools/bin"
  uri=$(mirror)
  echo "deb $uri trixie main" > "$t/sources.list"
  o=(-o Dir::Etc::sourcelist="$t/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$t/lists"
     -o Dir::Cache="$t/cache" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
  apt-get "${o[@]}" update -qq >/dev/null
  (cd "$t" && apt-get "${o[@]}" download -qq cosign >/dev/null)
  dpkg-deb -x "$t"/cosign_*.deb "$t/x"
  install -m 0755 "$t/x/usr/bin/cosign" "$tools/bin/cosign"
fi

# Debian 13's skopeo verifies and makes sigstore signatures; it needs Debian 13's libraries, so
# it runs from this tree through the tree's own dynamic loader (tests/common: sigstore_skopeo)
if [ ! -x "$tools/trixie/usr/bin/skopeo" ]; then
  echo "setup: bootstrapping a minimal Debian 13 (trixie) with skopeo into $tools/trixie"
  mkdir -p "$tools"; rm -rf "$tools/trixie.tmp"
  $sudo debootstrap --variant=minbase --include=skopeo,ca-certificates,containernetworking-plugins \
    trixie "$tools/trixie.tmp" "$(mirror)" > "$tools/debootstrap.log" 2>&1 ||
    { echo "setup: debootstrap failed; see $tools/debootstrap.log" >&2; exit 1; }
  mv "$tools/trixie.tmp" "$tools/trixie"
fi

# A Debian 12 (bookworm) base image, made by debootstrap from the machine's mirror, for the
# container image test: tagged in the test's podman storage as the Containerfile's base
# (docker.io/library/debian:bookworm-slim), which cannot be pulled here
if [ ! -s "$tools/bookworm-base.tar" ]; then
  echo "setup: bootstrapping a minimal Debian 12 (bookworm) base image into $tools/bookworm-base.tar"
  mkdir -p "$tools"; rm -rf "$tools/bookworm.tmp"
  $sudo debootstrap --variant=minbase bookworm "$tools/bookworm.tmp" "$(mirror)" \
    > "$tools/debootstrap-bookworm.log" 2>&1 ||
    { echo "setup: debootstrap failed; see $tools/debootstrap-bookworm.log" >&2; exit 1; }
  $sudo rm -rf "$tools/bookworm.tmp/var/cache/apt/archives/"*.deb "$tools/bookworm.tmp/var/lib/apt/lists/"*
  $sudo tar -C "$tools/bookworm.tmp" -cf "$tools/bookworm-base.tar.tmp" .
  mv "$tools/bookworm-base.tar.tmp" "$tools/bookworm-base.tar"
  $sudo rm -rf "$tools/bookworm.tmp"
fi

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2 >/dev/null
fi

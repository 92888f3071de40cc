#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12 (idempotent; quick when everything is present):
# podman, skopeo, docker-registry, nginx, wrk, curl from apt; cosign from Debian 13's package
# (it needs only libc6 >= 2.34) into $PORTCULLIS_TOOLS/bin; the wasm32-wasip2 Rust target.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
tools="${PORTCULLIS_TOOLS:-${HOME:-/root}/.cache/portcullis-tools}"
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"

missing=()
for pair in podman:podman skopeo:skopeo docker-registry:docker-registry nginx:nginx wrk:wrk \
            curl:curl setsid:util-linux dpkg-deb:dpkg; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$tools/bin/cosign" ] && ! command -v cosign >/dev/null 2>&1; then
  echo "setup: fetching cosign from Debian 13 (trixie)"
  t="$(mktemp -d)"; trap 'rm -rf "$t"' EXIT
  mkdir -p "$t/lists/partial" "$t/cache/archives/partial" "$tools/bin"
  uri=$(sed -n 's/^URIs: *\([^ ]*\/debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
  [ -n "$uri" ] || uri=$(sed -n 's/^deb  *\([^ ]*\/debian\)\/* .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
  [ -n "$uri" ] || { echo "setup: no Debian mirror found in the apt sources" >&2; exit 1; }
  echo "deb $uri trixie main" > "$t/sources.list"
  o=(-o Dir::Etc::sourcelist="$t/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$t/lists"
     -o Dir::Cache="$t/cache" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
  apt-get "${o[@]}" update -qq >/dev/null
  (cd "$t" && apt-get "${o[@]}" download -qq cosign >/dev/null)
  dpkg-deb -x "$t"/cosign_*.deb "$t/x"
  install -m 0755 "$t/x/usr/bin/cosign" "$tools/bin/cosign"
fi

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2 >/dev/null
fi

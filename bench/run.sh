#!/usr/bin/env bash
# Benchmark: Portcullis side by side with distribution's pull-through proxy (Debian's
# docker-registry in proxy mode) and nginx serving the same blob file, all on loopback, each
# scenario run against each server alternately for several rounds. Prints medians and ratios,
# writes bench/results.md and bench/results.svg. Every server runs with its access log on (what
# an operator gets by default). Any failed or short download, and any load generator error, fails
# the run or shows in the table as errors, never as a figure.
#
#   bench/run.sh            release build, 256 MiB blob, 5 rounds (about fifteen minutes)
#   bench/run.sh --quick    debug build, 8 MiB blob, 1 round (a minute; run by tests/run.sh)
#   BLOB_MIB=1024 ROUNDS=1 bench/run.sh   writes bench/results-1024mib.md instead
#   PORTCULLIS_BIN=path bench/run.sh   the same, measuring that binary
set -euo pipefail
cd "$(dirname "$0")/.."
quick=""; [ "${1:-}" = "--quick" ] && quick=1
if [ -n "$quick" ]; then
  BLOB_MIB=8; ROUNDS=1; WRK_SECS=1; OPEN_RATE=1000; bin=target/debug/portcullis; openloop=target/debug/examples/openloop
  [ -x "$bin" ] && [ -x "$openloop" ] || cargo build --quiet --bin portcullis --example openloop
else
  # BLOB_MIB and ROUNDS may be set, e.g. BLOB_MIB=1024 ROUNDS=1 for the 1 GiB memory check
  BLOB_MIB="${BLOB_MIB:-256}"; ROUNDS="${ROUNDS:-5}"; WRK_SECS=5; OPEN_RATE="${OPEN_RATE:-10000}"
  bin=target/release/portcullis; openloop=target/release/examples/openloop
  cargo build --release --quiet --bin portcullis --example openloop
fi
# PORTCULLIS_BIN measures another build of Portcullis (e.g. an earlier commit's) in the same run
bin="${PORTCULLIS_BIN:-$bin}"
for tool in docker-registry nginx wrk curl skopeo python3; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "bench: $tool is missing (tests/setup.sh installs it)" >&2; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fail() { echo "bench: $*" >&2; exit 1; }
wait_http() { for _ in $(seq 1 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; fail "$1 did not answer"; }
sha256_of() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }

registry() { # name port [remote]
  local dir="$work/$1"; mkdir -p "$dir/storage"
  {
    echo "version: 0.1"; echo "log: {level: error, accesslog: {disabled: false}}"
    echo "storage: {filesystem: {rootdirectory: $dir/storage}, delete: {enabled: true}}"
    echo "http: {addr: 127.0.0.1:$2, secret: bench}"
    [ -n "${3:-}" ] && echo "proxy: {remoteurl: $3}"
  } > "$dir/config.yml"
  docker-registry serve "$dir/config.yml" > "$dir/access.log" 2>&1 & pids+=($!)
  wait_http "http://127.0.0.1:$2/v2/"
}

# upstream with a big blob and a small image (3-layer images for cold pulls come later)
UP=$(port); registry upstream "$UP"
python3 bench/mkimage.py "$work/big" big "$BLOB_MIB" > "$work/big.txt"
python3 bench/mkimage.py "$work/small" small 1 > "$work/small.txt"
for img in big small; do
  skopeo copy -q --dest-tls-verify=false "oci:$work/$img:$img" "docker://127.0.0.1:$UP/bench/$img:v1" >/dev/null
done
BIG=$(sed -n 2p "$work/big.txt"); BIG_FILE="$work/big/blobs/sha256/${BIG#sha256:}"; BIG_BYTES=$(stat -c %s "$BIG_FILE")

# Portcullis: "up" without a policy, "pol" with deny-tags in scope
PC=$(port); mkdir -p "$work/pc"
cat > "$work/pc/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$PC"
[storage]
path = "data"
[policies]
audit = "audit.log"
[[policy]]
name = "deny-tags"
module = "$PWD/policies/target/wasm32-wasip2/release/deny_tags.wasm"
scope = ["pol/*"]
[[upstream]]
name = "up"
url = "http://127.0.0.1:$UP"
[[upstream]]
name = "pol"
url = "http://127.0.0.1:$UP"
EOF
[ -f policies/target/wasm32-wasip2/release/deny_tags.wasm ] || (cd policies && cargo build --quiet --release --target wasm32-wasip2)
# its default log level (info) writes an access line per request, like the peers' access logs
env -u RUST_LOG "$bin" serve --config "$work/pc/proxy.toml" > "$work/pc/log" 2>&1 & PC_PID=$!; pids+=($PC_PID)
wait_http "http://127.0.0.1:$PC/v2/"
# distribution in proxy mode, and nginx serving the blob file
DP=$(port); registry peer "$DP" "http://127.0.0.1:$UP"
NG=$(port); mkdir -p "$work/nginx/www/v2/bench/big/blobs" "$work/nginx/logs" "$work/nginx/cache"
# the same nginx also as a caching reverse proxy of the upstream (NGC) and as a plain one (NGP):
# peers for cold pulls
NGC=$(port); NGP=$(port)
ln "$BIG_FILE" "$work/nginx/www/v2/bench/big/blobs/$BIG" 2>/dev/null || cp "$BIG_FILE" "$work/nginx/www/v2/bench/big/blobs/$BIG"
# and the small image's manifest as a static file: the ceiling for manifest GETs
SMALL_MANIFEST=$(sed -n 1p "$work/small.txt"); mkdir -p "$work/nginx/www/v2/bench/small/manifests"
cp "$work/small/blobs/sha256/${SMALL_MANIFEST#sha256:}" "$work/nginx/www/v2/bench/small/manifests/v1"
cp "$work/small/blobs/sha256/${SMALL_MANIFEST#sha256:}" "$work/nginx/www/v2/bench/small/manifests/$SMALL_MANIFEST"
cat > "$work/nginx/nginx.conf" <<EOF
user root;
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 1024; }
http {
  access_log $work/nginx/logs/access.log; sendfile on; tcp_nopush on;
  client_body_temp_path $work/nginx/tmp; proxy_temp_path $work/nginx/tmp; fastcgi_temp_path $work/nginx/tmp;
  uwsgi_temp_path $work/nginx/tmp; scgi_temp_path $work/nginx/tmp;
  server { listen 127.0.0.1:$NG; root $work/nginx/www; default_type application/octet-stream; }
  proxy_cache_path $work/nginx/cache levels=1:2 keys_zone=registry:10m max_size=10g inactive=1h use_temp_path=off;
  upstream registry { server 127.0.0.1:$UP; keepalive 16; }
  server {
    listen 127.0.0.1:$NGC;
    location / {
      proxy_pass http://registry; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$http_host;
      proxy_cache registry; proxy_cache_valid 200 1h; proxy_cache_lock on; proxy_cache_key \$uri\$http_accept;
    }
  }
  server {
    listen 127.0.0.1:$NGP;
    location / {
      proxy_pass http://registry; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$http_host;
      proxy_buffering off;
    }
  }
}
EOF
mkdir -p "$work/nginx/tmp"
"$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx" -g 'daemon off;' & pids+=($!)
wait_http "http://127.0.0.1:$NG/v2/bench/big/blobs/$BIG"

declare -A URL=(
  [portcullis]="http://127.0.0.1:$PC/v2/up/bench/big/blobs/$BIG"
  [distribution]="http://127.0.0.1:$DP/v2/bench/big/blobs/$BIG"
  [nginx]="http://127.0.0.1:$NG/v2/bench/big/blobs/$BIG"
)
# warm-up (the proxies' cold fetch), each server's bytes checked against the blob's digest
for s in portcullis distribution nginx; do
  curl -sS --fail -o "$work/warm" "${URL[$s]}" || fail "warm-up GET from $s failed"
  [ "$(sha256_of "$work/warm")" = "$BIG" ] || fail "$s served other bytes than $BIG"
done
rm -f "$work/warm"; sleep 1

# N parallel downloads of a blob; every one must succeed with all its bytes
downloads() { # url clients bytes
  local i ps=()
  for i in $(seq 1 "$2"); do curl -sS --fail -o /dev/null -w '%{size_download}' "$1" > "$work/size.$i" & ps+=($!); done
  for i in "${!ps[@]}"; do wait "${ps[$i]}" || fail "download $((i + 1)) of $2 from $1 failed"; done
  for i in $(seq 1 "$2"); do
    [ "$(cat "$work/size.$i")" = "$3" ] || fail "download $i of $2 from $1 got $(cat "$work/size.$i") of $3 bytes"
  done
}
# MiB/s for N parallel full downloads of the big blob
throughput() { # url clients
  local start end
  start=$(date +%s.%N)
  downloads "$1" "$2" "$BIG_BYTES"
  end=$(date +%s.%N)
  python3 -c "print(round($BLOB_MIB*$2/($end-$start), 1))"
}
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(round(statistics.median(v), 2))' "$@"; }
# Portcullis's peak memory while a command runs: "anonymous_kib resident_kib file_kib"
memwatch_start() { python3 bench/memwatch.py "$PC_PID" "$work/mem" & MEMWATCH=$!; sleep 0.2; }
memwatch_stop() { kill "$MEMWATCH"; wait "$MEMWATCH" || true; cat "$work/mem"; }
declare -A R
for clients in 1 16; do
  for s in portcullis distribution nginx; do R[$s-$clients]=""; done
  [ "$clients" = 16 ] && memwatch_start
  for _ in $(seq 1 "$ROUNDS"); do
    for s in portcullis distribution nginx; do
      R[$s-$clients]+="$(throughput "${URL[$s]}" "$clients") "
    done
  done
done
read -r MEM16_ANON MEM16_RSS MEM16_FILE MEM16_START <<< "$(memwatch_stop)"

# manifest GETs at 64 connections (wrk), p99 from its latency distribution; again at 8
# connections, where the latency is the server's rather than the queue's. wrk's non-2xx and
# socket errors are kept: a row with any shows them instead of a figure.
ACCEPT='Accept: application/vnd.oci.image.manifest.v1+json'
rps() { # url [connections] [wrk script] -> "requests/s p99_ms errors"
  wrk -t2 -c"${2:-64}" -d"${WRK_SECS}s" --latency -H "$ACCEPT" ${3:+-s "$3"} "$1" 2>&1 |
    awk '/Requests\/sec/ {r=$2} /^ *99%/ {p=$2} /Non-2xx or 3xx responses:/ {e+=$NF}
      /Socket errors:/ {gsub(",", ""); e+=$4+$6+$8+$10} END {
      if (p ~ /us$/) {sub(/us/,"",p); p=p/1000} else if (p ~ /ms$/) {sub(/ms/,"",p)} else if (p ~ /s$/) {sub(/s/,"",p); p=p*1000}
      if (r == "") e+=1
      print r+0, p+0, e+0 }'
}
# by tag: Portcullis answers from its tag resolution (revalidated after tag_ttl), distribution
# asks the upstream on every GET; by digest neither asks the upstream
declare -A M=(
  [portcullis]="http://127.0.0.1:$PC/v2/up/bench/small/manifests/v1"
  [portcullis+policy]="http://127.0.0.1:$PC/v2/pol/bench/small/manifests/v1"
  [distribution]="http://127.0.0.1:$DP/v2/bench/small/manifests/v1"
  [nginx]="http://127.0.0.1:$NG/v2/bench/small/manifests/v1"
)
declare -A MD=(
  [portcullis]="http://127.0.0.1:$PC/v2/up/bench/small/manifests/$SMALL_MANIFEST"
  [portcullis+policy]="http://127.0.0.1:$PC/v2/pol/bench/small/manifests/$SMALL_MANIFEST"
  [distribution]="http://127.0.0.1:$DP/v2/bench/small/manifests/$SMALL_MANIFEST"
  [nginx]="http://127.0.0.1:$NG/v2/bench/small/manifests/$SMALL_MANIFEST"
)
# and at a fixed rate over 64 connections (bench/openloop.rs: open loop, latency counted from
# when each request was due), the server's latency at a load it sustains rather than a queue's;
# distribution cannot sustain the rate (its maximum is the row above) and is left out. A run
# with errors or below 97% of the rate is kept as such.
open_p99() { # url -> "p99_ms" or "x<achieved req/s>/<errors>"
  "$openloop" "$1" "$OPEN_RATE" 64 "$WRK_SECS" "$ACCEPT" |
    awk -v rate="$OPEN_RATE" '{ if ($5 > 0 || $1 < 0.97 * rate) print "x" int($1) "/" $5; else print $3 }'
}
for s in portcullis portcullis+policy distribution nginx; do
  for url in "${M[$s]}" "${MD[$s]}"; do
    [ "$(curl -sS --fail -H "$ACCEPT" "$url" -o "$work/m" -w '%{http_code}' && sha256_of "$work/m")" = "200sha256:${SMALL_MANIFEST#sha256:}" ] ||
      fail "$s did not serve the manifest $SMALL_MANIFEST at $url"
  done
done
declare -A Q QE P PE P8 P8E PO D DE U UE
for s in portcullis portcullis+policy distribution nginx; do
  Q[$s]=""; QE[$s]=""; P[$s]=""; PE[$s]=""; P8[$s]=""; P8E[$s]=""; PO[$s]=""; D[$s]=""; DE[$s]=""; U[$s]=""; UE[$s]=""
done
for _ in $(seq 1 "$ROUNDS"); do
  for s in portcullis portcullis+policy distribution nginx; do
    read -r q p e <<< "$(rps "${M[$s]}")"
    Q[$s]+="$q "; P[$s]+="$p "; QE[$s]+="$e "; PE[$s]+="$e "
    read -r _ p e <<< "$(rps "${M[$s]}" 8)"
    P8[$s]+="$p "; P8E[$s]+="$e "
    [ "$s" = distribution ] || PO[$s]+="$(open_p99 "${M[$s]}") "
    read -r q _ e <<< "$(rps "${MD[$s]}")"
    D[$s]+="$q "; DE[$s]+="$e "
    # a new client for every request: no cached decision (nginx serves the same file as above)
    if [ "$s" = portcullis+policy ] || [ "$s" = nginx ]; then
      read -r q _ e <<< "$(rps "${MD[$s]}" 64 bench/distinct-clients.lua)"
      U[$s]+="$q "; UE[$s]+="$e "
    fi
  done
done

# 100 concurrent cold GETs of one blob: upstream fetches per server (distinct blobs per server)
# (every client must get the whole blob)
herd_image() { # image-name: pushes a fresh 4 MiB image upstream
  python3 bench/mkimage.py "$work/$1" "$1" 4 > "$work/$1.txt"
  skopeo copy -q --dest-tls-verify=false "oci:$work/$1:$1" "docker://127.0.0.1:$UP/bench/$1:v1" >/dev/null
}
herd() { # server-url-prefix image-name -> upstream GET count
  local d; d=$(sed -n 2p "$work/$2.txt")
  downloads "$1/bench/$2/blobs/$d" 100 "$(stat -c %s "$work/$2/blobs/sha256/${d#sha256:}")"
  grep -c "GET /v2/bench/$2/blobs/$d" "$work/upstream/access.log" || true
}
for img in herdpc herddp herdng; do herd_image "$img"; done
memwatch_start
HERD_PC=$(herd "http://127.0.0.1:$PC/v2/up" herdpc)
read -r HERD_ANON HERD_RSS HERD_FILE HERD_START <<< "$(memwatch_stop)"
HERD_DP=$(herd "http://127.0.0.1:$DP/v2" herddp)
HERD_NG=$(herd "http://127.0.0.1:$NGC/v2" herdng)

# cold pull of a 3-layer image with skopeo: each round pushes a new image (fresh layers, so it is
# cold for every cache) and pulls it straight from the upstream, through Portcullis, through
# distribution's proxy, through nginx caching and through nginx not caching (the cost of a second
# hop alone), in an order that rotates between rounds
pull_time() { # source -> milliseconds
  rm -rf "$work/pulled"
  local start end; start=$(date +%s%N)
  skopeo copy -q --src-tls-verify=false "docker://$1" "oci:$work/pulled:x" >/dev/null || fail "skopeo copy of $1 failed"
  end=$(date +%s%N); echo $(( (end - start) / 1000000 ))
  sleep 0.2   # what each server does after a pull (writeback, prefetches) settles between pulls
}
cold_ways=(upstream portcullis distribution nginx nginx-pass)
declare -A COLD; for way in "${cold_ways[@]}"; do COLD[$way]=""; done
cold_source() { # way image
  case $1 in
    upstream) echo "127.0.0.1:$UP/bench/$2:v1" ;; portcullis) echo "127.0.0.1:$PC/up/bench/$2:v1" ;;
    distribution) echo "127.0.0.1:$DP/bench/$2:v1" ;; nginx) echo "127.0.0.1:$NGC/bench/$2:v1" ;;
    nginx-pass) echo "127.0.0.1:$NGP/bench/$2:v1" ;;
  esac
}
for i in $(seq 1 "$((ROUNDS * 3))"); do   # a pull takes a fraction of a second: more rounds
  rm -rf "$work/cold"; python3 bench/mkimage.py "$work/cold" cold 4 4 4 >/dev/null
  skopeo copy -q --dest-tls-verify=false "oci:$work/cold:cold" "docker://127.0.0.1:$UP/bench/cold$i:v1" >/dev/null
  for k in 0 1 2 3 4; do
    way=${cold_ways[$(( (i + k) % 5 ))]}
    COLD[$way]+="$(pull_time "$(cold_source "$way" "cold$i")") "
  done
done

ratio() { python3 -c "import sys
try: print(round(float(sys.argv[1])/float(sys.argv[2]), 2))
except (ValueError, ZeroDivisionError): print('n/a')" "$1" "$2"; }
# the median of a row's rounds, or its error count when any round had errors
figure() { # "values" "errors"
  python3 -c 'import sys,statistics
v=[float(x) for x in sys.argv[1].split()]; e=sum(int(x) for x in sys.argv[2].split())
print(f"errors: {e}" if e else round(statistics.median(v), 2) if v else "")' "$1" "$2"
}
# the open-loop p99: the median of the rounds, or what was achieved when any round fell short
open_figure() { # "values"
  python3 -c 'import sys,statistics
v=sys.argv[1].split(); bad=[x[1:] for x in v if x.startswith("x")]
print("not sustained: " + ", ".join(b.replace("/", " req/s, ") + " errors" for b in bad) if bad else round(statistics.median(float(x) for x in v), 2) if v else "")' "$1"
}
declare -A QF PF P8F DF UF POF
mib() { echo $(( $1 / 1024 )); }
b1p=$(median ${R[portcullis-1]}); b1d=$(median ${R[distribution-1]}); b1n=$(median ${R[nginx-1]})
b16p=$(median ${R[portcullis-16]}); b16d=$(median ${R[distribution-16]}); b16n=$(median ${R[nginx-16]})
for s in portcullis portcullis+policy distribution nginx; do
  QF[$s]=$(figure "${Q[$s]}" "${QE[$s]}"); PF[$s]=$(figure "${P[$s]}" "${PE[$s]}")
  P8F[$s]=$(figure "${P8[$s]}" "${P8E[$s]}"); DF[$s]=$(figure "${D[$s]}" "${DE[$s]}")
  UF[$s]=$(figure "${U[$s]}" "${UE[$s]}"); POF[$s]=$(open_figure "${PO[$s]}")
done
cu=$(median ${COLD[upstream]}); cp=$(median ${COLD[portcullis]}); cdist=$(median ${COLD[distribution]})
cn=$(median ${COLD[nginx]}); cnp=$(median ${COLD[nginx-pass]})
mode=$([ -n "$quick" ] && echo "quick smoke run (debug build, $BLOB_MIB MiB blob, 1 round) — not a measurement" || echo "release build, $BLOB_MIB MiB blob, median of $ROUNDS rounds")
pp="portcullis+policy"
{
  echo "# Benchmark results"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores; $mode. Reproduce: \`bench/run.sh\`."
  echo
  echo "Access logs are on for all three: Portcullis at its default log level (info, one line per request, to a file), distribution's access log, nginx's \`access_log\` to a file. Every download is checked (\`curl --fail\`, its size; the warm-up's bytes against the digest); a cell reading \"errors\" or \"not sustained\" is a run that had load-generator errors or fell short of its rate, never a figure."
  echo
  echo "| scenario | Portcullis | distribution proxy | nginx | Portcullis / distribution | Portcullis / nginx | goal |"
  echo "|---|---|---|---|---|---|---|"
  echo "| warm blob GET, 1 client (MiB/s) | $b1p | $b1d | $b1n | $(ratio "$b1p" "$b1d") | $(ratio "$b1p" "$b1n") | >= 1.0x nginx |"
  echo "| warm blob GET, 16 clients (MiB/s) | $b16p | $b16d | $b16n | $(ratio "$b16p" "$b16d") | $(ratio "$b16p" "$b16n") | >= 1.0x nginx |"
  echo "| manifest GET by digest, 64 conns, no policy (req/s; no upstream round trip on either proxy; nginx: the manifest as a static file) | ${DF[portcullis]} | ${DF[distribution]} | ${DF[nginx]} | $(ratio "${DF[portcullis]}" "${DF[distribution]}") | $(ratio "${DF[portcullis]}" "${DF[nginx]}") | >= 0.9x nginx |"
  echo "| manifest GET by digest, 64 conns, policy in scope, cached decision (req/s) | ${DF[$pp]} | ${DF[distribution]} | ${DF[nginx]} | $(ratio "${DF[$pp]}" "${DF[distribution]}") | $(ratio "${DF[$pp]}" "${DF[nginx]}") | >= 0.9x nginx |"
  echo "| manifest GET by digest, 64 conns, policy in scope, a new client each request: every decision uncached (req/s; nginx: same file, same load generator script) | ${UF[$pp]} | | ${UF[nginx]} | | $(ratio "${UF[$pp]}" "${UF[nginx]}") | |"
  echo "| manifest GET by tag, 64 conns, policy in scope (req/s; Portcullis answers from its tag cache until \`tag_ttl\`, distribution asks the upstream on every GET by tag) | ${QF[$pp]} | ${QF[distribution]} | ${QF[nginx]} | $(ratio "${QF[$pp]}" "${QF[distribution]}") | $(ratio "${QF[$pp]}" "${QF[nginx]}") | >= 0.9x nginx |"
  echo "| manifest GET by tag, 64 conns, no policy (req/s; as above) | ${QF[portcullis]} | ${QF[distribution]} | ${QF[nginx]} | $(ratio "${QF[portcullis]}" "${QF[distribution]}") | $(ratio "${QF[portcullis]}" "${QF[nginx]}") | |"
  echo "| manifest GET by tag p99 with policy, 64 conns at full speed (ms; nginx: static file) | ${PF[$pp]} | ${PF[distribution]} | ${PF[nginx]} | | | |"
  echo "| manifest GET by tag p99 with policy, 64 conns at a steady $OPEN_RATE req/s (ms; nginx: static file; distribution cannot sustain the rate) | ${POF[$pp]} | | ${POF[nginx]} | | | <= nginx |"
  echo "| manifest GET by tag p99 with policy at 8 connections (ms; nginx: static file) | ${P8F[$pp]} | ${P8F[distribution]} | ${P8F[nginx]} | | | |"
  echo "| 100 concurrent cold GETs of one blob: upstream fetches (nginx: caching proxy with \`proxy_cache_lock\`) | $HERD_PC | $HERD_DP | $HERD_NG | | | exactly 1 |"
  echo "| cold skopeo pull of a fresh 3-layer image (ms, median of $((ROUNDS * 3)); nginx: caching proxy; ratios: the peer's time / Portcullis's) | $cp | $cdist | $cn | $(ratio "$cdist" "$cp") | $(ratio "$cn" "$cp") | >= 0.95x nginx (within 1.05x of its time) |"
  echo "| cold pull time / the same pull straight from the upstream ($cu ms; nginx without a cache, the second hop alone: $(ratio "$cnp" "$cu")x) | $(ratio "$cp" "$cu") | $(ratio "$cdist" "$cu") | $(ratio "$cn" "$cu") | | | |"
  echo "| Portcullis's peak memory, 16 clients x $BLOB_MIB MiB (MiB, sampled every 10 ms): anonymous (at the start) / resident incl. mapped file pages / of which file pages | $(mib "$MEM16_ANON") ($(mib "$MEM16_START")) / $(mib "$MEM16_RSS") / $(mib "$MEM16_FILE") | | | | | anonymous < 64 MiB |"
  echo "| Portcullis's peak memory, herd of 100 cold clients of a 4 MiB blob (MiB): anonymous (at the start) / resident / file pages | $(mib "$HERD_ANON") ($(mib "$HERD_START")) / $(mib "$HERD_RSS") / $(mib "$HERD_FILE") | | | | | anonymous < 64 MiB |"
  if [ -z "$quick" ] && [ "$BLOB_MIB" = 256 ]; then
    echo
    echo "## Policy decisions and verification (\`cargo bench --bench policy\`, \`cargo bench --bench verify\`)"
    echo
    cargo bench --quiet --bench policy 2>/dev/null || fail "cargo bench --bench policy failed"
    echo
    cargo bench --quiet --bench verify 2>/dev/null || fail "cargo bench --bench verify failed"
  fi
} > bench/results.md.new
python3 - "$b1p" "$b1d" "$b1n" "$b16p" "$b16d" "$b16n" "${DF[$pp]}" "${DF[distribution]}" "${DF[nginx]}" "$cp" "$cdist" "$cn" > bench/results.svg.new <<'PY'
import sys
def number(x):
    try:
        return float(x)
    except ValueError:
        return 0
v = [number(x) for x in sys.argv[1:]]
pulls = [round(1000 / t, 2) if t else 0 for t in v[9:12]]
groups = [("blob MiB/s, 1 client", v[0:3]), ("blob MiB/s, 16 clients", v[3:6]), ("manifest req/s by digest (policy)", v[6:9]),
          ("cold pulls/s", pulls)]
names, colours = ["Portcullis", "distribution", "nginx"], ["#2b6cb0", "#c05621", "#718096"]
w, h = 950, 300
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
       '<text x="10" y="18" font-size="14">Relative to the best server in each scenario (higher is better)</text>']
for gi, (label, vals) in enumerate(groups):
    top = max(vals) or 1
    x0 = 20 + gi * 230
    out.append(f'<text x="{x0}" y="{h-10}">{label}</text>')
    for i, val in enumerate(vals):
        bh = 220 * val / top
        x = x0 + i * 60
        out.append(f'<rect x="{x}" y="{h-30-bh:.0f}" width="50" height="{bh:.0f}" fill="{colours[i]}"/>')
        out.append(f'<text x="{x}" y="{h-34-bh:.0f}">{val:g}</text>')
for i, n in enumerate(names):
    out.append(f'<rect x="{700+i*80}" y="8" width="10" height="10" fill="{colours[i]}"/><text x="{714+i*80}" y="17">{n}</text>')
out.append("</svg>")
print("\n".join(out))
PY
if [ -n "$quick" ]; then
  cat bench/results.md.new; rm -f bench/results.md.new bench/results.svg.new
  [ "$HERD_PC" = 1 ] || { echo "bench: expected exactly one upstream fetch, saw $HERD_PC" >&2; exit 1; }
  echo "bench: quick run passed"
elif [ "$BLOB_MIB" = 256 ]; then
  mv bench/results.md.new bench/results.md; mv bench/results.svg.new bench/results.svg
  cat bench/results.md
else
  mv bench/results.md.new "bench/results-${BLOB_MIB}mib.md"; rm -f bench/results.svg.new
  cat "bench/results-${BLOB_MIB}mib.md"
fi

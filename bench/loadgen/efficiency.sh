#!/usr/bin/env bash
# The generator's own efficiency ("a bench of the bench"): edgeplane-load (every body validated)
# against wrk (no validation) on the same nginx, the same files and the same range sizes, each
# with one thread pinned to the client CPU and the same connection count, alternating rounds.
# Reports validated requests per client CPU-second and Gbps per client core; the client's CPU
# time is its whole process's user + system time (/usr/bin/time), the same for both.
#
#   bash bench/loadgen/efficiency.sh [ROUNDS] [SECONDS]
#
# Needs: nginx, wrk, jq, /usr/bin/time, taskset; the bench catalog (target/bench/catalog, written
# by `cargo xtask bench` or `edgeplane-load catalog target/bench/catalog`); a built
# edgeplane-load (target/debug or target/release; dev builds of it are optimized). Loopback only.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
CONNS=64
SERVER_CPU=0
CLIENT_CPU=1
root=$(cd "$(dirname "$0")/../.." && pwd)
catalog=$root/target/bench/catalog
load=${EDGEPLANE_LOAD:-$root/target/debug/edgeplane-load}
[ -x "$load" ] || { echo "no $load: cargo build -p edgeplane-load" >&2; exit 1; }
ls "$catalog"/bench-0*.bin >/dev/null || { echo "no catalog in $catalog" >&2; exit 1; }
size=$(stat -c %s "$catalog/bench-00.bin")
dir=$(mktemp -d /tmp/edgeplane-load-efficiency.XXXXXX)
port=$((20000 + RANDOM % 20000))
mkdir -p "$dir/tmp"
cat > "$dir/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;
    open_file_cache max=1000 inactive=60s; keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/b; proxy_temp_path $dir/tmp/p; fastcgi_temp_path $dir/tmp/f;
    uwsgi_temp_path $dir/tmp/u; scgi_temp_path $dir/tmp/s;
    server { listen 127.0.0.1:$port; root $catalog; location / { } }
}
EOF
taskset -c $SERVER_CPU nginx -c "$dir/nginx.conf" &
nginx_pid=$!
trap 'kill -QUIT $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/bench-00.bin" -r 0-0 && break; sleep 0.1; done
cat "$catalog"/bench-0*.bin > /dev/null

# wrk: 16384 prepared random aligned ranges of LEN bytes over the 4 files (built in init, so
# the per-request cost is wrk's, not Lua's).
wrk_script() {
    cat > "$dir/ranges.lua" <<EOF
local reqs = {}
local n = 0
function init(args)
  math.randomseed(1)
  local slots = math.floor($size / $1)
  for i = 1, 16384 do
    local f = string.format("/bench-%02d.bin", math.random(0, 3))
    local off = math.random(0, slots - 1) * $1
    reqs[i] = wrk.format("GET", f, {["Range"] = "bytes=" .. off .. "-" .. (off + $1 - 1)})
  end
end
function request()
  n = n % 16384 + 1
  return reqs[n]
end
EOF
}

# One measurement: prints "requests bytes cpu_s wall_s".
run_wrk() {
    wrk_script "$1"
    /usr/bin/time -f "%U %S %e" -o "$dir/time" taskset -c $CLIENT_CPU \
        wrk -t1 -c$CONNS -d${SECS}s -s "$dir/ranges.lua" "http://127.0.0.1:$port" > "$dir/wrk.out"
    local req bytes
    req=$(awk '/requests in/ {print $1}' "$dir/wrk.out")
    # wrk prints "N requests in T s, X.YZGB read" (3 significant digits).
    bytes=$(awk '/requests in/ { s = $5; v = s + 0; m = 1;
        if (s ~ /GB/) m = 2^30; else if (s ~ /MB/) m = 2^20; else if (s ~ /KB/) m = 2^10;
        printf "%.0f", v * m }' "$dir/wrk.out")
    if grep -q "Non-2xx\|Socket errors" "$dir/wrk.out"; then echo "wrk errors:" >&2; cat "$dir/wrk.out" >&2; fi
    read -r u s e < "$dir/time"
    echo "$req $bytes $(echo "$u + $s" | bc -l) $e"
}

run_load() { # LEN VALIDATE
    /usr/bin/time -f "%U %S %e" -o "$dir/time" "$load" run "http://127.0.0.1:$port" \
        --catalog "$catalog" --threads 1 --cpus $CLIENT_CPU --connections $CONNS \
        --duration "$SECS" --range "$1" --validate "$2" --json "$dir/load.json" 2> "$dir/load.err"
    read -r u s e < "$dir/time"
    echo "$(jq -r '"\(.requests) \(.bytes)"' "$dir/load.json") $(echo "$u + $s" | bc -l) \
$(jq -r .duration_s "$dir/load.json")"
}

printf "| range | generator | round | req/s | Gbps | client CPU-s | req per client CPU-s | Gbps per client core |\n"
printf "|---|---|---:|---:|---:|---:|---:|---:|\n"
for len in ${LENS:-65536 1048576}; do
    for round in $(seq "$ROUNDS"); do
        for gen in wrk load-full load-length; do
            case $gen in
                wrk) out=$(run_wrk $len) ;;
                load-full) out=$(run_load $len full) ;;
                load-length) out=$(run_load $len length) ;;
            esac
            read -r req bytes cpu wall <<< "$out"
            awk -v len=$len -v gen=$gen -v r=$round -v req=$req -v b=$bytes -v c=$cpu -v w=$SECS \
                'BEGIN { printf "| %d KiB | %s | %d | %.0f | %.2f | %.2f | %.0f | %.2f |\n",
                  len/1024, gen, r, req/w, b*8/w/1e9, c, req/c, (b*8/w/1e9)/(c/w) }'
        done
    done
done

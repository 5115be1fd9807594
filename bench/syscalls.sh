#!/usr/bin/env bash
# io_uring_enter (and other syscalls) per request: edgeplane serving 64 KiB ranges to
# edgeplane-load, with the kernel's syscall tracepoints counted by `perf stat` (no ptrace, so
# the server runs at its own pace) over a fixed measuring window; requests counted from the
# server's own /metrics before and after.
#
#   bash bench/syscalls.sh BIN [READINESS] [SECONDS] [RANGE]
#
# BIN: the edgeplane binary; READINESS: io.readiness (auto, multishot, read-first, legacy; `-`
# leaves the key out, for binaries older than it);
# the server runs `cores = 1` pinned to CPU 0, the generator (64 connections) on CPU 1.
# Needs perf with tracepoint access (root or kernel.perf_event_paranoid <= 1... or -1 for
# tracepoints as non-root).
set -euo pipefail
bin=${1:?usage: syscalls.sh BIN [READINESS] [SECONDS] [RANGE]}
readiness=${2:-auto}
secs=${3:-5}
range=${4:-65536}
here=$(cd "$(dirname "$0")/.." && pwd)
load=${EDGEPLANE_LOAD:-$here/target/debug/edgeplane-load}
dir=$(mktemp -d /tmp/edgeplane-syscalls.XXXXXX)
trap 'kill $srv 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
"$load" catalog "$dir/catalog" --count 4 --size $((64 << 20)) >/dev/null
cat >"$dir/edgeplane.toml" <<TOML
cores = 1
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[signing]
enabled = false
$([ "$readiness" = - ] || printf '[io]\nreadiness = "%s"\n' "$readiness")
[[tier]]
name = "flash"
kind = "flash"
path = "$dir/catalog"
TOML
cat "$dir"/catalog/* >/dev/null   # page cache warm
NO_COLOR=1 taskset -c 0 "$bin" serve --config "$dir/edgeplane.toml" 2>"$dir/log" &
srv=$!
for _ in $(seq 100); do grep -q "ready http=" "$dir/log" && break; sleep 0.1; done
grep -q "ready http=" "$dir/log" || { cat "$dir/log"; exit 1; }
http=$(sed -n 's/.*ready http=\([^ ]*\) admin=\([^ ]*\).*/\1/p' "$dir/log")
admin=$(sed -n 's/.*ready http=\([^ ]*\) admin=\([^ ]*\).*/\2/p' "$dir/log")
grep "socket readiness" "$dir/log" | sed 's/^/server: /' || true
reqs() { curl -s "http://$admin/metrics" | awk '/^edgeplane_requests_total/ {s += $NF} END {printf "%d\n", s}'; }
# Warm-up, then the measured window: the generator runs longer than perf, on both sides.
"$load" run "http://$http" --catalog "$dir/catalog" --cpus 1 --server-cpus 0 --connections 64 \
  --range "$range" --duration $((secs + 3)) >"$dir/load.txt" 2>&1 &
gen=$!
sleep 1.5
cpu() { awk '{print $14 + $15}' "/proc/$srv/stat"; }
before=$(reqs)
cpu0=$(cpu)
perf stat -x, -o "$dir/perf.txt" -p "$srv" \
  -e syscalls:sys_enter_io_uring_enter,io_uring:io_uring_submit_req,io_uring:io_uring_complete,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_sendfile64,raw_syscalls:sys_enter \
  -- sleep "$secs"
after=$(reqs)
cpu1=$(cpu)
wait $gen || true
n=$((after - before))
ticks=$(getconf CLK_TCK)
echo "readiness=$readiness range=$range requests=$n in ${secs}s ($((n / secs)) req/s) load: $(cut -d' ' -f1-3 /proc/loadavg)"
awk -v n="$n" -v t="$((cpu1 - cpu0))" -v hz="$ticks" 'BEGIN { printf "  server CPU %.2f s: %.0f requests per CPU-second, %.1f us per request\n", t / hz, n / (t / hz), 1e6 * (t / hz) / n }'
awk -F, -v n="$n" '$1 ~ /^[0-9]+$/ { printf "  %-40s %10d  %.2f per request\n", $3, $1, $1 / n }' "$dir/perf.txt"

#!/usr/bin/env bash
# Change-tracking benchmark (`protect --capture trace` against `--capture scan`, same run):
#
#   RPO under churn: a sparse 8 GiB loop device, fio random 64 KiB writes at 20 MB/s for
#       RPO_SECS (300), crash-consistent points every 5 s; the age of the newest committed
#       point sampled every second: p50, p99, max (target: p99 <= 10 s)
#   cost against size: the same churn for CHURN_SECS (60) on 2, 8 and 32 GiB (SIZES), trace
#       and scan: median cycle time (capture to last block sent) and bytes read per cycle
#       against bytes written per cycle (targets: trace at 32 GiB within 1.2x of 2 GiB; read
#       within 2x of written)
#   overhead on the protected machine: fio 4 KiB random writes (direct, iodepth 16, over
#       256 MiB of a 1 GiB loop device A) IOPS and p99 latency, untracked and traced
#       (protected with `--capture trace`, no cycle running). This VM's IOPS drift by a third
#       within minutes, so every run on A (OV_SECS = 3 s) sits between two runs on a twin
#       device B that is never traced, and is taken as a ratio to their mean: OV_ROUNDS (25)
#       runs before A is protected, 25 while it is traced, 25 after; the loss is the median
#       traced ratio against the median untracked one (target: <= 5% IOPS loss)
#
# Usage: bench/tracking.sh   (root: loop devices, tracefs; needs fio and python3). LB=PATH uses
# that binary instead of a release build. Exits non-zero only if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
RPO_SECS=${RPO_SECS:-300}
CHURN_SECS=${CHURN_SECS:-60}
SIZES=${SIZES-"2 8 32"}
OV_ROUNDS=${OV_ROUNDS:-25}
OV_SECS=${OV_SECS:-3}
command -v fio >/dev/null || { echo "bench: fio is missing (apt-get install fio)" >&2; exit 1; }
[ -n "${LB:-}" ] || cargo build --release -q -p lifeboat-cli
PY=$(python3 -c 'import sys; print(sys.executable)')
. bench/lib.sh
L=${LB:-$PWD/target/release/lifeboat}
W=$(mktemp -d /var/tmp/lifeboat-tbench-XXXXXX)
pids=()
loops=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for d in "${loops[@]}"; do losetup -d "$d" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
json() { "$PY" -c "import json,sys; v=json.load(sys.stdin); print($1)"; }

BENCH_LOG=info,lifeboat_node::replication::mobility=debug start_mesh ps mob
grant process-server ps
grant mobility mob
"$L" vault create bench --state-dir "$W/cfg" >/dev/null
"$L" policy create churn --rpo-threshold 1h --retention 1h --crash-consistent-every 5s --app-consistent-every 0 --state-dir "$W/cfg" >/dev/null
"$L" policy create idle --rpo-threshold 24h --retention 24h --crash-consistent-every 1h --app-consistent-every 0 --state-dir "$W/cfg" >/dev/null

# device GIB: a sparse file of that size on a loop device, in $D.
device() {
  local f="$W/disk-$1g-$RANDOM.img"
  truncate -s "${1}G" "$f"
  D=$(losetup --find --show "$f")
  loops+=("$D")
}

# protect DEV MODE POLICY: protects it and waits for the first point.
protect() {
  local before; before=$(npoints mob)
  "$L" protect mob --disk "$1" --capture "$2" --policy "$3" --state-dir "$W/cfg" >/dev/null
  wait_points mob $((before + 1))
}
unprotect() {
  "$L" unprotect mob --state-dir "$W/cfg" >/dev/null
  # The daemon stops tracing once the protection is gone.
  for _ in $(seq 100); do ls /sys/kernel/tracing/instances/ 2>/dev/null | grep -q lifeboat- || return 0; sleep 0.1; done
}

# churn DEV SECS: fio random 64 KiB writes at 20 MB/s (run it in the background to sample).
churn() {
  fio --name=churn --filename="$1" --direct=1 --rw=randwrite --bs=64k --rate=20m \
    --ioengine=psync --time_based --runtime="$2" --output=/dev/null >/dev/null 2>&1
}

# cycles FROM_LINE: from the mobility log after that line, each cycle's "elapsed_ms" (capture to
# last block sent) and the bytes it read ("disk scanned ... read=").
cycles() {
  tail -n +"$1" "$W/mob.log" | "$PY" -c '
import re, sys, statistics
ms, rd = [], []
for l in sys.stdin:
    m = re.search(r"delta sent .*elapsed_ms=(\d+)", l)
    if m: ms.append(int(m.group(1)))
    m = re.search(r"disk scanned .*read=(\d+)", l)
    if m: rd.append(int(m.group(1)))
print(statistics.median(ms) if ms else 0, statistics.median(rd) if rd else 0, len(ms))'
}

P50=- P99=- PMAX=- NS=0
if [ "$RPO_SECS" -gt 0 ]; then
echo "bench: RPO under churn (8 GiB, 20 MB/s, points every 5 s, ${RPO_SECS} s)"
device 8
protect "$D" trace churn
churn "$D" "$RPO_SECS" & F=$!
ages=()
end=$((SECONDS + RPO_SECS))
while [ $SECONDS -lt $end ]; do
  ages+=("$("$L" points mob --json --state-dir "$W/cfg" | json "round(__import__('time').time() - max(p['captured_ms'] for p in v) / 1000, 2)")")
  sleep 1
done
wait "$F" || true
unprotect
RPO=$(printf '%s\n' "${ages[@]}" | "$PY" -c '
import sys
v = sorted(float(x) for x in sys.stdin if x.strip())
q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
print(f"{q(0.5):.1f} {q(0.99):.1f} {v[-1]:.1f} {len(v)}")')
read -r P50 P99 PMAX NS <<<"$RPO"
fi

declare -A CT RD NC
for g in $SIZES; do
  for mode in trace scan; do
    echo "bench: ${g} GiB, ${mode}, ${CHURN_SECS} s of churn"
    device "$g"
    protect "$D" "$mode" churn
    from=$(($(wc -l < "$W/mob.log") + 1))
    churn "$D" "$CHURN_SECS"
    read -r c r n <<<"$(cycles "$from")"
    CT[$g-$mode]=$c; RD[$g-$mode]=$r; NC[$g-$mode]=$n
    unprotect
  done
done

echo "bench: overhead on the protected machine (fio 4 KiB random writes, direct, ${OV_SECS} s runs, ${OV_ROUNDS} pairs untracked, traced, untracked again)"
overhead() { # DEV: prints "iops p99_us" (after a sync: the vault's writes from the protect
  # must not be written back during the run)
  sync
  fio --name=o --filename="$1" --direct=1 --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 \
    --time_based --runtime="${2:-$OV_SECS}" --size=256m --output-format=json 2>/dev/null \
    | json "f\"{v['jobs'][0]['write']['iops']:.0f} {v['jobs'][0]['write']['clat_ns']['percentile']['99.000000'] / 1000:.0f}\""
}
# A, the device measured, and B, its twin that is never traced: each run on A is compared with
# the runs on B either side of it, which cancels the VM's drift.
device 1; A=$D; device 1; B=$D
# Allocated and warmed first: a sparse file's first writes allocate.
for d in "$A" "$B"; do
  fio --name=fill --filename="$d" --direct=1 --rw=write --bs=1m --size=256m --output=/dev/null >/dev/null 2>&1
done
overhead "$A" 5 >/dev/null
# phase NAME: OV_ROUNDS runs on A, each between two on B; appends "NAME a_iops a_p99 ratio".
rows=()
# The mobility daemon's CPU time, in clock ticks.
mob_ticks() { awk '{print $14 + $15}' "/proc/${pids[2]}/stat"; }
declare -A CPU
phase() {
  local b0 a b1 c0=$(mob_ticks) t0=$SECONDS
  b0=$(overhead "$B")
  for _ in $(seq "$OV_ROUNDS"); do
    a=$(overhead "$A"); b1=$(overhead "$B")
    rows+=("$1 $a $("$PY" -c "print(${a%% *} / ((${b0%% *} + ${b1%% *}) / 2))")")
    b0=$b1
  done
  CPU[$1]="${CPU[$1]:-} $(( ($(mob_ticks) - c0) * 100 / $(getconf CLK_TCK) / (SECONDS - t0 > 0 ? SECONDS - t0 : 1) ))%"
}
phase untracked
protect "$A" trace idle
phase traced
unprotect
phase untracked
read -r I0 L0 Q0 I1 L1 Q1 LOSS <<<"$(printf '%s\n' "${rows[@]}" | "$PY" -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin if l.strip()]
def of(name):
    r = [x for x in rows if x[0] == name]
    q = st.quantiles([float(x[3]) for x in r], n=4)
    return (st.median(float(x[1]) for x in r), st.median(float(x[2]) for x in r),
            st.median(float(x[3]) for x in r), q)
u, t = of("untracked"), of("traced")
print(f"{u[0]:.0f} {u[1]:.0f} {u[2]:.3f}[{u[3][0]:.3f}..{u[3][2]:.3f}] {t[0]:.0f} {t[1]:.0f} {t[2]:.3f}[{t[3][0]:.3f}..{t[3][2]:.3f}] {100 * (1 - t[2] / u[2]):.1f}")')"

echo
echo "tracking bench: $(nproc) cores, $(uname -r)"
printf "  RPO under churn (trace, 8 GiB, 20 MB/s, every 5 s): p50 %ss  p99 %ss (target <= 10)  max %ss  (%s samples)\n" "$P50" "$P99" "$PMAX" "$NS"
for g in $SIZES; do
  for mode in trace scan; do
    # fio wrote 20 MB/s for the whole churn, spread over the cycles that ran.
    wr=$("$PY" -c "print(20e6 * $CHURN_SECS / max(1, ${NC[$g-$mode]}))")
    printf "  %3s GiB %-5s cycle %6s ms   read/cycle %8.1f MiB   written/cycle %6.1f MiB   read/written %6.2fx   (%s cycles)\n" \
      "$g" "$mode" "${CT[$g-$mode]}" "$("$PY" -c "print(${RD[$g-$mode]}/1048576)")" "$("$PY" -c "print($wr/1048576)")" \
      "$("$PY" -c "print(${RD[$g-$mode]}/$wr)")" "${NC[$g-$mode]}"
  done
done
first=${SIZES%% *}; last=${SIZES##* }
[ -n "$SIZES" ] && printf "  trace cycle %s GiB / %s GiB: %.2fx (target <= 1.2)   scan: %.2fx\n" "$last" "$first" \
  "$("$PY" -c "print(${CT[$last-trace]}/max(1,${CT[$first-trace]}))")" "$("$PY" -c "print(${CT[$last-scan]}/max(1,${CT[$first-scan]}))")"
printf "  overhead: A untracked %s IOPS (p99 %s us), A/B %s   A traced %s IOPS (p99 %s us), A/B %s   (medians [quartiles] of %s runs each)\n" \
  "$I0" "$L0" "$Q0" "$I1" "$L1" "$Q1" "$OV_ROUNDS"
printf "  IOPS loss (A/B traced against A/B untracked): %s%% (target <= 5)   mobility daemon's CPU (of one core) untracked:%s  traced:%s\n" "$LOSS" "${CPU[untracked]}" "${CPU[traced]}"

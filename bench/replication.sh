#!/usr/bin/env bash
# Replication benchmark: Lifeboat against peers measured in the same run, on this machine.
#
#   seeding a 2 GiB image (40% random, 40% zero, 20% compressible 64 KiB blocks) into a local
#   vault through a process server on loopback   vs  restic backup (new repo)  and  zstd -1
#   delta after 1% of the blocks change          vs  restic incremental backup and
#                                                    rsync -I --inplace --no-whole-file
#   restore of the 2 GiB image                   vs  cp
#   process-server peak RSS (VmHWM)
#
# Usage: [ROUNDS=N] bench/replication.sh [SIZE_MIB]   (default 2048; needs restic, rsync, zstd,
# python3). Prints figures and ratios; with ROUNDS=N it runs N rounds and ends with the median,
# lowest and highest of each ratio (a shared VM's throughput varies by +-20% between runs).
# Exits non-zero only if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-2048}
if [ "${ROUNDS:-1}" -gt 1 ]; then
  all=$(mktemp)
  for _ in $(seq "$ROUNDS"); do ROUNDS=1 "$0" "$MIB" | tee -a "$all"; done
  python3 - "$all" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
rows = [("seed lifeboat MiB/s", r"seed\s+lifeboat\s+([\d.]+) MiB/s"),
        ("seed restic MiB/s", r"seed\s.*restic\s+([\d.]+) MiB/s"),
        ("seed lifeboat/restic (target >= 2)", r"lifeboat/restic\s+([\d.]+)x"),
        ("delta restic/lifeboat (target >= 1.5)", r"restic/lifeboat\s+([\d.]+)x"),
        ("restore lifeboat/cp (target >= 0.7)", r"lifeboat/cp\s+([\d.]+)x"),
        ("process-server peak RSS MiB", r"peak RSS ([\d.]+)")]
print(f"\nsummary of {text.count('replication bench:')} rounds: median (lowest .. highest)")
for name, rx in rows:
    v = [float(x) for x in re.findall(rx, text)]
    if v:
        print(f"  {name:40s} {statistics.median(v):8.2f} ({min(v):.2f} .. {max(v):.2f})")
PY
  rm -f "$all"
  exit 0
fi
for t in restic rsync zstd python3; do
  command -v "$t" >/dev/null || { echo "bench: $t is missing (apt-get install restic rsync zstd)" >&2; exit 1; }
done
[ -n "${LB:-}" ] || cargo build --release -q -p lifeboat-cli
# The interpreter itself, not a shim (pyenv's shims spawn several shells per call, which would
# steal CPU from the daemons while they are being measured).
PY=$(python3 -c 'import sys; print(sys.executable)')
. bench/lib.sh
L=${LB:-$PWD/target/release/lifeboat}
W=$(mktemp -d /var/tmp/lifeboat-bench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap - EXIT
now() { date +%s.%N; }
secs() { "$PY" -c "print(f'{$2-$1:.3f}')"; }
rate() { "$PY" -c "print(f'{$1/($2):.1f}')"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

echo "bench: generating a ${MIB} MiB image in $W"
gen_image "$W/disk.img" "$MIB"

# The peers start from the same pre-change image.
cp --sparse=never "$W/disk.img" "$W/before.img"

BENCH_LOG=info,lifeboat_node::replication=debug start_mesh ps mob
PS_PID=${pids[1]}
grant process-server ps
grant mobility mob
"$L" vault create bench --state-dir "$W/cfg" >/dev/null
"$L" policy create bench --rpo-threshold 1h --retention 24h --crash-consistent-every 20s --app-consistent-every 0 --state-dir "$W/cfg" >/dev/null
for _ in $(seq 100); do "$L" peers --json --state-dir "$W/cfg" | grep -q process-server && "$L" peers --json --state-dir "$W/cfg" | grep -q mobility && break; sleep 0.1; done

point_n() { # wait for point number N (1-based); print "captured committed changed"
  # The figures come from the vault's capture and commit times, not from this loop. Until the
  # vault directory holds N point objects the loop only globs it (no process is started, so the
  # wait takes no CPU from the daemons being measured); then the configuration node is asked.
  shopt -s nullglob
  for _ in $(seq 2400); do
    local objs=("$W"/cfg/vault/points/*/*)
    if [ "${#objs[@]}" -ge "$1" ]; then
      out=$("$L" points mob --json --state-dir "$W/cfg" | "$PY" -c "
import json,sys
p=json.load(sys.stdin)
if len(p) >= $1: print(p[$1-1]['captured_ms'], p[$1-1]['committed_ms'], p[$1-1]['stats']['changed_blocks'])" 2>/dev/null || true)
      [ -n "$out" ] && { echo "$out"; return; }
    fi
    sleep 0.25
  done
  echo "bench: point $1 never came" >&2; exit 1
}
drop
"$L" protect mob --disk "$W/disk.img" --policy bench --state-dir "$W/cfg" >/dev/null
read -r c1 m1 n1 < <(point_n 1)
LB_SEED=$("$PY" -c "print(($m1-$c1)/1000)")
PS_RSS=$(awk '/VmHWM/ {print $2}' /proc/$PS_PID/status)

# Change 1% of the blocks, in place.
change_1pct "$W/disk.img" "$MIB"
cp --sparse=never "$W/disk.img" "$W/after.img"
read -r c2 m2 n2 < <(point_n 2)
# A cycle that started before the change may be point 2; the delta is the first with changes.
if [ "$n2" -eq 0 ]; then read -r c2 m2 n2 < <(point_n 3); fi
LB_DELTA=$("$PY" -c "print(($m2-$c2)/1000)")

drop
t0=$(now); "$L" restore mob --point latest --to "$W/restored" --state-dir "$W/cfg" >/dev/null; t1=$(now)
LB_RESTORE=$(secs "$t0" "$t1")
cmp -s "$W/restored/disk.img" "$W/after.img" || { echo "bench: restored image differs!" >&2; exit 1; }

# Peers, on the same data.
kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=()
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$W/restic"
restic init -q >/dev/null
cp --sparse=never "$W/before.img" "$W/img"
drop; t0=$(now); restic backup -q "$W/img" >/dev/null; t1=$(now); R_SEED=$(secs "$t0" "$t1")
drop; t0=$(now); zstd -1 -q -f "$W/img" -o "$W/img.zst"; t1=$(now); Z_SEED=$(secs "$t0" "$t1")
cp --sparse=never "$W/img" "$W/rsync-dst.img"
change_1pct "$W/img" "$MIB"
drop; t0=$(now); restic backup -q "$W/img" >/dev/null; t1=$(now); R_DELTA=$(secs "$t0" "$t1")
drop; t0=$(now); rsync -I --inplace --no-whole-file "$W/img" "$W/rsync-dst.img"; t1=$(now); RS_DELTA=$(secs "$t0" "$t1")
drop; t0=$(now); cp --sparse=never "$W/after.img" "$W/cp.img"; sync; t1=$(now); CP=$(secs "$t0" "$t1")

echo
echo "replication bench: ${MIB} MiB image (40% random, 40% zero, 20% compressible), $(nproc) cores"
printf "  seed      lifeboat %8.1f MiB/s (%6.2fs)   restic %8.1f MiB/s (%6.2fs)   zstd -1 %8.1f MiB/s   lifeboat/restic %5.2fx (target >= 2)\n" \
  "$(rate "$MIB" "$LB_SEED")" "$LB_SEED" "$(rate "$MIB" "$R_SEED")" "$R_SEED" "$(rate "$MIB" "$Z_SEED")" "$("$PY" -c "print($R_SEED/$LB_SEED)")"
printf "  delta 1%%  lifeboat %7.2fs (%s blocks)   restic %7.2fs   rsync %7.2fs   restic/lifeboat %5.2fx (target >= 1.5)   rsync/lifeboat %5.2fx\n" \
  "$LB_DELTA" "$n2" "$R_DELTA" "$RS_DELTA" "$("$PY" -c "print($R_DELTA/$LB_DELTA)")" "$("$PY" -c "print($RS_DELTA/$LB_DELTA)")"
printf "  restore   lifeboat %8.1f MiB/s (%6.2fs)   cp %8.1f MiB/s (%6.2fs)   lifeboat/cp %5.2fx (target >= 0.7), bit-exact\n" \
  "$(rate "$MIB" "$LB_RESTORE")" "$LB_RESTORE" "$(rate "$MIB" "$CP")" "$CP" "$("$PY" -c "print($CP/$LB_RESTORE)")"
printf "  process-server peak RSS %.1f MiB\n" "$("$PY" -c "print($PS_RSS/1024)")"

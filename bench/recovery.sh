#!/usr/bin/env bash
# Recovery benchmark: Lifeboat against peers measured in the same run, on this machine.
#
#   RTO: from `lifeboat failover` to the boot hook starting, for the image (the target node
#        restores every block from the vault, verifies it, keeps the block maps)
#                                                    vs  cp of the image  and  restic restore
#   failback after 1% of the blocks changed at the recovery site: time and bytes written
#                                                    vs  rsync --inplace --no-whole-file
#
# Usage: [ROUNDS=N] bench/recovery.sh [SIZE_MIB]   (default 2048; needs restic, rsync, python3).
# Prints figures and ratios; with ROUNDS=N, N rounds and the median, lowest and highest of each.
# Exits non-zero only if a step fails (or an image is not bit-exact).
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-2048}
if [ "${ROUNDS:-1}" -gt 1 ]; then
  all=$(mktemp)
  for _ in $(seq "$ROUNDS"); do ROUNDS=1 "$0" "$MIB" | tee -a "$all"; done
  python3 - "$all" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
rows = [("RTO lifeboat s", r"RTO\s+lifeboat\s+([\d.]+)s"),
        ("RTO cp s", r"\bcp\s+([\d.]+)s"),
        ("RTO restic restore s", r"restic restore\s+([\d.]+)s"),
        ("RTO lifeboat/cp (target <= 1.5)", r"lifeboat/cp\s+([\d.]+)x"),
        ("failback lifeboat s", r"failback\s+lifeboat\s+([\d.]+)s"),
        ("failback rsync s", r"rsync\s+([\d.]+)s"),
        ("failback rsync/lifeboat (target > 1)", r"rsync/lifeboat\s+([\d.]+)x"),
        ("failback MiB written", r"wrote\s+([\d.]+) MiB")]
print(f"\nsummary of {text.count('recovery bench:')} rounds: median (lowest .. highest)")
for name, rx in rows:
    v = [float(x) for x in re.findall(rx, text)]
    if v:
        print(f"  {name:40s} {statistics.median(v):8.2f} ({min(v):.2f} .. {max(v):.2f})")
PY
  rm -f "$all"
  exit 0
fi
for t in restic rsync python3; do
  command -v "$t" >/dev/null || { echo "bench: $t is missing (apt-get install restic rsync)" >&2; exit 1; }
done
[ -n "${LB:-}" ] || cargo build --release -q -p lifeboat-cli
PY=$(python3 -c 'import sys; print(sys.executable)')
. bench/lib.sh
L=${LB:-$PWD/target/release/lifeboat}
W=$(mktemp -d /var/tmp/lifeboat-rbench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap - EXIT
now() { date +%s.%N; }
secs() { "$PY" -c "print(f'{$2-$1:.3f}')"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
json() { "$PY" -c "import json,sys; v=json.load(sys.stdin); print($1)"; }

echo "bench: generating a ${MIB} MiB image in $W"
gen_image "$W/disk.img" "$MIB"
cp --sparse=never "$W/disk.img" "$W/source.img"

start_mesh ps mob dr
grant process-server ps
grant mobility mob
grant mobility dr
"$L" vault create bench --state-dir "$W/cfg" >/dev/null
"$L" policy create bench --rpo-threshold 1h --retention 24h --crash-consistent-every 5s --app-consistent-every 0 --state-dir "$W/cfg" >/dev/null
for _ in $(seq 100); do [ "$("$L" peers --json --state-dir "$W/cfg" | grep -c '"connected": true')" -ge 3 ] && break; sleep 0.1; done
"$L" protect mob --disk "$W/disk.img" --policy bench --state-dir "$W/cfg" >/dev/null
wait_points mob 1

# RTO: failover to dr; the boot hook writes the time it starts.
drop
t0=$(now)
"$L" failover mob --on dr --point latest-processed --to "$W/fo" --boot-hook "date +%s.%N > $W/booted" --json --state-dir "$W/cfg" > "$W/fo.json"
t1=$(cat "$W/booted")
LB_RTO=$(secs "$t0" "$t1")
cmp -s "$W/fo/disk.img" "$W/source.img" || { echo "bench: the failed-over image differs!" >&2; exit 1; }

# Peers: cp of the image, restic restore of the same data.
drop; t0=$(now); cp --sparse=never "$W/source.img" "$W/cp.img"; sync; t1=$(now); CP=$(secs "$t0" "$t1")
rm -f "$W/cp.img"
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$W/restic"
restic init -q >/dev/null
(cd "$W" && restic backup -q source.img >/dev/null)
drop; t0=$(now); restic restore -q latest --target "$W/rr" >/dev/null; sync; t1=$(now); RR=$(secs "$t0" "$t1")
cmp -s "$W/rr/source.img" "$W/source.img" || { echo "bench: restic restored something else!" >&2; exit 1; }
rm -rf "$W/rr"

# Failback: commit, reprotect, change 1% of the blocks at the recovery site, wait for that
# point, fail back. The original disk still holds the source (as after an unplanned loss).
"$L" failover commit mob --state-dir "$W/cfg" >/dev/null
"$L" reprotect mob --state-dir "$W/cfg" >/dev/null
wait_points dr 2
change_1pct "$W/fo/disk.img" "$MIB"
before=$(npoints dr)
wait_points dr $((before + 1))
cp --sparse=never "$W/fo/disk.img" "$W/recovery.img"
cp --sparse=never "$W/source.img" "$W/rsync-dst.img"
drop
"$L" failback mob --json --state-dir "$W/cfg" > "$W/fb.json"
LB_FB=$(json "round(v['seconds'], 3)" < "$W/fb.json")
WROTE=$(json "round(v['disks'][0]['written_bytes'] / 1048576, 1)" < "$W/fb.json")
FETCHED=$(json "round(v['disks'][0]['fetched_bytes'] / 1048576, 1)" < "$W/fb.json")
cmp -s "$W/disk.img" "$W/recovery.img" || { echo "bench: the failed-back disk differs from the recovery copy!" >&2; exit 1; }
drop; t0=$(now); rsync -I --inplace --no-whole-file "$W/recovery.img" "$W/rsync-dst.img"; sync; t1=$(now); RS=$(secs "$t0" "$t1")

echo
echo "recovery bench: ${MIB} MiB image (40% random, 40% zero, 20% compressible), $(nproc) cores"
printf "  RTO       lifeboat %7.2fs (failover to boot hook, verified)   cp %7.2fs   restic restore %7.2fs   lifeboat/cp %5.2fx (target <= 1.5)   restic/lifeboat %5.2fx\n" \
  "$LB_RTO" "$CP" "$RR" "$("$PY" -c "print($LB_RTO/$CP)")" "$("$PY" -c "print($RR/$LB_RTO)")"
printf "  failback  lifeboat %7.2fs (wrote %s MiB, fetched %s MiB)   rsync %7.2fs   rsync/lifeboat %5.2fx (target > 1), bit-exact\n" \
  "$LB_FB" "$WROTE" "$FETCHED" "$RS" "$("$PY" -c "print($RS/$LB_FB)")"

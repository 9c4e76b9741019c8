# Shared helpers of the bench scripts (sourced; needs $PY set to a python3 interpreter).

# gen_image PATH MIB: a deterministic image of 64 KiB blocks, 40% random, 40% zero, 20%
# compressible text.
gen_image() {
  "$PY" - "$1" "$2" <<'PY'
import os, sys, random
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
words = [b"lifeboat", b"replica", b"vault", b"point", b"block", b"delta", b"mesh", b"noise"]
with open(path, "wb") as f:
    for i in range(mib * 16):
        r = rnd.random()
        if r < 0.4:
            f.write(os.urandom(65536))
        elif r < 0.8:
            f.write(bytes(65536))
        else:
            line = b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
            f.write((line * (65536 // len(line) + 1))[:65536])
PY
}

# change_1pct PATH MIB: overwrites 1% of the 64 KiB blocks in place with random data (the same
# blocks every time), and syncs.
change_1pct() {
  "$PY" - "$1" "$2" <<'PY'
import os, sys, random
path, mib = sys.argv[1], int(sys.argv[2])
n = mib * 16
rnd = random.Random(7)
with open(path, "r+b") as f:
    for b in rnd.sample(range(n), n // 100):
        f.seek(b * 65536); f.write(os.urandom(65536))
    f.flush(); os.fsync(f.fileno())
PY
}

# The mesh of a bench (needs $L the binary, $W the work directory, $PY, and a `pids` array).
# start_node NAME [PEER]: inits and starts a daemon (mDNS off), waits until it answers.
start_node() {
  "$L" init --state-dir "$W/$1" --name "$1" --listen 127.0.0.1:0 ${2:+--peer "$2"} >/dev/null
  sed -i 's/mdns = true/mdns = false/' "$W/$1/lifeboat.toml"
  LIFEBOAT_LOG=${BENCH_LOG:-info} "$L" node run --state-dir "$W/$1" 2>"$W/$1.log" & pids+=($!)
  for _ in $(seq 100); do "$L" status --state-dir "$W/$1" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "bench: $1 did not start" >&2; exit 1
}

# grant ROLE NODE: the configuration node `cfg` grants ROLE (by node id); waits until NODE
# holds it.
grant() {
  local id; id=$("$L" status --json --state-dir "$W/$2" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["node"]["node_id"])')
  for _ in $(seq 100); do "$L" role add "$1" --node "$id" --state-dir "$W/cfg" >/dev/null 2>&1 && break; sleep 0.1; done
  for _ in $(seq 100); do "$L" role list --state-dir "$W/$2" | grep -q "$1" && return; sleep 0.1; done
  echo "bench: $2 never took the $1 role" >&2; exit 1
}

# start_mesh NODE...: `cfg` (configuration node, mesh authority) and NODEs registered to it.
start_mesh() {
  start_node cfg
  local ca; ca=$("$L" status --json --state-dir "$W/cfg" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["node"]["listen"])')
  for n in "$@"; do start_node "$n" "$ca"; done
  "$L" role add configuration --state-dir "$W/cfg" >/dev/null
  "$L" mesh create --state-dir "$W/cfg" >/dev/null
  for n in "$@"; do "$L" register "$("$L" key issue --state-dir "$W/cfg" 2>/dev/null)" --state-dir "$W/$n" >/dev/null; done
}

# npoints MACHINE: its committed points; wait_points MACHINE N: waits until it has N.
npoints() { "$L" points "$1" --json --state-dir "$W/cfg" 2>/dev/null | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0; }
wait_points() {
  for _ in $(seq 2400); do [ "$(npoints "$1")" -ge "$2" ] && return; sleep 0.25; done
  echo "bench: $1 never reached $2 points" >&2; exit 1
}

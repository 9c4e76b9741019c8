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

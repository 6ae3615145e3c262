# Ran on an H100 (2026-12-07; asked for nvidia-h200, the H100 came): results in 2026-12-07-h100-lead-30-*.
# One call (~4 min), after lead-29: the serving benchmark in one run (the targets from one run), its
# saturation bursts now over warm connections (median of 3, one cold burst beside), with the served defaults
# lead-29 chose; rates above lead-28's (400 req/s passed at 100/64; 700 passed, 800 failed for classification).
# Then the served burst over the FP8 cache (lead-29 measured FP8 offline only: 24,145 tok/s on an H100).
# Run from the repository root with .whl carried.
set -u
source benchmarks/device_env.sh || exit
echo "[$(date +%T)] serve_throughput --offline"
timeout -s INT 420 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates '100in-64out=400,450;classify-100in-16out=700,750' --budget-s 400 --out $OUT/serve 2>&1 | quiet \
  | tail -12 | cut -c1-2400
grep "profile:" $OUT/serve/engine_profile.log | sed 's/.*profile: //' | cut -c1-330 | tail -4
echo "[$(date +%T)] served burst over an FP8 KV cache (opt-in), 4 front ends, against offline"
TUNEBENCH_KV_CACHE_DTYPE=fp8 timeout -s INT 120 python3 benchmarks/frontend_split.py --slots 512 --burst 512 \
  --repeat 3 --frontends split:4 --out $OUT/split-fp8 2>&1 | quiet | tail -2 | cut -c1-900
echo "[$(date +%T)] done"

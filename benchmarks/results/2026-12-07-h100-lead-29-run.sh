# Ran on an H100 (2026-12-07; asked for nvidia-h200, the H100 came): results in 2026-12-07-h100-lead-29-*.
# One call (~6 min), after lead-28. The serving benchmarks' burst client now opens its connections before the
# clock starts (burst_client, connections "warm"); lead-27/28 timed 512 new connections inside the window.
# (1) the served 512-request burst through 4 and 8 front ends at waiting-served ratio inf (default) and 0, over
# warm connections, against the engine offline; (2) the offline burst at ratio 0 over the bf16 and FP8 caches
# (the FP8 prefill from column 0 now attends over its fresh keys, not measured before); (3) when the requests
# reach the engine, warm against cold connections (served_arrivals).
# Run from the repository root with .whl carried.
set -u
source benchmarks/device_env.sh || exit
echo "[$(date +%T)] served burst over warm connections: 4 and 8 front ends, ratio inf and 0; offline"
timeout -s INT 300 python3 benchmarks/frontend_split.py --slots 512 --burst 512 --repeat 3 \
  --frontends split:4,split:4~0,split:8~0 --out $OUT/split 2>&1 | quiet | tail -3 | cut -c1-1800
for kv in auto fp8; do
  echo "[$(date +%T)] offline burst: ratio 0, KV cache $kv"
  TUNEBENCH_KV_CACHE_DTYPE=$kv timeout 75 python3 benchmarks/burst_timeline.py --waiting-served-ratio 0 --repeats 3 \
    --out $OUT/timeline.jsonl 2>&1 | quiet | tail -1 | cut -c1-700
done
echo "[$(date +%T)] arrivals at the engine, warm and cold connections, 4 front ends"
timeout -s INT 90 python3 benchmarks/served_arrivals.py --slots 512 --burst 512 --frontends 4 --modes 8192 --repeat 3 \
  --out $OUT/arrivals 2>&1 | quiet | tail -1 | cut -c1-1500
echo "[$(date +%T)] done"

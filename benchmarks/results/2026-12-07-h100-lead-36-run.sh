# Ran on the same H100 right after lead-35 (2026-12-07 23:57, 180 s). Results in 2026-12-07-h100-lead-36-*.
# One call (~5 min), right after lead-35 (same H100). FP8 weights with the FP8 KV cache: the offline 512-request
# burst at ratio 0 over the FP8 cache with bf16 then FP8 weights, and the served burst with both (4 front ends, inf).
set -u
source benchmarks/device_env.sh || exit
nofuss() { grep -v "^W1\|register_constant\|^ *\"\"\"Configuration class" ; }
export TUNEBENCH_KV_CACHE_DTYPE=fp8
for w in auto fp8; do
  echo "[$(date +%T)] offline burst, ratio 0, FP8 cache, weights $w"
  TUNEBENCH_WEIGHT_DTYPE=$w timeout 150 python3 benchmarks/burst_timeline.py --waiting-served-ratio 0 --repeats 3 \
    --out $OUT/timeline-kv8-$w.jsonl > $OUT/timeline-kv8-$w.log 2>&1
  echo "rc=$?"; grep -i "error\|Traceback" $OUT/timeline-kv8-$w.log | nofuss | head -5 | cut -c1-300
  head -c 700 $OUT/timeline-kv8-$w.jsonl 2>/dev/null; echo
done
echo "[$(date +%T)] served bursts, FP8 weights and cache, 4 front ends, ratio inf, against offline"
TUNEBENCH_WEIGHT_DTYPE=fp8 timeout -s INT 170 python3 benchmarks/frontend_split.py --slots 512 --burst 512 \
  --repeat 3 --frontends split:4 --out $OUT/split-kv8-fp8w > $OUT/split-kv8-fp8w.log 2>&1
echo "rc=$?"; quiet < $OUT/split-kv8-fp8w.log | nofuss | tail -3 | cut -c1-900
echo "[$(date +%T)] done"

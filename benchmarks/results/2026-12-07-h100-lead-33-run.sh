# Ran on an H100 (2026-12-07 14:21, 387 s; asked for nvidia-h200, the H100 came): results in 2026-12-07-h100-lead-33-*.
# One call (~6 min), after lead-31 (H100): the serving benchmark in one run on whichever card comes. On an H200,
# the issue's targets with the served burst over warm connections (never measured on that card; lead-28's was
# cold), and the served burst over the opt-in FP8 cache at ratios inf and 0 against offline; on an H100, rates
# above lead-31's (350 req/s passed there and was the highest tried).
# Run from the repository root with .whl carried.
set -u
source benchmarks/device_env.sh || exit
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
budget=${BUDGET:-330}
case "$card" in
  *H200*) rates='100in-64out=400,450;classify-100in-16out=700,750' ;;
  *) rates='100in-64out=360,380;classify-100in-16out=700,750' ;;
esac
echo "[$(date +%T)] serve_throughput --offline on $card, rates $rates, budget $budget s"
timeout -s INT $((budget + 30)) python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates "$rates" --budget-s $budget --out $OUT/serve 2>&1 | quiet | tail -12 | cut -c1-2400
grep "profile:" $OUT/serve/engine_profile.log | sed 's/.*profile: //' | cut -c1-330 | tail -4
echo "[$(date +%T)] served bursts over the FP8 KV cache (opt-in), 4 front ends, ratios inf and 0, against offline"
TUNEBENCH_KV_CACHE_DTYPE=fp8 timeout -s INT 150 python3 benchmarks/frontend_split.py --slots 512 --burst 512 \
  --repeat 3 --frontends split:4,split:4~0 --out $OUT/split-fp8 2>&1 | quiet | tail -3 | cut -c1-1500
echo "[$(date +%T)] done"

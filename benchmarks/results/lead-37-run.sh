# One call (~6 min), after lead-36. The serving benchmark in one run: on an H200 with the defaults (the first warm
# served burst there); on an H100 with the opt-in FP8 weights and FP8 KV cache (their one-run figures).
set -u
source benchmarks/device_env.sh || exit
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  rates='100in-64out=400,450;classify-100in-16out=700,750'
else
  export TUNEBENCH_WEIGHT_DTYPE=fp8 TUNEBENCH_KV_CACHE_DTYPE=fp8; rates='100in-64out=380,420;classify-100in-16out=700,750'
fi
echo "[$(date +%T)] serve_throughput, weights ${TUNEBENCH_WEIGHT_DTYPE:-auto}, cache ${TUNEBENCH_KV_CACHE_DTYPE:-auto}"
timeout -s INT 420 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates "$rates" --budget-s 300 --out $OUT/serve.jsonl > $OUT/serve.log 2>&1
echo "rc=$?"; quiet < $OUT/serve.log | grep -v "^W1" | tail -4 | cut -c1-2500
echo "[$(date +%T)] done"

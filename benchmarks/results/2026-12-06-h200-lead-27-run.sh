# One call (~7 min), after lead-26 (H100). On the H200: (1) the decode kernels alone at every row count, over
# bf16 and FP8 caches (is ahead:8:1, fastest at 256 and 512 rows on the H100, also the H200's fastest?); (2) the
# offline 512-request burst (burst_timeline) at waiting-served ratio 0 (the offline engines' setting) with the
# default kernel, the fastest variant, and the fastest over an FP8 cache, and at inf (the served default);
# (3) the served burst through 4 front ends at ratio inf and 1 with the fastest variant; (4) evaluation's 818
# prompts with the device memory recorded before the engine sizes its slots (lead-26 on the H100: 14 fit).
# Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
python3 -c "import tunebench.serve.core, fastapi, pydantic" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a\|server-batched" ; }
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.max.sm --format=csv,noheader
echo "[$(date +%T)] decode kernels alone, 1..512 rows, bf16 and fp8 caches"
timeout 110 python3 benchmarks/decode_kernels.py --rows 1,32,128,256,512 --kernels triton --slots 512 --kv-dtype auto,fp8 \
  --variants split:16:1,ahead:8:1,ahead:8:2,ahead:4:1,ahead:16:1,split:8:1 > $OUT/kernels.jsonl 2> >(quiet > $OUT/kernels.log)
tail -7 $OUT/kernels.log | cut -c1-900
BEST=$(python3 -c "import json; print(json.loads(open('$OUT/kernels.jsonl').read().splitlines()[-1])['triton_variant'] or '')" 2>/dev/null)
echo "fastest variant: ${BEST:=split:16:1}"
for run in "0 split:16:1 auto" "0 $BEST auto" "0 $BEST fp8" "inf $BEST auto"; do
  set -- $run
  echo "[$(date +%T)] offline burst: ratio $1, kernel $2, cache $3"
  TUNEBENCH_TRITON_DECODE=$2 TUNEBENCH_KV_CACHE_DTYPE=$3 timeout 80 python3 benchmarks/burst_timeline.py \
    --waiting-served-ratio $1 --repeats 3 --out $OUT/timeline.jsonl 2>&1 | quiet | tail -1 | cut -c1-640
done
echo "[$(date +%T)] served burst, 4 front ends, ratio inf and 1, kernel $BEST"
TUNEBENCH_TRITON_DECODE=$BEST timeout -s INT 170 python3 benchmarks/frontend_split.py --slots 512 --burst 512 --repeat 2 \
  --frontends split:4,split:4~1 --skip-offline --out $OUT/split 2>&1 | quiet | tail -4 | cut -c1-1500
echo "[$(date +%T)] evaluation, 818 prompts"
timeout 80 python3 benchmarks/generation_engines.py --prompts 818 --new-tokens 64 --engines batched 2>&1 | quiet | tail -1 \
  | tee $OUT/eval.jsonl | cut -c1-1500
echo "[$(date +%T)] done"

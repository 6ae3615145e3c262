# Ran 2026-12-06 23:05 on the H200 (272 s).
# One call (~8 min), after lead-26 (H100). (1) The decode kernels alone at every row count over bf16 and FP8
# caches, and a 512-request burst over each (is ahead:8:1, fastest at 256 and 512 rows on the H100, the fastest
# here too?); (2) the offline 512-request burst (burst_timeline) at waiting-served ratio 0 with the default kernel
# and the fastest variant; (3) the served burst through 4 front ends at ratio inf (default) and 1, against the
# engine offline, with the fastest variant; (4) evaluation's 818 prompts, the warm-up's engine now released
# before the measured run (lead-26 on the H100: it held most of the device and 14 slots fit).
# Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
python3 -c "import tunebench.serve.core, fastapi, pydantic" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a\|server-batched" ; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
echo "[$(date +%T)] decode kernels alone, 1..512 rows, bf16 and fp8 caches; a burst over each"
timeout 75 python3 benchmarks/decode_kernels.py --rows 1,32,128,256,512 --kernels triton --slots 512 --kv-dtype auto,fp8 \
  --variants split:16:1,ahead:8:1,ahead:8:2,ahead:4:1,ahead:16:1,split:8:1 > $OUT/kernels.jsonl 2> >(quiet > $OUT/kernels.log)
grep "alone, 512\|alone, 1 \|burst" $OUT/kernels.log | cut -c1-900
BEST=$(python3 -c "import json; print(json.loads(open('$OUT/kernels.jsonl').read().splitlines()[-1])['triton_variant'] or '')" 2>/dev/null)
echo "fastest variant: ${BEST:=split:16:1}"
for kernel in split:16:1 $BEST; do
  echo "[$(date +%T)] offline burst: ratio 0, kernel $kernel"
  TUNEBENCH_TRITON_DECODE=$kernel timeout 70 python3 benchmarks/burst_timeline.py --waiting-served-ratio 0 --repeats 3 \
    --out $OUT/timeline.jsonl 2>&1 | quiet | tail -1 | cut -c1-640
  [ "$kernel" = "$BEST" ] && break
done
echo "[$(date +%T)] served burst, 4 front ends, ratio inf and 1, against offline; kernel $BEST"
TUNEBENCH_TRITON_DECODE=$BEST timeout -s INT 230 python3 benchmarks/frontend_split.py --slots 512 --burst 512 --repeat 2 \
  --frontends split:4,split:4~1 --out $OUT/split 2>&1 | quiet | tail -3 | cut -c1-1500
echo "[$(date +%T)] evaluation, 818 prompts"
timeout 70 python3 benchmarks/generation_engines.py --prompts 818 --new-tokens 64 --engines batched 2>&1 | quiet | tail -1 \
  | tee $OUT/eval.jsonl | cut -c1-1500
echo "[$(date +%T)] done"

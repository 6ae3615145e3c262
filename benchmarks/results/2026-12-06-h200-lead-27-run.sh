# NOT YET RUN (every start attempt after lead-26 was refused on 2026-12-06).
# One call (~4 min), after lead-26 (H100): the "ahead" kernel at every row count against split:16:1 (is ahead:8:1,
# fastest at 256 and 512 rows there, also no slower for a lone stream?), the served burst with it, and evaluation's
# 818 prompts again with the device memory recorded before the engine sizes its slots (lead-26: only 14 fit).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
python3 -c "import tunebench.serve.core, fastapi, pydantic" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a\|server-batched" ; }
echo "[$(date +%T)] evaluation, 818 prompts"
timeout 80 python3 benchmarks/generation_engines.py --prompts 818 --new-tokens 64 --engines batched 2>&1 | quiet | tail -1 | tee $OUT/eval.jsonl | cut -c1-1200
echo "[$(date +%T)] decode kernels alone, 1..512 rows"
timeout 100 python3 benchmarks/decode_kernels.py --rows 1,32,128,256,512 --kernels triton --slots 512 \
  --variants split:16:1,ahead:8:1,ahead:8:2,ahead:4:1 > $OUT/kernels.jsonl 2> >(quiet > $OUT/kernels.log); tail -6 $OUT/kernels.log | cut -c1-1500
echo "[$(date +%T)] served burst, 4 front ends, ahead:8:1 (lead-26 split:16:1: 20,332 / 18,073 tok/s)"
TUNEBENCH_TRITON_DECODE=ahead:8:1 timeout -s INT 120 python3 benchmarks/frontend_split.py --slots 512 --burst 512 --repeat 2 \
  --frontends split:4 --skip-offline --out $OUT/split 2>&1 | quiet | tail -3 | cut -c1-1200
echo "[$(date +%T)] done"

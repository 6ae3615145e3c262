# Ran 2026-12-06 20:28 on an H100 (no H200 came); 311 s.
# One call (~8 min): (1) the served burst with short prompts tokenized on the event loop against the tokenizing
# thread (lead-24 on the H100: the served engine idled 0.335 s of 1.891 s waiting for requests), and with
# --waiting-served-ratio 0 (a burst's prefills before its decode steps); (2) the "ahead" decode kernel (next tile's
# keys and values loaded before this tile's arithmetic) and Triton pipeline stages against split:16:1, alone;
# (3) the offline burst (burst_timeline) at ratio inf and 0, and at 0 with the fastest kernel variant; (4) evaluation's
# 818 prompts through the offline engine, which now fills every free slot before decoding.
# Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
python3 -c "import tunebench.serve.core, fastapi, pydantic" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a\|server-batched" ; }
echo "[$(date +%T)] served bursts: thread vs loop tokenization, ratio inf vs 0 (4 front ends), and offline"
timeout -s INT ${SPLIT_S:-270} python3 benchmarks/frontend_split.py --slots 512 --burst 512 --repeat 2 \
  --frontends ${MODES:-split:4@thread,split:4,split:4~0} --out $OUT/split 2>&1 | quiet | tee $OUT/split.log | tail -3 | cut -c1-2500
echo "[$(date +%T)] decode kernels alone"
timeout 110 python3 benchmarks/decode_kernels.py --rows 256,512 --kernels triton --slots 512 \
  --variants split:16:1,ahead:16:1,ahead:8:1,ahead:16:2,ahead:32:2,split:16:1:3,split:32:2:3,ahead:16:1:2 \
  > $OUT/kernels.jsonl 2> >(quiet > $OUT/kernels.log); tail -4 $OUT/kernels.log | cut -c1-1500
BEST=$(python3 -c "import json,sys; print(json.loads(open('$OUT/kernels.jsonl').read().splitlines()[-1])['triton_variant'] or '')" 2>/dev/null)
echo "fastest variant: ${BEST:-none}"
for run in "inf" "0" "0 $BEST"; do
  set -- $run
  echo "[$(date +%T)] offline burst: ratio $1 ${2:-default kernel}"
  ( [ -n "${2:-}" ] && export TUNEBENCH_TRITON_DECODE=$2
    timeout 90 python3 benchmarks/burst_timeline.py --waiting-served-ratio $1 --repeats 3 --out $OUT/timeline.jsonl 2>&1 \
      | quiet | tail -1 | cut -c1-700 )
done
echo "[$(date +%T)] evaluation through the engine offline (now waiting_served_ratio 0, prefill_delay 0)"
timeout 80 python3 benchmarks/generation_engines.py --prompts 818 --new-tokens 64 --engines batched 2>&1 | quiet | tail -1 | cut -c1-900
echo "[$(date +%T)] done"

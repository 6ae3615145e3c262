# The lead's combined call on the merged tree (main after merging engine-speed and frontend, 2026-12-03):
# the Triton decode kernel's variants and offline bursts, then the full serving benchmark with 512 slots and the
# issue's 512-request bursts, then evaluation's generation through the engine. Run from the repository root with
# .whl carried (pydantic, fastapi, uvicorn, httptools, uvloop, ...). Outputs -> $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 -c "import tunebench.cli, httptools, uvloop, triton" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
echo "[$(date +%T)] decode kernels"
timeout 90 python3 benchmarks/decode_kernels.py --rows 1,256,512 --slots 512 \
  --variants lanes:32:2,lanes:32:1,lanes:16:1,lanes:64:2 > $OUT/decode_kernels.jsonl 2> $OUT/decode_kernels.log
grep "burst" $OUT/decode_kernels.log
best=$(python3 -c "import json;print(json.loads(open('$OUT/decode_kernels.jsonl').readline())['triton_variant'] or '')" 2>/dev/null)
[ -n "$best" ] && export TUNEBENCH_TRITON_DECODE=$best
echo "[$(date +%T)] triton variant: ${best:-default}"
echo "[$(date +%T)] prefill graphs, eager vs compiled layers"
for c in 0 1; do TUNEBENCH_DECODE_COMPILE=layers TUNEBENCH_PREFILL_COMPILE=$c timeout 60 python3 benchmarks/admission_profile.py \
  --prefill --rows 32,64 --widths 104 --out $OUT/prefill-compile-$c.jsonl 2>&1 | grep "prefill [0-9]"; done
faster=$(python3 -c "
import json
ms = [sum(v['ms'] for v in json.loads(open('$OUT/prefill-compile-%d.jsonl' % c).readline())['by_rows_x_width'].values()) for c in (0, 1)]
print(1 if ms[1] < 0.97 * ms[0] else 0)" 2>/dev/null)
export TUNEBENCH_PREFILL_COMPILE=${faster:-0}
echo "[$(date +%T)] TUNEBENCH_PREFILL_COMPILE=$TUNEBENCH_PREFILL_COMPILE"
timeout -s INT 300 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates '100in-64out=250,300;classify-100in-16out=450,600' --budget-s 280 --out $OUT/serve 2>&1 | quiet | tail -25
echo "[$(date +%T)] evaluation through the engine"
timeout 70 python3 benchmarks/generation_engines.py --prompts 818 --new-tokens 64 --engines batched 2>&1 | quiet | tail -4
echo "[$(date +%T)] done"

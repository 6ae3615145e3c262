# One call (~9 min), after lead-27: the serving benchmark in one run as lead-23 (served bursts with their
# schedule, open-loop rates, single stream, served vs offline, LoRA unmerged vs merged offline, transformers'
# continuous batching on the same prompts), with this session's defaults; then evaluation's 818 prompts through
# the engine against padded `model.generate` in the same process. KERNEL overrides the decode kernel variant.
# Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
python3 -c "import tunebench.serve.core, fastapi, pydantic" || exit
[ -n "${KERNEL:-}" ] && export TUNEBENCH_TRITON_DECODE=$KERNEL
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
echo "[$(date +%T)] serving benchmark (kernel ${TUNEBENCH_TRITON_DECODE:-default})"
timeout -s INT 400 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates '100in-64out=350,400;classify-100in-16out=600,700' --budget-s 380 --out $OUT/serve 2>&1 | quiet \
  | grep -v "server-batched" | tail -14 | cut -c1-1500
grep "profile:" $OUT/serve/engine_profile.log | sed 's/.*profile: //' | cut -c1-330 | tail -6
echo "[$(date +%T)] evaluation: engine against padded generate, 818 prompts"
timeout 140 python3 benchmarks/generation_engines.py --prompts 818 --new-tokens 64 --engines batched,padded \
  --budget-s 120 2>&1 | quiet | tail -1 | tee $OUT/eval.jsonl | cut -c1-1500
echo "[$(date +%T)] done"

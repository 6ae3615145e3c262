# One call (~8 min), after lead-27 (H200): the serving benchmark in one run as lead-23 (served bursts with their
# schedule, open-loop rates, single stream, served vs offline, LoRA unmerged vs merged offline, transformers'
# continuous batching on the same prompts) with this session's defaults (the decode kernel variant by rows:
# ahead:8:2 from 64 rows, split:16:1 below); then evaluation's 818 prompts through the engine against padded
# `model.generate` in the same process. Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
python3 -c "import tunebench.serve.core, fastapi, pydantic" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
echo "[$(date +%T)] serving benchmark"
timeout -s INT 345 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates '100in-64out=350,400;classify-100in-16out=700,800' --budget-s 330 --out $OUT/serve 2>&1 | quiet \
  | grep -v "server-batched" | tail -12 | cut -c1-1800
grep "profile:" $OUT/serve/engine_profile.log | sed 's/.*profile: //' | cut -c1-330 | tail -4
echo "[$(date +%T)] evaluation: engine against padded generate, 818 prompts"
timeout 110 python3 benchmarks/generation_engines.py --prompts 818 --new-tokens 64 --engines batched,padded \
  --budget-s 100 2>&1 | quiet | tail -1 | tee $OUT/eval.jsonl | cut -c1-1200
echo "[$(date +%T)] done"

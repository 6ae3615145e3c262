# Ran 2026-12-06 23:29 on the H200 (168 s).
# One call (~6 min), after lead-27 (H200): the serving benchmark in one run as lead-23 (served bursts with their
# schedule, open-loop rates, single stream, served vs offline, LoRA unmerged vs merged offline, transformers'
# continuous batching on the same prompts) with this session's defaults (the decode kernel variant by rows:
# ahead:8:2 from 64 rows, split:16:1 below). Evaluation's 818 prompts ran in lead-27. Run from the repository
# root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
python3 -c "import tunebench.serve.core, fastapi, pydantic" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
echo "[$(date +%T)] serving benchmark"
timeout -s INT 320 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates '100in-64out=350,400;classify-100in-16out=700,800' --budget-s 300 --out $OUT/serve 2>&1 | quiet \
  | grep -v "server-batched" | tail -12 | cut -c1-1800
grep "profile:" $OUT/serve/engine_profile.log | sed 's/.*profile: //' | cut -c1-330 | tail -4
echo "[$(date +%T)] done"

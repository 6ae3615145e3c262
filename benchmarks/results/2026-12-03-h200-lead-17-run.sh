# Session 5, second call: the serving benchmark with this session's defaults (Triton KV write, split:16:2 decode
# kernel), then evaluation through the engine; as lead-14. Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
echo "[$(date +%T)] serving benchmark, defaults"
timeout -s INT 380 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates '100in-64out=300,350;classify-100in-16out=600,700' --budget-s 360 --out $OUT/serve 2>&1 | quiet \
  | grep -v "server-batched" | tail -14
grep "warm-up\|limit\|compiled decode" $OUT/serve/engine_profile.log | cut -c1-200 | head -12
grep "profile:" $OUT/serve/engine_profile.log | sed 's/.*profile: //' | cut -c1-330 | tail -14
echo "[$(date +%T)] evaluation through the engine"
timeout 90 python3 benchmarks/generation_engines.py --prompts 818 --new-tokens 64 --engines batched 2>&1 | quiet | tail -4
echo "[$(date +%T)] done"

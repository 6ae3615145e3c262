# Session 6, third call: the serving benchmark with this session's engine (heap frozen in every serving process
# and during offline runs, direct-copy compaction, prefills over fresh keys, compiled prefills with unmerged
# adapters; split:16:1 and one compiled frame from session 5), as lead-17; evaluation through the engine; the
# offline burst's timeline once more. Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
echo "[$(date +%T)] serving benchmark, defaults"
timeout -s INT 390 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates '100in-64out=350,400;classify-100in-16out=600,700' --budget-s 370 --out $OUT/serve 2>&1 | quiet \
  | grep -v "server-batched" | tail -14
grep "warm-up\|limit\|compiled decode\|froze\|frozen" $OUT/serve/engine_profile.log | cut -c1-200 | head -12
grep "profile:" $OUT/serve/engine_profile.log | sed 's/.*profile: //' | cut -c1-330 | tail -14
echo "[$(date +%T)] evaluation through the engine"
timeout 90 python3 benchmarks/generation_engines.py --prompts 818 --new-tokens 64 --engines batched 2>&1 | quiet | tail -4
echo "[$(date +%T)] offline burst timeline"
timeout 100 python3 benchmarks/burst_timeline.py --repeats 4 2>/dev/null | tee $OUT/timeline.jsonl | cut -c1-900
echo "[$(date +%T)] done"

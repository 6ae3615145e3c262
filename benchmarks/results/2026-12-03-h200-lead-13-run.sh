# Session 4, second call: compiled prefills with dynamo's recompile limit per layer (8 x layers, applied in the
# compiling thread): the prefill and 1-row decode graphs' GPU time, then the serving benchmark's rates and single
# stream with 4 front ends and compiled prefills (as lead-9, before the fix). Run from the repository root with
# .whl carried. Outputs -> $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
echo "[$(date +%T)] prefill profile, compiled prefills"
TORCH_LOGS=recompiles TUNEBENCH_PREFILL_COMPILE=1 timeout 170 python3 benchmarks/prefill_profile.py \
  --out $OUT/prefill-profile.jsonl 2> $OUT/prefill-profile-1.log | cut -c1-200
grep "^\[" $OUT/prefill-profile-1.log | cut -c1-1600
echo "recompiles: $(grep -c 'Recompiling' $OUT/prefill-profile-1.log); limit hits: $(grep -c 'hit config' $OUT/prefill-profile-1.log)"
echo "[$(date +%T)] serving benchmark, 4 front ends, compiled prefills"
TUNEBENCH_PREFILL_COMPILE=1 timeout -s INT 230 python3 benchmarks/serve_throughput.py --offline --served-only \
  --slots 512 --burst 512 --warmup 2 --frontends 4 --rates '100in-64out=300,350;classify-100in-16out=600,700' \
  --budget-s 215 --out $OUT/serve 2>&1 | quiet | grep -v "server-batched" | tail -12
grep "warm-up\|limit" $OUT/serve/engine_profile.log | head -3
grep "profile:" $OUT/serve/engine_profile.log | sed 's/.*profile: //' | cut -c1-330 | tail -12
echo "[$(date +%T)] done"

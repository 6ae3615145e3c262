# The lead's third call of 2026-12-03 (session 2): the served single stream with the Triton kernel at one row
# (default) and with SDPA there (TUNEBENCH_FLEX_MIN_ROWS=2), each a fresh server with the start-up warm-up
# (now with a 1-row prefill); the second start reuses inductor's cache. Outputs -> $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
for m in 1 2; do
  echo "[$(date +%T)] single stream, TUNEBENCH_FLEX_MIN_ROWS=$m"
  TUNEBENCH_FLEX_MIN_ROWS=$m timeout 130 python3 benchmarks/serve_throughput.py --single-stream-only --slots 512 \
    --out $OUT/single-$m > $OUT/single-$m.log 2>&1
  grep '"single-stream-64"' $OUT/single-$m/results.jsonl
  grep -h "warm-up\|compiled decode\|ready in" $OUT/single-$m/engine_profile.log $OUT/single-$m.log 2>/dev/null | sort -u | head -8
done
echo "[$(date +%T)] done"

# The lead's fourth call of 2026-12-03 (session 2): why the served single stream is 3.5 ms per token where the
# engine-speed call measured 2.7: the same server (SDPA at one row, no warm-up, eager prefill, as then) at 256
# and at 512 slots. Outputs -> $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TUNEBENCH_FLEX_MIN_ROWS=2 TUNEBENCH_WARMUP=0 TUNEBENCH_PREFILL_COMPILE=0
for s in 256 512; do
  echo "[$(date +%T)] single stream, $s slots"
  timeout 60 python3 benchmarks/serve_throughput.py --single-stream-only --slots $s --out $OUT/single-$s > $OUT/single-$s.log 2>&1
  grep '"single-stream-64"' $OUT/single-$s/results.jsonl
  grep "1.0 rows/step" $OUT/single-$s/engine_profile.log | tail -1
done

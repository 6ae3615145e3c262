# The lead's fifth call of 2026-12-03 (session 2): the served single stream with the start-up warm-up and eager
# prefills (the Triton kernel at one row), 512 slots. Outputs -> $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src TUNEBENCH_PREFILL_COMPILE=0
timeout 75 python3 benchmarks/serve_throughput.py --single-stream-only --slots 512 --out $OUT/s > $OUT/s.log 2>&1
grep '"single-stream-64"' $OUT/s/results.jsonl
grep "warm-up\|1.0 rows/step" $OUT/s/engine_profile.log | tail -2

# The lead's second call of 2026-12-03 (session 3): compiled prefills under a dynamo backend of their own
# (TUNEBENCH_PREFILL_COMPILE=1): the serving benchmark's rates and single stream with 4 front ends; then the
# same 512-request bursts through 1, 4 and 8 front ends (default prefills). Run from the repository root with
# .whl carried. Outputs -> $OUT.
# (The separate-backend change for compiled prefills that this call measured was not kept: README, "Compiled prefills".)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 -c "import tunebench.cli, httptools, uvloop, triton, prometheus_client.multiprocess" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
echo "[$(date +%T)] serving benchmark, 4 front ends, compiled prefills"
TUNEBENCH_PREFILL_COMPILE=1 timeout -s INT 200 python3 benchmarks/serve_throughput.py --offline --served-only \
  --slots 512 --burst 512 --warmup 2 --frontends 4 --rates '100in-64out=300,350;classify-100in-16out=600,700' \
  --budget-s 185 --out $OUT/serve-prefill-compiled 2>&1 | quiet | grep -v "server-batched" | tail -8
grep "warm-up" $OUT/serve-prefill-compiled/engine_profile.log | head -2
echo "[$(date +%T)] bursts through 1, 4 and 8 front ends"
timeout -s INT 230 python3 benchmarks/frontend_split.py --slots 512 --burst 512 --repeat 2 --skip-offline \
  --frontends split,split:4,split:8 --out $OUT/frontends > $OUT/frontends.log 2>&1
grep '"benchmark"\| split' $OUT/frontends.log | grep -v server-batched | cut -c1-400 | tail -16
echo "[$(date +%T)] done"

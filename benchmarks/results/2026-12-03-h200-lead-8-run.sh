# The lead's first call of 2026-12-03 (session 3): several front-end processes sharing one engine
# (`tunebench serve --frontends N`). The same 512-request bursts at 512 slots through 1, 2, 4 and 8 front ends,
# then the serving benchmark with 4 front ends. Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 -c "import tunebench.cli, httptools, uvloop, triton, prometheus_client.multiprocess" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
nproc
echo "[$(date +%T)] bursts through 1, 2, 4, 8 front ends"
timeout -s INT 250 python3 benchmarks/frontend_split.py --slots 512 --burst 512 --repeat 2 --skip-offline \
  --frontends split,split:2,split:4,split:8 --out $OUT/frontends 2>&1 | quiet | grep -v "^\[.*server-batched" | tail -14
echo "[$(date +%T)] serving benchmark, 4 front ends"
timeout -s INT 300 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 --frontends 4 \
  --rates '100in-64out=250,300,350;classify-100in-16out=450,600,700' --budget-s 280 --out $OUT/serve 2>&1 | quiet | tail -14
echo "[$(date +%T)] done"

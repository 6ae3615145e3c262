# Prepared on the CPU on 2026-12-04; run on 2026-12-06 on an H100 (no H200 came: compare within this run only). One call (~5 min):
# where the served burst's extra 0.5 s goes (lead-23: 16,579 tok/s served vs 22,773 offline). The served bursts
# now report the engine's schedule and the engine thread's seconds by phase from /metrics
# (saturation.schedule: steps, rows per step, prefills, prompts per prefill, engine_s incl. "idle": no work, so
# waiting on the front ends), and the split engine process freezes its heap before "ready". Then the same at a
# larger prefill budget (--max-prefill-tokens 6656 = 64 rows x 104 columns, one launch's cap): fewer decode steps
# while a burst is admitted, longer stalls for running streams. Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
python3 -c "import tunebench.serve.core, fastapi, pydantic" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a" ; }
echo "[$(date +%T)] serving benchmark, defaults (bursts with their schedule)"
timeout -s INT 330 python3 benchmarks/serve_throughput.py --offline --slots 512 --burst 512 --warmup 2 \
  --rates '100in-64out=350;classify-100in-16out=700' --skip-single --budget-s 310 --out $OUT/serve 2>&1 | quiet \
  | grep -v "server-batched" | tail -10
echo "[$(date +%T)] served bursts only, --max-prefill-tokens 6656"
timeout -s INT 150 python3 benchmarks/serve_throughput.py --offline --served-only --slots 512 --burst 512 \
  --warmup 2 --rates '100in-64out=350' --skip-single --max-prefill-tokens 6656 --budget-s 140 \
  --out $OUT/serve-6656 2>&1 | quiet | grep -v "server-batched" | tail -6
echo "[$(date +%T)] offline burst timeline at 6656"
timeout 90 python3 benchmarks/burst_timeline.py --repeats 3 --max-prefill-tokens 6656 2>/dev/null \
  | tee $OUT/timeline-6656.jsonl | cut -c1-700
echo "[$(date +%T)] done"

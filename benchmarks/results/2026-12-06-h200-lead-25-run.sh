# NOT YET RUN (no device time was left on 2026-12-06). One call (~6 min): where the served burst's engine idles. lead-24 (H100) showed the engine process idle 0.335 s
# of a 1.891 s served burst (offline 1.586 s): the requests reached it late, in one lump, after the front ends had
# parsed and tokenized every one of them (the tokenizing thread's hop, twice through the loop per request). Now
# short prompts are tokenized on the event loop and the engine process's own message time is its "channel" phase.
# Same burst: 4 front ends tokenizing in the thread (as before), 4 inline (now), 8 inline; the engine offline.
# Run from the repository root with .whl carried (MODES and SPLIT_S override the front ends and the time limit).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
python3 -c "import tunebench.serve.core, fastapi, pydantic" || exit
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a\|server-batched" ; }
echo "[$(date +%T)] front ends: thread vs inline tokenization, 4 vs 8 processes"
timeout -s INT ${SPLIT_S:-250} python3 benchmarks/frontend_split.py --slots 512 --burst 512 --repeat 2 \
  --frontends ${MODES:-split:4@thread,split:4,split:8} --out $OUT/split 2>&1 | quiet | tee $OUT/split.log | tail -4
echo "[$(date +%T)] when the requests reach the engine: thread against loop tokenization, 4 front ends"
timeout -s INT 150 python3 benchmarks/served_arrivals.py --slots 512 --burst 512 --frontends 4 --repeat 3 \
  --out $OUT/arrivals 2>&1 | quiet | tail -1 | cut -c1-3000
echo "[$(date +%T)] done"

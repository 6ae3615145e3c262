# The lead's fourth call of 2026-12-03 (session 3): the defaults as they land (--frontends auto = 4 on the
# 16-core host, one SO_REUSEPORT socket each): served bursts and open-loop rates at 512 slots. Run from the
# repository root with .whl carried. Outputs -> $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|^INFO\|captured a\|server-batched" ; }
echo "[$(date +%T)] served, front ends auto"
timeout -s INT 140 python3 benchmarks/serve_throughput.py --offline --served-only --skip-single --slots 512 \
  --burst 512 --warmup 2 --rates '100in-64out=280,300;classify-100in-16out=450,540' --budget-s 125 \
  --out $OUT/serve-auto 2>&1 | quiet | grep "burst:\|sampling CPU" | cut -c1-300
python3 -c "
import json
for l in open('$OUT/serve-auto/results.jsonl'):
    d = json.loads(l); print(d['profile'], d['saturation']['output_tokens_per_s'], d['saturation']['requests_per_s'], d['rates'])"
echo "[$(date +%T)] done"

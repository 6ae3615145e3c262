# Session 5, fifth call: the layer index as a tensor under compiled layers (one compiled attention frame for
# every layer): prefill_profile's warm-up time, dynamo graph count and graph timings with this session's
# defaults (Triton KV write, split:16:1, compiled prefills). Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
echo "[$(date +%T)] prefill profile, defaults"
timeout 160 python3 benchmarks/prefill_profile.py --no-kernels --out $OUT/prefill-profile.jsonl > $OUT/prefill-profile.log 2>&1
grep "warm-up\|ms:\|Error\|error" $OUT/prefill-profile.log | grep -v "Warning\|warn(" | cut -c1-300 | tail -8
python3 -c "import json; d=json.loads(open('$OUT/prefill-profile.jsonl').read()); print({k: d[k] for k in ('warmup_s','dynamo_graphs','decode_ms','compile_errors')})"
echo "[$(date +%T)] done"

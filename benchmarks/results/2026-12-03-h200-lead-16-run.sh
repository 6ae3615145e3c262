# Session 5, first call: the split-head Triton decode kernel (80 = 64 + 16) against "lanes", alone and in an
# offline 512-request burst; then prefill_profile with the Triton KV write and the split kernel, and with
# PyTorch's indexed write and "lanes" (the previous defaults). Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
quiet() { grep -v "Warning\|warn(\|^ *$\|_warn_once\|captured a" ; }
echo "[$(date +%T)] decode kernels: variants alone, then the best in a 512-slot burst (Triton KV write on)"
timeout 150 python3 benchmarks/decode_kernels.py --rows 256,512 --kernels triton --slots 512 \
  --variants lanes:32:2,split:32:2,split:32:4,split:64:4,split:16:2 > $OUT/decode-kernels.jsonl 2> $OUT/decode-kernels.log
tail -3 $OUT/decode-kernels.log | cut -c1-600
python3 -c "
import json; d = json.loads(open('$OUT/decode-kernels.jsonl').read())
for r, v in d['attention_alone'].items(): print(r, {k: (x['ms'], x['tb_per_s']) for k, x in v.items()})
print('best', d['triton_variant']); [print({k: b[k] for k in ('output_tokens_per_s', 'profile', 'wall_s')}) for b in d['bursts_100in_64out']]
"
echo "[$(date +%T)] prefill profile: Triton write + split:32:2"
TUNEBENCH_TRITON_DECODE=split:32:2 timeout 200 python3 benchmarks/prefill_profile.py --out $OUT/prefill-profile.jsonl 2>&1 | quiet | tail -25 | cut -c1-300
echo "[$(date +%T)] prefill profile: indexed write + lanes:32:2 (the previous defaults)"
TUNEBENCH_TRITON_KV_WRITE=0 TUNEBENCH_TRITON_DECODE=lanes:32:2 timeout 200 python3 benchmarks/prefill_profile.py --no-kernels --out $OUT/prefill-profile.jsonl 2>&1 | quiet | tail -6 | cut -c1-300
echo "[$(date +%T)] done"

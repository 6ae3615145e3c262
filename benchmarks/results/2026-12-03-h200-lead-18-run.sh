# Session 5, third call: the LoRA adapter unmerged vs merged offline (serve_throughput's lora_offline comparison)
# now that the warm-up covers every loaded adapter: 512-request 100/64 bursts, the engine's capture log; then
# three more tile/warp choices of the split decode kernel. Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
echo "[$(date +%T)] LoRA offline, unmerged then merged"
timeout 330 python3 - > $OUT/lora.log 2>&1 <<'PY'
import argparse, json, logging, tempfile
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(relativeCreated)7d %(name)s %(message)s")
from serve_throughput import build_tokenizer, prompt_texts
from engine_checks import make_adapter, offline_bursts
work = Path(tempfile.mkdtemp())
tok = build_tokenizer(work / "tok"); texts = prompt_texts(tok)
adapter = make_adapter("redpajama-3b", work / "lora")
args = argparse.Namespace(model="redpajama-3b", device="cuda", slots=512, burst=512)
out = {}
for merge in (False, True):
    mode = "merged" if merge else "unmerged"
    logging.info("=== %s", mode)
    out[mode] = offline_bursts(args, tok, texts, {"100in-64out": 64}, ("lora", adapter, merge))["100in-64out"]
    logging.info("RESULT %s %s", mode, out[mode])
ratio = out["unmerged"]["output_tokens_per_s"] / out["merged"]["output_tokens_per_s"]
print("JSON", json.dumps({"benchmark": "lora_offline", "slots": 512, "burst": 512, **out,
                          "unmerged_over_merged": round(ratio, 3)}))
PY
grep -v "Warning\|warn(" $OUT/lora.log | grep "===\|RESULT\|warm-up\|compiled decode\|Error\|error\|JSON" | cut -c1-600 | tail -30
grep "^JSON" $OUT/lora.log | cut -c6- > $OUT/lora.jsonl
echo "[$(date +%T)] split kernel tiles and warps"
timeout 120 python3 benchmarks/decode_kernels.py --rows 256,512 --kernels triton --slots 512 \
  --variants split:16:2,split:16:1,split:8:1,split:16:4 > $OUT/decode-kernels.jsonl 2> $OUT/decode-kernels.log
python3 -c "
import json; d = json.loads(open('$OUT/decode-kernels.jsonl').read())
for r, v in d['attention_alone'].items(): print(r, {k: (x['ms'], x['tb_per_s']) for k, x in v.items()})
print('best', d['triton_variant']); [print({k: b[k] for k in ('output_tokens_per_s', 'profile')}) for b in d['bursts_100in_64out']]
"
echo "[$(date +%T)] done"

# Session 4, fourth call: why the unmerged LoRA burst launches ~12 ms per step (offline, as serve_throughput's
# lora_offline comparison): the engine's INFO log (graph captures, with their adapter) during the warm-up and
# the measured 100/64 burst, unmerged then merged. Run from the repository root with .whl carried.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
timeout 200 python3 - > $OUT/lora.log 2>&1 <<'PY'
import argparse, logging, tempfile, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(relativeCreated)7d %(name)s %(message)s")
from serve_throughput import build_tokenizer, prompt_texts
from engine_checks import make_adapter, offline_bursts
work = Path(tempfile.mkdtemp())
tok = build_tokenizer(work / "tok"); texts = prompt_texts(tok)
adapter = make_adapter("redpajama-3b", work / "lora")
args = argparse.Namespace(model="redpajama-3b", device="cuda", slots=512, burst=512)
for merge in (False, True):
    logging.info("=== %s", "merged" if merge else "unmerged")
    out = offline_bursts(args, tok, texts, {"100in-64out": 64}, ("lora", adapter, merge))
    logging.info("RESULT %s %s", merge, out)
PY
grep -v "Warning\|warn(" $OUT/lora.log | grep "===\|captured\|RESULT\|burst\|compiled\|Error\|error" | cut -c1-400 | tail -60

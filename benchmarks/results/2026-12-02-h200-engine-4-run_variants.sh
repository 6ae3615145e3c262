#!/bin/bash
# engine-speed second GPU call: FlexAttention decode variants (block size, Triton options), decode profile only.
set -o pipefail
cd .dev/engine-speed
timeout 95 python3 benchmarks/decode_profile.py --backends default --out $OUT/decode-variants.jsonl \
  --flex-variants '64;16;32:{"num_warps": 2};32:{"num_warps": 8};32:{"num_stages": 1};64:{"num_warps": 8}' > /dev/null
cat $OUT/decode-variants.jsonl

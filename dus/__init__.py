"""dus: depth up-scaling for Hugging Face decoder models.

import dus
dus.plan("mistralai/Mistral-7B-v0.1", overlap=8)
dus.build("mistralai/Mistral-7B-v0.1", "solar-base", preset="solar")
dus.verify("solar-base")
"""

import types as _types

import dus.plan as _plan_package  # the package alone: empty, so `import dus` stays light

__version__ = "0.1.0"


class _CallablePlanPackage(_types.ModuleType):
    """`dus.plan` names both the package dus/plan/ and the function dus.api.plan. Python sets the attribute
    `dus.plan` to the package whenever dus.plan.* is imported, so the package itself is made callable:
    `dus.plan(...)` works before and after any import, as the README shows."""

    def __call__(self, *args, **kwargs):
        from dus.api import plan

        return plan(*args, **kwargs)


_plan_package.__class__ = _CallablePlanPackage


def __getattr__(name):
    # Lazy, so `import dus` (and the CLI's start-up) stays light.
    if name in ("build", "verify", "upcycle"):
        import dus.api

        return getattr(dus.api, name)
    if name == "load_grown":
        from dus.grown import load_grown

        return load_grown
    raise AttributeError(f"module 'dus' has no attribute {name!r}")

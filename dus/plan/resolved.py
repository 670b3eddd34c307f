"""A plan bound to its opened sources: every output tensor and the output config.

dus.api.plan makes one; dus/write builds it; dus/verify re-derives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dus.checks.run import PendingChecks
from dus.plan.layout import TensorSpec, num_parameters, output_bytes
from dus.plan.model import Plan
from dus.plan.options import PlanOptions
from dus.read.source import Source


@dataclass
class ResolvedPlan:
    """A plan bound to its opened sources: every output tensor and the output config."""

    plan: Plan
    sources: dict[str, Source]
    tensors: list[TensorSpec]
    config: dict
    options: PlanOptions = field(default_factory=PlanOptions)
    index_dependent: list[str] = field(default_factory=list)  # differences accepted with allow_index_dependent
    checks: PendingChecks | None = field(default=None, repr=False)  # transformers' checks, until finished

    def finish_checks(self) -> None:
        """Wait for transformers' checks of the plan: raise its refusal, or keep what it accepted."""
        if self.checks is not None:
            self.index_dependent = self.checks.result()
            self.checks = None

    def cancel_checks(self) -> None:
        if self.checks is not None:
            self.checks.cancel()
            self.checks = None

    def raise_if_refused(self) -> None:
        if self.checks is not None:
            self.checks.raise_if_refused()

    @property
    def base(self) -> Source:
        return self.sources[self.plan.base]

    @property
    def num_parameters(self) -> int:
        return num_parameters(self.tensors)

    @property
    def output_bytes(self) -> int:
        return output_bytes(self.tensors)

    def to_json(self) -> dict:
        """The `dus plan --json` object."""
        return {
            "source": self.base.ref,
            "source_num_layers": self.base.num_layers,
            "num_layers": len(self.plan.layers),
            "layer_prefix": self.base.layer_prefix,
            "recipe": self.plan.recipe,
            "dtype": self.plan.dtype,
            "layers": self.plan.to_json()["layers"],
            "num_parameters": self.num_parameters,
            "source_num_parameters": sum(info.numel for info in self.base.tensors.values()),
            "output_bytes": self.output_bytes,
            "num_tensors": len(self.tensors),
            "config": self.config,
            **({"index_dependent": self.index_dependent} if self.index_dependent else {}),
            **({"moe": self.moe_summary()} if self.plan.moe else {}),
        }

    def moe_summary(self) -> dict:
        from dus.plan.upcycle import describe

        return describe(self.plan.moe, self.tensors, self.base.layer_prefix)

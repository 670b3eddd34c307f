"""The options of `dus upcycle` (dus/options.py makes them flags and --config keys)."""

from __future__ import annotations

from dataclasses import dataclass

from dus.options import option


@dataclass
class UpcycleOptions:
    source: str = option("", "Dense model directory or Hub id.", positional=True, required=True, metavar="SOURCE")
    output: str = option(
        "", "Output directory (must not exist unless --force).", positional=True, required=True, metavar="OUTPUT"
    )
    experts: int | None = option(None, "Experts per layer E (at least 2).", required=True)
    top_k: int = option(2, "Experts each token uses K (1..E).")
    init: str = option("copy", "copy | drop | split | noise: how the experts start (docs/upcycle.md).")
    seed: int = option(0, "Seed of the router and of drop/noise draws (recorded in dus_plan.json).")
    drop_ratio: float = option(0.5, "--init drop: share of each expert's intermediate neurons re-initialised.")
    noise_scale: float = option(0.01, "--init noise: noise std as a multiple of each dense matrix's std.")
    calibration: str | None = option(
        None, "--init split: group neurons that fire together on this text file (balanced k-means), not by position."
    )
    router_std: float | None = option(
        None, "Std of the seeded router weights [default: the config's initializer_range, else 0.02]."
    )
    dtype: str = option("auto", "auto | bfloat16 | float16 | float32 [auto: keep the source's].")
    shard_size: str = option("5GB", "Largest shard, e.g. 5GB, 500MB, 2GiB.")
    force: bool = option(False, "Replace OUTPUT if it exists.")
    verify: bool = option(False, "Run `dus verify` on the result.")

    def build_options(self) -> dict:
        """dus.api.build's keywords: the identity layer plan with the experts added."""
        return dict(
            experts=self.experts,
            top_k=self.top_k,
            expert_init=self.init,
            expert_seed=self.seed,
            drop_ratio=self.drop_ratio if self.init == "drop" else None,
            noise_scale=self.noise_scale if self.init == "noise" else None,
            router_std=self.router_std,
            calibration=self.calibration,
            dtype=self.dtype,
            shard_size=self.shard_size,
            force=self.force,
            verify=self.verify,
        )

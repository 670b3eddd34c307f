"""`dus upcycle`: a dense model's MLPs grown into a mixture of experts (dus/plan/upcycle.py)."""

from __future__ import annotations

from dus.cli import app
from dus.cli.options import options_command
from dus.plan.upcycle_options import UpcycleOptions


@options_command(app, "upcycle", UpcycleOptions)
def upcycle_command(opts: UpcycleOptions) -> None:
    """Upcycle a dense model into a mixture of experts: every layer's MLP becomes E experts and a router.

    Llama/Mistral -> Mixtral, Qwen2 -> Qwen2-MoE, Qwen3 -> Qwen3-MoE, OLMo-2 -> FlexOlmo, HunYuan -> HunYuan-MoE,
    written in the Hub's per-expert layout; a llama GGUF -> llama with experts. `--init copy` keeps the
    function exactly (docs/upcycle.md). The same options on `dus build` (--experts, --top-k,
    --expert-init) combine experts with a depth plan.
    """
    import dus.api
    from dus.cli.progress import byte_progress
    from dus.cli.surgery import verify_command

    build = opts.build_options()
    verify = build.pop("verify")
    with byte_progress("upcycling") as progress:
        record = dus.api.upcycle(opts.source, opts.output, progress=progress, **build)
    out = record["output"]
    active = f" ({out['active_parameters']:,} active)" if "active_parameters" in out else ""
    print(
        f"wrote {opts.output}: {out['num_layers']} layers x {opts.experts} experts (top-{opts.top_k}), "
        f"{out['num_parameters']:,} parameters{active}, {len(out['shards'])} file(s)"
    )
    if verify:
        verify_command(opts.output, None)

"""Which plans a scan scores: spaces of copy plans, and the budgeted search over the single-block space.

A plan is the tuple of source layers in output order. The single-block space
(the default) holds every `[0, j) + [i, n)` with 0 <= i < j <= n: n(n+1)/2 plans
that repeat block [i, j) once (i = 0, j = n: the whole stack twice). The `dus`
space holds SOLAR's `[0, n-m) + [m, n)` for each overlap m with 1 <= m <= n/2.
`--layers` lists plans in `dus build --layers` syntax.

Search under `--budget N`, when the single-block space has more than N plans
(coarse to fine): score the grid of (i, j) on a stride s (the smallest power of
two whose grid takes at most half the budget; j = n is always on it), then
halve the stride and score the unscored neighbours (i +- s, j +- s) of the best
quarter of the plans scored so far, until the stride is 1 and the best plans'
neighbours are all scored, or the budget is spent. It assumes what published
heat maps show: neighbouring blocks score alike.
"""

from __future__ import annotations

from collections.abc import Callable

from dus.errors import InputError
from dus.plan.recipes import parse_layer_spec

Plan = tuple[int, ...]


def single_block(i: int, j: int, n: int) -> Plan:
    """[0, j) + [i, n): block [i, j) repeated once."""
    return tuple(range(j)) + tuple(range(i, n))


def block_of(plan: Plan, n: int) -> tuple[int, int] | None:
    """(i, j) when `plan` is a single-block plan over n layers, else None."""
    j = prefix_length(plan)
    rest = plan[j:]
    if rest and rest == tuple(range(rest[0], n)) and rest[0] < j:
        return rest[0], j
    return None


def prefix_length(plan: Plan) -> int:
    """How many leading output layers are the base's own layers 0, 1, ...: what the prefix cache serves."""
    j = 0
    while j < len(plan) and plan[j] == j:
        j += 1
    return j


def layer_spec(plan: Plan) -> str:
    """(0..21, 8..29) -> '0:22,8:30', the `dus build --layers` syntax."""
    runs, start = [], 0
    for k in range(1, len(plan) + 1):
        if k == len(plan) or plan[k] != plan[k - 1] + 1:
            a, b = plan[start], plan[k - 1] + 1
            runs.append(f"{a}:{b}" if b - a > 1 else str(a))
            start = k
    return ",".join(runs)


def make_space(
    kind: str, n: int, layers: list[str], max_block: int | None = None, max_layers: int | None = None
) -> list[Plan]:
    """The plans of a space, in scan order, after the block-size and depth limits."""
    if layers:
        plans = [tuple(parse_layer_spec(spec, n)) for spec in layers]
    elif kind == "single":
        plans = [single_block(i, j, n) for i in range(n) for j in range(i + 1, n + 1)]
    elif kind == "dus":
        plans = [single_block(m, n - m, n) for m in range(1, n // 2 + 1)]
    else:
        raise InputError(f"unknown --space {kind!r}: use single or dus (or give --layers)")
    plans = [p for p in dict.fromkeys(plans) if _within(p, n, max_block, max_layers)]
    if not plans:
        raise InputError(
            "the plan space is empty" + (" after --max-block/--max-layers" if max_block or max_layers else "")
        )
    return plans


def _within(plan: Plan, n: int, max_block: int | None, max_layers: int | None) -> bool:
    if max_layers is not None and len(plan) > max_layers:
        return False
    return max_block is None or len(plan) - n <= max_block


def search(
    plans: list[Plan],
    n: int,
    budget: int | None,
    score: Callable[[list[Plan]], dict[Plan, float]],
    better: Callable[[float, float], bool],
) -> dict[Plan, float]:
    """Score every plan, or, over `budget`, search the single-block space coarse to fine; {plan: score}."""
    if budget is not None and budget < 1:
        raise InputError(f"--budget must be >= 1, got {budget}")
    if budget is None or len(plans) <= budget:
        return score(plans)
    blocks = {block_of(p, n): p for p in plans}
    if None in blocks:
        raise InputError(
            f"the plan space has {len(plans)} plans, over --budget {budget}; a budgeted search works on "
            "single-block spaces: raise --budget or list fewer --layers"
        )
    stride = 1
    while len(_grid(blocks, stride, n)) > max(1, budget // 2):
        stride *= 2
    scored = score(_grid(blocks, stride, n)[:budget])
    while len(scored) < budget:
        stride = max(1, stride // 2)
        ranked = sorted(scored, key=_rank_key(scored, better))
        best = ranked[: max(1, len(ranked) // 4)]
        todo = [
            blocks[b]
            for p in best
            for b in _neighbours(block_of(p, n), stride)
            if b in blocks and blocks[b] not in scored
        ]
        todo = list(dict.fromkeys(todo))[: budget - len(scored)]
        if not todo:
            if stride == 1:
                break
            continue
        scored.update(score(todo))
    return scored


def _grid(blocks: dict, stride: int, n: int) -> list[Plan]:
    return [plan for (i, j), plan in blocks.items() if i % stride == 0 and (j % stride == 0 or j == n)]


def _neighbours(block: tuple[int, int], step: int) -> list[tuple[int, int]]:
    i, j = block
    return [(i + di, j + dj) for di in (-step, 0, step) for dj in (-step, 0, step) if di or dj]


def _rank_key(scored: dict, better: Callable[[float, float], bool]):
    import functools

    def compare(a, b):
        return -1 if better(scored[a], scored[b]) else 1 if better(scored[b], scored[a]) else 0

    return functools.cmp_to_key(compare)

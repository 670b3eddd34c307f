"""Which options each recipe takes, and the plans that are refused before any layer is listed.

Options a recipe does not read are an error naming the recipe's own (`--overlap` with `--recipe stack`
would otherwise be ignored without a word), and a DUS overlap that does not grow the stack is refused:
SOLAR's 2(n - m) output layers exceed the source's n only while m < n/2.
"""

from __future__ import annotations

from dus.errors import InputError

# Each recipe's parameters and defaults (None: required).
RECIPE_PARAMS = {
    "dus": {"overlap": 8},
    "stack": {"factor": 2},
    "interleave": {"factor": 2},
    "idus": {"group": 8},
    "expand": {"new_layers": None},
    "layers": {"layers": None},
}
ALL_PARAMS = {key for params in RECIPE_PARAMS.values() for key in params}


def recipe_name(recipe: str | None, layers: object = None, insert_at: str | None = None) -> str:
    """The recipe the options ask for: `recipe` when given, expand where --insert-at places new layers
    (dus/plan/insert.py), an explicit `layers` stack, else SOLAR's dus."""
    if recipe:
        return recipe
    return "expand" if insert_at is not None else "layers" if layers is not None else "dus"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def check_recipe_options(recipe: str, given: dict, where: str = "") -> None:
    """`given`: the options the user chose (flags, API arguments or a recipe file's keys), None = not given."""
    if recipe not in RECIPE_PARAMS:
        return  # make_plan names the known recipes
    ignored = sorted(k for k in ALL_PARAMS - set(RECIPE_PARAMS[recipe]) if given.get(k) is not None)
    if ignored:
        own = ", ".join(_flag(k) for k in RECIPE_PARAMS[recipe])
        raise InputError(
            f"{where}{_flag(ignored[0])} is not an option of --recipe {recipe}, which would ignore it "
            f"(its options: {own})"
        )


def check_dus_grows(n: int, overlap: int) -> None:
    """DUS with overlap m gives 2(n - m) layers: the same depth at m = n/2, fewer beyond."""
    out = 2 * (n - overlap)
    if 0 <= overlap < n and out <= n:
        what = "the same depth" if out == n else f"fewer layers ({out})"
        largest = (n - 1) // 2
        raise InputError(
            f"--overlap {overlap} on a {n}-layer model gives {what}: DUS grows the stack only while "
            f"2(n - m) > n, so m <= {largest} here (--overlap {largest}: {2 * (n - largest)} layers); "
            f"for a deliberately same-depth or shallower stack give it with --layers"
        )

"""Where new layers go (`--insert-at`) and how they start (`--init`): the expand family's layer map.

An insertion point p puts a new layer right after source layer p. Initialisers:
- copy: a copy of layer p (not function-preserving);
- zero-out: a copy of layer p with its residual-output projections zeroed (LLaMA-Pro): an identity block;
- aligned-average: layers p and p+1 aligned neuron to neuron (Sinkhorn optimal transport), averaged,
  residual-output projections zeroed (OpT-DeUS): an identity block;
- predicted: each tensor predicted from layers p and p+1 by a map fitted over the stack in an SVD basis
  (LESA), residual-output projections zeroed: an identity block.
The last two need a layer after p: inserting after the last layer is refused for them.
For plans that repeat layers (dus, stack, interleave, idus, layers), copy and zero-out apply to each
repeat (every occurrence of a source layer after its first), which the plan then marks new.
"""

from __future__ import annotations

from dus.errors import InputError
from dus.plan.model import Edit, LayerRef, OutputLayer, copy_of

INITS = ("copy", "zero-out", "aligned-average", "predicted")
NEIGHBOUR_INITS = ("aligned-average", "predicted")
SINKHORN = {"iterations": 200, "epsilon": 0.05}  # recorded in the plan: verify recomputes with the same
PREDICTOR = {"rank": 8, "ridge": 1e-3}


def check_init(init: str | None) -> str | None:
    if init is not None and init not in INITS:
        raise InputError(f"--init must be one of {', '.join(INITS)}, not {init!r}")
    return init


def insertion_points(n: int, insert_at: str | None, new_layers: int | None) -> list[int]:
    """Source layers after which a new layer goes, ascending."""
    if insert_at is None:
        if new_layers is None:
            raise InputError("--recipe expand needs --new-layers K or --insert-at")
        if new_layers < 1 or n % new_layers:
            raise InputError(f"--new-layers {new_layers} must divide the {n} layers evenly")
        return _every(n, n // new_layers)
    spec = insert_at.replace(" ", "")
    if spec == "top-half":
        gaps = list(range(n // 2, n - 1))  # between two layers of the upper half
        if new_layers is None:
            raise InputError("--insert-at top-half needs --new-layers K")
        if not 1 <= new_layers <= len(gaps):
            raise InputError(
                f"--insert-at top-half has {len(gaps)} places between the upper {n - n // 2} layers; "
                f"--new-layers {new_layers} must be 1..{len(gaps)}"
            )
        return [gaps[j * len(gaps) // new_layers] for j in range(new_layers)]
    if spec.startswith("every:"):
        every = _int(spec[len("every:") :], insert_at)
        if not 1 <= every <= n:
            raise InputError(f"--insert-at every:K needs 1 <= K <= {n}, got {every}")
        points = _every(n, every)
    else:
        points = [_int(part, insert_at) for part in spec.split(",")]
        bad = [p for p in points if not 0 <= p < n]
        if bad:
            raise InputError(f"--insert-at {bad[0]} is out of range: new layers go after source layers 0..{n - 1}")
        if len(set(points)) != len(points):
            raise InputError(f"--insert-at {insert_at} names a layer twice")
        points = sorted(points)
    if new_layers is not None and new_layers != len(points):
        raise InputError(f"--insert-at {insert_at} inserts {len(points)} layers, but --new-layers says {new_layers}")
    return points


def _every(n: int, every: int) -> list[int]:
    return list(range(every - 1, n, every))


def _int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"cannot parse --insert-at {spec!r}: use top-half, every:K or I,J,…") from None


def expand(n: int, points: list[int], init: str, residual_modules: tuple[str, ...]) -> list[OutputLayer]:
    """The source layers in order, with a new layer after each insertion point."""
    if init in NEIGHBOUR_INITS:
        if n < 3 and init == "predicted":
            raise InputError("--init predicted fits its map over layer triples: the source needs at least 3 layers")
        edge = [p for p in points if p == n - 1]
        if edge:
            raise InputError(
                f"--init {init} builds a new layer from the layers before and after it, and a layer "
                f"inserted after the last layer ({n - 1}) has no layer after it: choose --insert-at "
                "top-half or insertion points below the top"
            )
    zero = Edit("zero", tuple(residual_modules))
    layers: list[OutputLayer] = []
    for i in range(n):
        layers.append(copy_of(i))
        if i in points:
            layers.append(_new_layer(i, init, zero))
    return layers


def _new_layer(p: int, init: str, zero: Edit) -> OutputLayer:
    if init == "copy":
        return OutputLayer((LayerRef(p),), (), new=True)
    if init == "zero-out":
        return OutputLayer((LayerRef(p),), (zero,), new=True)
    # computed from both neighbours (dus/plan/init_tensors.py); recorded as their blend with the projections zeroed
    return OutputLayer((LayerRef(p, weight=0.5), LayerRef(p + 1, weight=0.5)), (zero,), new=True)


def mark_repeats(layers: list[OutputLayer], init: str, residual_modules: tuple[str, ...]) -> list[OutputLayer]:
    """copy / zero-out on a plan that repeats layers: every later occurrence of a source layer is new."""
    if init in NEIGHBOUR_INITS:
        raise InputError(
            f"--init {init} initialises a layer inserted between two source layers: use it with "
            "--recipe expand (--new-layers K or --insert-at)"
        )
    seen, out = set(), []
    for layer in layers:
        key = (layer.source, layer.source_layer)
        if key in seen and len(layer.inputs) == 1 and not layer.edits:
            edits = (Edit("zero", tuple(residual_modules)),) if init == "zero-out" else ()
            layer = OutputLayer(layer.inputs, edits, new=True)
        seen.add(key)
        out.append(layer)
    return out


def init_record(init: str, layers: list[OutputLayer]) -> dict:
    """What dus_plan.json records of a computed initialiser: which output layers, and its settings."""
    if init not in NEIGHBOUR_INITS:
        return {"name": init}
    inserted = [i for i, layer in enumerate(layers) if layer.new and len(layer.inputs) == 2]
    settings = {"sinkhorn": SINKHORN} if init == "aligned-average" else {"predictor": PREDICTOR}
    return {"name": init, "layers": inserted, **{k: dict(v) for k, v in settings.items()}}

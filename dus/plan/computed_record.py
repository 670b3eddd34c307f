"""Each computed tensor's recipe, as dus_plan.json records it: operator, input tensors (source:name)
and parameters (factors, seeds, solver iterations). `dus verify` derives the same list from the plan
and refuses a record that differs; it then recomputes every such tensor and compares its bytes."""

from __future__ import annotations

import json

from dus.plan.layout import TensorSpec


def computed_record(tensors: list[TensorSpec], sources: dict) -> dict:
    names = {info: f"{source}:{name}" for source, s in sources.items() for name, info in s.tensors.items()}
    record = {
        spec.name: {
            "op": spec.computed.op,
            "inputs": [names.get(info, info.path) for info in spec.computed.inputs],
            "params": dict(spec.computed.params),
        }
        for spec in tensors
        if spec.computed is not None
    }
    return json.loads(json.dumps(record))  # tuples as lists: the form the file holds

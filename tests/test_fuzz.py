"""Seeded fuzzing of the readers of untrusted files.

Thousands of mutations of a tiny safetensors file and of a config.json (byte
flips, truncations, header-length lies, dtype/shape/offset edits, and JSON-level
edits: repeated keys, NaN, huge numbers, deep nesting, wrong types, lone
surrogates) must each end either in success on input that the safetensors library
(serde_json) also accepts, with the same tensors, or in one clean InputError line:
never another exception, never a hang. Repeated keys are the one deliberate
difference: the library keeps the last, dus refuses them.
"""

import copy
import json
import random
import shutil
import signal
import struct
from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors import deserialize

import dus.api
from dus.errors import InputError
from dus.read import strict_json
from dus.read.safetensors import DTYPE_BITS, read_header

HEADER_CASES, CONFIG_CASES, PLAN_CASES = 3000, 1000, 300  # plan cases per file mutated
SECONDS_PER_CASE = 10  # a hang guard on a slow shared machine, not a speed requirement


class Obj(list):
    """A JSON object as a list of (key, value) pairs, so keys can repeat."""


class Raw(str):
    """JSON text written as is: NaN, 1e400, lone surrogate escapes, deep nesting."""


def dump(value) -> str:
    if isinstance(value, Raw):
        return value
    if isinstance(value, Obj):
        return "{" + ",".join(f"{dump(k) if isinstance(k, Raw) else json.dumps(k)}:{dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def nesting(rng) -> Raw:
    # Depths near serde_json's limit of 127 are pinned in test_safetensors_strict.py;
    # here they stay clear of it, so the depth of where they land does not matter.
    opens = rng.choices(("[", '{"k":'), k=rng.choice((5, 60, 200, 500, 3000)))
    return Raw("".join(opens) + "0" + "".join("]" if o == "[" else "}" for o in reversed(opens)))


# Values from the classes a hostile or broken writer produces.
WEIRD = [
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1e400"),
    Raw("-1e400"),
    Raw("1e-400"),
    Raw("-0"),
    Raw("-0.0"),
    Raw("1.0"),
    Raw("1e0"),
    2**64 - 1,
    2**64,
    2**63,
    -1,
    0,
    1,
    4,
    True,
    None,
    "x",
    "",
    "F32",
    [],
    Obj(),
    [1, 2],
    [0, 4],
    [0, 4, 4],
    Obj([("F32", None)]),
    Obj([("k", "v")]),
    Raw('"\\ud800"'),
    Raw('"a\\udc00"'),
    Raw('"\\ud83d\\ude00"'),
    Raw('"\\u0000"'),
]


def weird(rng):
    kind = rng.randrange(len(WEIRD) + 2)
    if kind == len(WEIRD):
        return nesting(rng)
    if kind > len(WEIRD):
        return Raw(rng.choice(("", "-")) + "9" * rng.choice((19, 20, 300, 308, 309, 310, 400, 5000)))
    return copy.deepcopy(WEIRD[kind])  # later edits may change it in place


def containers(tree) -> list:
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(v for v in (node if not isinstance(node, Obj) else [v for _, v in node]) if isinstance(v, list))
    return found


def mutate_tree(rng, tree, keys):
    """One JSON-level edit somewhere in `tree`."""
    node = rng.choice(containers(tree))
    objects = [c for c in containers(tree) if isinstance(c, Obj) and c]
    edit = rng.randrange(6)
    if edit == 0 and objects:  # repeat a key, same or other value
        obj = rng.choice(objects)
        key, value = rng.choice(obj)
        obj.insert(rng.randrange(len(obj) + 1), (key, rng.choice((value, weird(rng)))))
    elif edit == 1 and node:  # a value of another kind
        i = rng.randrange(len(node))
        node[i] = (node[i][0], weird(rng)) if isinstance(node, Obj) else weird(rng)
    elif edit == 2 and isinstance(node, Obj):  # an extra field
        node.insert(rng.randrange(len(node) + 1), (rng.choice(keys), weird(rng)))
    elif edit == 3 and node:
        del node[rng.randrange(len(node))]
    elif edit == 4 and objects:  # a key renamed
        obj = rng.choice(objects)
        i = rng.randrange(len(obj))
        obj[i] = (rng.choice(keys), obj[i][1])
    else:
        rng.shuffle(node)


def mutate_bytes(rng, blob: bytes, start: int) -> bytes:
    """One byte-level edit, mostly at or after `start` (the JSON text)."""
    blob, start = bytearray(blob), min(start, len(blob))
    at = rng.randrange(start, len(blob) + 1) if rng.random() < 0.9 else rng.randrange(len(blob) + 1)
    edit = rng.randrange(5)
    if edit == 0 and at < len(blob):
        blob[at] ^= 1 << rng.randrange(8)
    elif edit == 1:
        del blob[at:]
    elif edit == 2:
        blob[at:at] = rng.choice(
            (b"\xff", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00", b" ", b"}", b"{", b'"', b",", b"\\")
        )
    elif edit == 3:
        del blob[at : at + rng.randrange(1, 4)]
    else:
        blob += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    return bytes(blob)


# A tiny valid file: four tensors and metadata.
TENSOR_KEYS = [
    "x",
    "dtype",
    "shape",
    "data_offsets",
    "__metadata__",
    "w.weight",
    "",
    Raw('"\\ud800"'),
    Raw('"\\u0064type"'),
]
DTYPES = [*DTYPE_BITS, "F13", "f32", "", "float32"]


def tiny_header():
    return Obj(
        [
            ("__metadata__", Obj([("format", "pt")])),
            ("w.weight", Obj([("dtype", "F32"), ("shape", [2, 3]), ("data_offsets", [0, 24])])),
            ("b", Obj([("dtype", "BF16"), ("shape", [4]), ("data_offsets", [24, 32])])),
            ("e", Obj([("dtype", "U8"), ("shape", [0]), ("data_offsets", [32, 32])])),
            ("i", Obj([("dtype", "I64"), ("shape", [1]), ("data_offsets", [32, 40])])),
        ]
    )


def mutate_tensor(rng, header):
    """An edit of one tensor's dtype, shape or offsets; some keep the file valid."""
    entries = [v for k, v in header if k != "__metadata__" and isinstance(v, Obj)]
    if not entries:
        return
    entry = rng.choice(entries)
    fields = dict(entry)
    edit = rng.randrange(5)
    if edit == 0:
        fields["dtype"] = rng.choice(DTYPES)
    elif edit == 1 and isinstance(fields.get("shape"), list):
        shape = list(fields["shape"])
        choice = rng.randrange(3)
        if choice == 0 and shape:
            shape[rng.randrange(len(shape))] = rng.choice((0, 1, 2, 3, 6, 8, 12, 2**32, 2**62, 2**64 - 1))
        elif choice == 1:
            shape.insert(rng.randrange(len(shape) + 1), rng.choice((0, 1, 2, 2**33)))
        else:
            shape = shape[::-1] if rng.random() < 0.5 else [rng.choice((6, 3, 24, 48))]
        fields["shape"] = shape
    elif edit == 2 and isinstance(fields.get("data_offsets"), list) and fields["data_offsets"]:
        offsets = list(fields["data_offsets"])
        i = rng.randrange(len(offsets))
        moved = offsets[i] + rng.choice((-8, -4, -1, 1, 4, 8)) if type(offsets[i]) is int else 4
        offsets[i] = rng.choice((moved, 0, 40, 2**64 - 1, 2**64))
        fields["data_offsets"] = offsets
    elif edit == 3 and all(k in fields for k in ("dtype", "shape", "data_offsets")):
        # The list form serde also accepts; now and then one item too many.
        i = next(i for i, (_, v) in enumerate(header) if v is entry)
        header[i] = (
            header[i][0],
            [fields["dtype"], fields["shape"], fields["data_offsets"]] + [1] * (rng.random() < 0.2),
        )
        return
    else:
        header[:] = [
            (k, rng.choice((None, [], Obj(), "x", Obj([("k", 1)]), Obj([("k", "v"), ("k", "w")]))))
            if k == "__metadata__"
            else (k, v)
            for k, v in header
        ]
        return
    entry[:] = Obj(fields.items())


def mutate_header(rng, header):
    if rng.random() < 0.5:
        mutate_tensor(rng, header)
    else:
        mutate_tree(rng, header, TENSOR_KEYS)


def encode(header, data: bytes, rng) -> bytes:
    raw = dump(header).encode("utf-8")
    raw += b" " * ((-len(raw) % 8) if rng.random() < 0.5 else 0)
    return struct.pack("<Q", len(raw)) + raw + data


def header_case(seed: int) -> bytes:
    rng = random.Random(seed)
    header, data = tiny_header(), bytes(range(40))
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        mutate_header(rng, header)
    blob = encode(header, data, rng)
    if rng.random() < 0.4:
        for _ in range(rng.choice((1, 1, 2))):
            blob = mutate_bytes(rng, blob, 8)
    if rng.random() < 0.1:  # the length prefix lies
        n = struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else 0
        lie = rng.choice((n - 1, n + 1, n + 8, 0, len(blob), 100_000_001, 2**63, 2**64 - 1, rng.randrange(2**64)))
        blob = struct.pack("<Q", lie % 2**64) + blob[8:]
    return blob


@contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def library_tensors(blob: bytes):
    """{name: (dtype, shape, bytes)} as the safetensors library reads `blob`, or None if it refuses."""
    try:
        return {name: (t["dtype"], t["shape"], bytes(t["data"])) for name, t in deserialize(blob)}
    except Exception:
        return None


def assert_clean(message: str, prefix: str):
    assert message.startswith(prefix) and "\n" not in message, message
    assert "Error" not in message and "Traceback" not in message, message  # no exception class names


def overwrite(f, blob: bytes):
    """Replace the file's contents; far cheaper than creating it anew on a slow disk."""
    f.seek(0)
    f.write(blob)
    f.truncate()
    f.flush()


def check_header(blob: bytes, f):
    overwrite(f, blob)
    path = Path(f.name)
    with time_limit(SECONDS_PER_CASE):
        try:
            tensors, error = read_header(str(path))[0], None
        except InputError as e:
            tensors, error = None, str(e)
    library = library_tensors(blob)
    if error is None:
        assert library == {k: (t.dtype, list(t.shape), blob[t.start : t.end]) for k, t in tensors.items()}
    else:
        assert_clean(error, f"{path.name}: ")
        assert library is None or "twice" in error, f"the library accepts what dus refused: {error}"
    return error is None


def fuzz_headers(seeds: range, tmp_path):
    with open(tmp_path / "model.safetensors", "wb") as f:
        accepted = sum(check_header(header_case(seed), f) for seed in seeds)
    assert 0.05 * len(seeds) < accepted < 0.6 * len(seeds)  # both verdicts are exercised


def test_fuzz_safetensors_headers(tmp_path):
    fuzz_headers(range(HEADER_CASES), tmp_path)


@pytest.mark.slow
def test_fuzz_safetensors_headers_more(tmp_path):
    fuzz_headers(range(10**6, 10**6 + 20 * HEADER_CASES), tmp_path)


# config.json: serde_json is the reference, reached through the library by placing
# the JSON value in a header field it parses and ignores.
CONFIG_KEYS = ["vocab_size", "hidden_size", "model_type", "rope_scaling", "x", Raw('"\\udc00"')]
SLOT = '{"t":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":%s}}'
REFUSED = object()


class Repeated(ValueError):
    pass


def _no_repeats(pairs):
    if len({k for k, _ in pairs}) < len(pairs):
        raise Repeated
    return dict(pairs)


def serde_json_value(blob: bytes):
    """`blob` as serde_json reads it, with repeated keys refused too; REFUSED where it is no JSON."""
    try:  # the stdlib parses exactly one value here, so the slot cannot be broken out of
        value = json.loads(blob.decode("utf-8"), object_pairs_hook=_no_repeats)
    except (ValueError, RecursionError):
        return REFUSED
    raw = (SLOT % blob.decode("utf-8")).encode("utf-8")
    return REFUSED if library_tensors(struct.pack("<Q", len(raw)) + raw) is None else value


def config_case(seed: int, base: bytes) -> bytes:
    rng = random.Random(seed)
    tree = json.loads(base, object_pairs_hook=Obj)
    for _ in range(rng.choice((0, 1, 1, 2))):
        mutate_tree(rng, tree, CONFIG_KEYS)
    blob = dump(tree).encode("utf-8")
    if rng.random() < 0.4:
        blob = mutate_bytes(rng, blob, 0)
    return blob


def check_json(blob: bytes):
    """The loader read_config uses (read_config then validates the fields)."""
    with time_limit(SECONDS_PER_CASE):
        try:
            value, error = strict_json.loads(blob, "config.json"), None
        except InputError as e:
            value, error = None, str(e)
    reference = serde_json_value(blob)
    if error is None:
        assert reference is not REFUSED and value == reference
    else:
        assert_clean(error, "config.json: ")
        assert reference is REFUSED, f"serde_json reads what dus refused: {error}"
    return error is None


def test_fuzz_config_json(llama_source):
    base = (llama_source / "config.json").read_bytes()
    accepted = sum(check_json(config_case(seed, base)) for seed in range(CONFIG_CASES))
    assert 0.05 * CONFIG_CASES < accepted < 0.8 * CONFIG_CASES


def model_case(seed: int, raw: bytes) -> bytes:
    """A mutation of a real model's safetensors file."""
    rng = random.Random(seed)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n], object_pairs_hook=Obj)
    for _ in range(rng.choice((1, 1, 2))):
        mutate_header(rng, header)
    blob = encode(header, raw[8 + n :], rng)
    return mutate_bytes(rng, blob, 8) if rng.random() < 0.3 else blob


@pytest.mark.parametrize("target", ["model.safetensors", "config.json"])
def test_fuzz_plan(target, llama_source, tmp_path):
    """The plan (what `dus plan` runs) on mutated models: success where the library
    (serde_json) reads the file too, else an InputError."""
    mutate, readable = {
        "model.safetensors": (model_case, lambda blob: library_tensors(blob) is not None),
        "config.json": (config_case, lambda blob: isinstance(serde_json_value(blob), dict)),
    }[target]
    src = tmp_path / "src"
    shutil.copytree(llama_source, src)
    original = (llama_source / target).read_bytes()
    accepted = 0
    with open(src / target, "wb") as f:
        for seed in range(PLAN_CASES):
            blob = mutate(seed, original)
            overwrite(f, blob)
            with time_limit(SECONDS_PER_CASE):
                try:
                    dus.api.plan(str(src), overlap=1)
                except InputError as e:
                    assert_clean(str(e), "")
                    continue
            assert readable(blob)
            accepted += 1
    assert 0.05 * PLAN_CASES < accepted < 0.8 * PLAN_CASES

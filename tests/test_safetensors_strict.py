"""Headers and JSON files are accepted exactly when the safetensors library (serde_json)
accepts them, except repeated keys, which dus alone refuses; every refusal is one
InputError line naming the file and what is wrong, never a Python exception."""

import json
import shutil
import struct

import pytest
from models import save_model
from refusal import assert_refused
from safetensors import deserialize

from dus.errors import InputError
from dus.read import strict_json
from dus.read.safetensors import read_header
from dus.read.source import read_config

T = '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'  # a valid entry for 4 data bytes


def _extra(value: str) -> str:
    """A header whose tensor carries an extra field, which the library parses and ignores."""
    return '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":%s}}' % value


def _nest(depth: int) -> str:
    """A header nested `depth` levels deep (the header itself is level 1, its entry level 2)."""
    return _extra("[" * (depth - 2) + "]" * (depth - 2))


def _file(tmp_path, header: str, data: bytes = b"\0" * 4):
    raw = header.encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _library_accepts(path) -> bool:
    try:
        deserialize(path.read_bytes())
    except Exception:
        return False
    return True


# name: (header, what the error says, does the library accept it)
REFUSED = {
    "repeated __metadata__": (
        '{"__metadata__":{},"__metadata__":{"k":"v"},%s}' % T,
        "the key '__metadata__' twice",
        False,
    ),
    "repeated field": (
        '{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        "field a has the key 'dtype' twice",
        False,
    ),
    # The library keeps the last of repeated tensor names and metadata keys; two
    # readers could then see different tensors, so dus refuses them.
    "repeated tensor": ("{%s,%s}" % (T, T), "the key 'a' twice", True),
    "repeated metadata key": (
        '{"__metadata__":{"k":"1","k":"2"},%s}' % T,
        "field __metadata__ has the key 'k' twice",
        True,
    ),
    "__metadata__ []": ('{"__metadata__":[],%s}' % T, "__metadata__ must map strings to strings", False),
    "__metadata__ false": ('{"__metadata__":false,%s}' % T, "__metadata__ must map strings to strings", False),
    "metadata number": ('{"__metadata__":{"k":1},%s}' % T, "__metadata__ must map strings to strings", False),
    "NaN": (_extra("NaN"), "field a.x is NaN: JSON has no such value", False),
    "Infinity": (_extra("Infinity"), "is Infinity", False),
    "-Infinity": (_extra("[-Infinity]"), "field a.x[0] is -Infinity", False),
    "1e400": (_extra("1e400"), "field a.x is 1e400, out of the range of a 64-bit float", False),
    "400 digits": (_extra("9" * 400), "(400 characters), out of the range", False),
    "5000 digits": (_extra("9" * 5000), "(5000 characters), out of the range", False),  # was ValueError
    "128 deep": (_nest(128), "nested deeper than 127 levels", False),
    "500 deep": (_nest(500), "nested deeper than 127 levels", False),
    "5000 deep": (_nest(5000), "nested deeper than 127 levels", False),  # was RecursionError
    "lone surrogate name": (
        '{"\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        "lone UTF-16 surrogate",
        False,
    ),
    "lone surrogate value": (
        '{"__metadata__":{"k":"x\\udc00"},%s}' % T,
        "field __metadata__.k holds a lone UTF-16 surrogate",
        False,
    ),
    "dtype list": (
        '{"a":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}',
        "unknown dtype ['F32']",
        False,
    ),  # was TypeError
    "dtype map": ('{"a":{"dtype":{"F32":1},"shape":[1],"data_offsets":[0,4]}}', "unknown dtype {'F32': 1}", False),
    "dtype lower case": ('{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}', "unknown dtype 'f32'", False),
    "no shape": (
        '{"a":{"dtype":"F32","data_offsets":[0,4]}}',
        "needs an entry with dtype, shape and data_offsets",
        False,
    ),
    "entry list of 4": ('{"a":["F32",[1],[0,4],1]}', "needs an entry", False),
    "shape -0": ('{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,4]}}', "invalid shape [-0.0]", False),
    "shape 1.0": ('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', "invalid shape", False),
    "shape 2**64": (
        '{"a":{"dtype":"U8","shape":[18446744073709551616,0],"data_offsets":[0,0]}}',
        "invalid shape",
        False,
    ),
    "offsets 3 long": ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}', "invalid data_offsets", False),
    "offsets reversed": ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}', "invalid data_offsets", False),
    "overflow before a 0": (
        '{"a":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}',
        "overflows 64 bits",
        False,
    ),
    "bytes overflow": (
        '{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}',
        "overflows 64 bits",
        False,
    ),
    "half a byte": ('{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', "does not fill whole bytes", False),
    "trailing NUL": ("{%s}\0" % T, "invalid JSON", False),
    "top-level list": ("[%s]" % T.split(":", 1)[1], "not a JSON object", False),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refused_header(name, tmp_path):
    header, fragment, library_accepts = REFUSED[name]
    path = _file(tmp_path, header, b"" if "[0,0]" in header else b"\0" * 4)
    with pytest.raises(InputError) as e:
        read_header(str(path))
    message = str(e.value)
    assert message.startswith("m.safetensors: ") and fragment in message and "\n" not in message
    assert _library_accepts(path) == library_accepts


# name: (header, data): headers the library accepts, several of which dus used to refuse.
ACCEPTED = {
    "__metadata__ null": ('{"__metadata__":null,%s}' % T, b"\0" * 4),
    "F4 packs two to a byte": ('{"a":{"dtype":"F4","shape":[8],"data_offsets":[0,4]}}', b"\0" * 4),
    "F6 packs four in three bytes": ('{"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}', b"\0" * 3),
    "F8_E4M3FNUZ": ('{"a":{"dtype":"F8_E4M3FNUZ","shape":[4],"data_offsets":[0,4]}}', b"\0" * 4),
    "C64": ('{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}', b"\0" * 8),
    "entry as a list": ('{"a":["F32",[1],[0,4]]}', b"\0" * 4),
    "dtype as a unit variant": ('{"a":{"dtype":{"F32":null},"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "extra fields": (_extra('{"y":[1,"z",null,1e-400,-12345678901234567890123]}'), b"\0" * 4),
    "309 digits": (_extra("9" * 308), b"\0" * 4),
    "127 deep": (_nest(127), b"\0" * 4),
    "0 before an overflow": ('{"a":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}', b""),
    "surrogate pair": ('{"\\ud83d\\ude00":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "whitespace around": (" \n\t{%s}\r " % T, b"\0" * 4),
    "empty": ("{}", b""),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_header(name, tmp_path):
    header, data = ACCEPTED[name]
    path = _file(tmp_path, header, data)
    assert _library_accepts(path)
    tensors, metadata = read_header(str(path))
    assert metadata == {}
    assert sum(info.nbytes for info in tensors.values()) == len(data)


def test_header_length_limit_is_the_library_s(tmp_path):
    path = tmp_path / "m.safetensors"
    with open(path, "wb") as f:  # sparse: 100 MB of header space, nothing written
        f.write(struct.pack("<Q", 100_000_001))
        f.truncate(8 + 100_000_001)
    with pytest.raises(InputError, match="over the safetensors limit of 100000000 bytes"):
        read_header(str(path))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"rope_theta": NaN}', "field rope_theta is NaN: JSON has no such value"),
        ('{"rope_scaling": {"factor": Infinity}}', "field rope_scaling.factor is Infinity"),
        ('{"vocab_size": 96, "vocab_size": 97}', "the top level has the key 'vocab_size' twice"),
        ('{"hidden_size": %s}' % ("1" * 5000), "out of the range of a 64-bit float"),
        ('{"x": %s}' % ("[" * 127 + "]" * 127), "nested deeper than 127 levels"),
        ('{"model_type": "\\ud800"}', "field model_type holds a lone UTF-16 surrogate"),
        ('{"a": 1,}', "invalid JSON"),
        (b'{"a": "\xff"}', "not UTF-8"),
    ],
)
def test_config_json_is_strict(text, fragment, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError) as e:
        read_config(path)
    assert str(e.value).startswith(f"{path}: ") and fragment in str(e.value)


def test_json_depth_limit_is_serde_s():
    deepest = "[" * 126 + "]" * 126
    assert strict_json.loads(b'{"x": %s}' % deepest.encode(), "config.json") == {"x": json.loads(deepest)}  # 127 levels


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("strict")
    save_model("llama", root / "src", max_shard_size="100KB")
    return root / "src"


def _rewrite_json(path, edit):
    path.write_text(edit(path.read_text()))


@pytest.mark.parametrize(
    "target, edit, fragment",
    [
        ("config.json", lambda t: t.replace('"vocab_size"', '"vocab_size": NaN, "x"'), "field vocab_size is NaN"),
        (
            "config.json",
            lambda t: t.replace('"vocab_size"', '"vocab_size": 1, "vocab_size"'),
            "has the key 'vocab_size' twice",
        ),
        (
            "model.safetensors.index.json",
            lambda t: t.replace('"weight_map": {', '"weight_map": {"lm_head.weight": "x", '),
            "field weight_map has the key 'lm_head.weight' twice",
        ),
    ],
)
def test_plan_refuses_bad_json_in_one_line(target, edit, fragment, pristine, tmp_path, run_dus):
    src = tmp_path / "src"
    shutil.copytree(pristine, src)
    _rewrite_json(src / target, edit)
    code, out, err = run_dus("plan", src, "--overlap", "1")
    assert_refused(code, err, fragment)


def test_plan_refuses_repeated_metadata_in_a_shard(pristine, tmp_path, run_dus):
    src = tmp_path / "src"
    shutil.copytree(pristine, src)
    shard = sorted(src.glob("*.safetensors"))[0]
    raw = shard.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8 : 8 + n].replace(b'{"__metadata__":', b'{"__metadata__":{},"__metadata__":', 1)
    assert header != raw[8 : 8 + n]
    shard.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + n :])
    code, out, err = run_dus("plan", src, "--overlap", "1")
    assert_refused(code, err, "has the key '__metadata__' twice")


def test_error_lines_stay_short(tmp_path):
    name, shape = "n" * 1_000_000, [7] * 100_000
    path = _file(tmp_path, json.dumps({name: {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}))
    with pytest.raises(InputError) as e:
        read_header(str(path))
    assert "(1000002 characters)" in str(e.value) and len(str(e.value)) < 400


def test_a_malformed_index_is_refused_under_python_O(tmp_path):
    """The index checks are real checks, not asserts: `python -O` (which drops asserts) still refuses."""
    import subprocess
    import sys

    cases = {
        "a-list": [],
        "no-weight-map": {"metadata": {}},
        "map-is-a-list": {"weight_map": ["a.safetensors"]},
        "file-not-a-string": {"weight_map": {"lm_head.weight": 3}},
    }
    for name, index in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors.index.json").write_text(json.dumps(index))
    script = (
        "import sys\nfrom pathlib import Path\nfrom dus.errors import InputError\n"
        "from dus.read.source import local_tensors\n"
        "for d in sys.argv[1:]:\n"
        "    try:\n        local_tensors(Path(d))\n    except InputError as e:\n"
        "        print('refused', 'not a valid safetensors index' in str(e))\n"
    )
    result = subprocess.run(
        [sys.executable, "-O", "-c", script, *(str(tmp_path / n) for n in cases)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == ["refused True"] * len(cases)

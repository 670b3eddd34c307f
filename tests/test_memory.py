"""Memory does not grow with the model: building a few-hundred-MB checkpoint keeps
the build process's peak RSS far below the checkpoint size (no timings asserted)."""

import json
import os
import subprocess
import sys

from dus.testing.synthetic import write_synthetic

CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 1024,
    "intermediate_size": 3584,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}

MEASURE = """
import json, sys
import dus.api
dus.api.build(sys.argv[1], sys.argv[2], overlap=4, shard_size="100MB")
# VmHWM, not ru_maxrss: ru_maxrss keeps the forking parent's high-water mark across exec.
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"peak_rss": int(hwm.split()[1]) * 1024, "torch_imported": "torch" in sys.modules}))
"""


def test_build_memory_is_constant(tmp_path):
    size = write_synthetic(tmp_path / "src", CONFIG, "bfloat16", shard_bytes=120 * 10**6)
    assert size > 350 * 10**6
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path / "src"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    written = sum(p.stat().st_size for p in (tmp_path / "out").glob("*.safetensors"))
    assert written > 500 * 10**6
    assert not measured["torch_imported"], "the copy path must not deserialize with torch"
    assert measured["peak_rss"] < min(150 * 2**20, written / 4), measured


CHILDREN = """
import json, resource, sys
import dus.api
dus.api.build(sys.argv[1], sys.argv[2], overlap=1, force=True)
print(json.dumps({"children_peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def test_a_planned_build_or_a_rebuild_starts_no_child(llama_source, tmp_path):
    """A first build checks its plan with transformers in a child process (~390 MiB, torch); the
    answer is remembered, so a rebuild, or a build after `dus plan`, starts no child at all."""

    def build(cache: str):
        env = {**os.environ, "DUS_CHECK_CACHE": str(tmp_path / cache)}
        result = subprocess.run(
            [sys.executable, "-c", CHILDREN, str(llama_source), str(tmp_path / "out")],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    first, second = build("a"), build("a")
    assert first["children_peak_rss"] > 100 * 2**20, first  # the checker imported torch
    assert second == {"children_peak_rss": 0, "torch_imported": False}, second
    assert len(list((tmp_path / "a").glob("*.json"))) == 1

    subprocess.run(
        [sys.executable, "-m", "dus", "plan", str(llama_source), "--overlap", "1"],
        check=True,
        capture_output=True,
        env={**os.environ, "DUS_CHECK_CACHE": str(tmp_path / "b")},
    )
    assert build("b") == {"children_peak_rss": 0, "torch_imported": False}

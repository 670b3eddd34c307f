"""Named recipes that reproduce published models.

`solar`: SOLAR-10.7B-v1.0 from Mistral-7B-v0.1 (arXiv 2312.15166): DUS with
overlap 8, published as a Llama-architecture model with a 4096-token context,
no sliding window, float16. configs/solar-10.7b.yaml is the same recipe as a file.
"""

PRESETS = {
    "solar": {
        "recipe": "dus",
        "overlap": 8,
        "dtype": "float16",
        "config_overrides": {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "sliding_window": None,
            "max_position_embeddings": 4096,
        },
    },
}

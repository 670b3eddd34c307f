"""The names of the config fields dus understands, in one place: every module that reads a config imports them.

What each kind of field is, and so how a plan remaps it (dus/plan/config.py)
and what value it must hold (dus/checks/config_check.py):

    LAYER_COUNT_KEYS   the stack's layer count, first found wins
    EXTRA_COUNT_KEYS   fields that count the layers too (follow the count)
    PER_LAYER_KEYS     lists with one entry per layer (reindexed)
    PER_LAYER_STRING_KEYS  strings with one character per layer (reindexed)
    INDEX_LIST_KEYS    lists of layer indices (rebuilt); INDEX_LIST_SUFFIXES names more of them
    LAYER_MAP_KEYS     maps keyed by layer index (rebuilt)
    LAYER_FORMULAS     formulas that say which layers are special (solved anew, or refused);
                       PERIODS, OFFSETS, COUNTS, LAST_INDEXES are their parameters by kind
    SIZE_KEYS, DTYPE_KEYS, POSITION_KEYS   tensor sizes, the dtype, the context length
"""

from __future__ import annotations

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# Fields that count the stack's layers besides the layer-count key (xLSTM: num_blocks).
EXTRA_COUNT_KEYS = (*LAYER_COUNT_KEYS, "num_blocks")
PER_LAYER_KEYS = {
    "layer_types",
    "mlp_layer_types",
    "no_rope_layers",
    "attention_types_per_layer",
    "block_types",
    "layers_block_type",
    "intermediate_size",
    "num_key_value_heads",
    "num_attention_heads",
    "num_query_heads",
    "num_kv_heads",
    "ffn_multipliers",
    "head_dim",
    "sliding_window",
    "activation_sparsity_pattern",  # Gemma-3n: one target sparsity per layer
    "indexer_types",  # GLM-5 / DeepSeek sparse attention: each layer's token indexer (full or shared)
}
# Per-layer strings, one character a layer (Nemotron-H: "M-M*-": Mamba, MLP, attention).
PER_LAYER_STRING_KEYS = {"hybrid_override_pattern"}
INDEX_LIST_KEYS = {
    "mlp_only_layers",
    "full_attn_idxs",
    "moe_layers",
    "attn_layer_indices",
    "global_attn_layers",
    "sliding_window_layers",
    "linear_attn_layers",
    "swa_layers",
    "no_rope_layer_idxs",
    "full_attention_layers",
}
INDEX_LIST_SUFFIXES = ("_layers", "_idxs", "_indices", "_layer_ids")  # other lists of ints so named are indices too
# Maps keyed by layer index ("5", "05" or 5 -> settings of that layer).
LAYER_MAP_KEYS = {"per_layer_config"}
# Formulas that say which layers are special: name -> (keys needed, predicate(i, config)).
LAYER_FORMULAS = {
    "attn_layer_period/attn_layer_offset": (
        ("attn_layer_period", "attn_layer_offset"),
        lambda i, c: i % c["attn_layer_period"] == c["attn_layer_offset"],
    ),
    "expert_layer_period/expert_layer_offset": (
        ("expert_layer_period", "expert_layer_offset"),
        lambda i, c: i % c["expert_layer_period"] == c["expert_layer_offset"],
    ),
    "decoder_sparse_step": (("decoder_sparse_step",), lambda i, c: (i + 1) % max(c["decoder_sparse_step"], 1) == 0),
    "first_k_dense_replace": (("first_k_dense_replace",), lambda i, c: i >= c["first_k_dense_replace"]),
    "moe_layer_freq": (("moe_layer_freq",), lambda i, c: i % max(c["moe_layer_freq"], 1) == 0),
    "num_dense_layers": (("num_dense_layers",), lambda i, c: i >= c["num_dense_layers"]),
    "moe_layer_start_index/moe_layer_end_index/moe_layer_interval": (
        ("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval"),
        lambda i, c: (
            (i + 1) % max(c["moe_layer_interval"], 1) == 0
            and c["moe_layer_start_index"] <= i
            and (c["moe_layer_end_index"] < 0 or i <= c["moe_layer_end_index"])
        ),
    ),
}

# The formulas' parameters by kind, told by their names: a period (or step, frequency, interval) is a positive
# integer, an offset lies below its period, an end index may be -1 (up to the last layer), the rest count layers.
_PARAMETERS = tuple(dict.fromkeys(key for keys, _ in LAYER_FORMULAS.values() for key in keys))
_PERIOD_SUFFIXES = ("_period", "_step", "_freq", "_interval")
PERIODS = (*(k for k in _PARAMETERS if k.endswith(_PERIOD_SUFFIXES)), "sliding_window_pattern")  # Gemma's too
OFFSETS = {k: k.removesuffix("_offset") + "_period" for k in _PARAMETERS if k.endswith("_offset")}
LAST_INDEXES = tuple(k for k in _PARAMETERS if k.endswith("_end_index"))
COUNTS = (*(k for k in _PARAMETERS if k not in (*PERIODS, *OFFSETS, *LAST_INDEXES)), "max_window_layers")

# Sizes that shape tensors (transformers' standard names; a config class may alias them).
SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
)
DTYPE_KEYS = ("dtype", "torch_dtype")
# The longest sequence a model takes, first found wins.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")

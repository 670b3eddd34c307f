"""The ground floor: services every layer above uses, importing nothing of dus but `dus.errors`.

digest   the digests a build records and `dus verify` checks (BLAKE3, SHA-256), the shard hasher
publish  atomic publication: the output lock, staging directories, the swap, one `atomic_write_text`
gguf_format  the GGUF container's constants, value types and metadata encoding
vocabulary   the names of the config fields dus understands
"""

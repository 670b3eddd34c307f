"""The ground floor: services every layer above uses, importing nothing of dus but `dus.errors`.

digest   the digests a build records and `dus verify` checks (BLAKE3, SHA-256), the shard hasher
publish  atomic publication: the output lock, staging directories, the swap, one `atomic_write_text`
vocabulary   the names of the config fields dus understands
"""

"""Exact, or refused: every check that stands between a plan and the bytes it writes.

config_check        each config's fields hold what their kind needs (dus/core/vocabulary.py), at open
transformers_check  transformers builds each config, and its checkpoint covers every weight
equivalence         every output layer is built exactly as its source layer
cache               accepted answers, remembered per request and code
run                 the entry point: `start_checks` runs the last three for a plan (in a child process
                    where torch is not loaded), beside the copy, and says what was accepted
"""

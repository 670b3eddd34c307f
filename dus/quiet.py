"""Quiet libraries: no progress bars, no known deprecation chatter, unless --verbose.

Every command that loads models or data calls `quiet(verbose)` first, so SFT,
DPO, eval and the rest print clean lines like plan/build/pretrain. What goes:
progress bars of datasets, transformers and huggingface_hub (`\\r` noise in a
log file); the Trainer's tqdm bar (its log lines are printed instead);
transformers' FutureWarnings for the `gradient_checkpointing_*` aliases that
TRL still calls; lm-eval's INFO/WARNING lines ("Overwriting default
num_fewshot"), its own tqdm bars, and the `fatal: not a git repository` its
`git describe` prints.
Errors still show.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Deprecated aliases TRL calls on every run; nothing a user can act on.
KNOWN_WARNINGS = (
    r"`gradient_checkpointing_enable` is deprecated",
    r"`gradient_checkpointing_disable` is deprecated",
    r"`is_gradient_checkpointing` is deprecated",
)
# Loggers turned down to errors; training_args decides the Trainer's tqdm bar from its level.
QUIET_LOGGERS = ("lm_eval", "transformers.training_args")

_verbose = True  # nothing silenced until a command asks


def quiet(verbose: bool = False) -> None:
    global _verbose
    _verbose = verbose
    if verbose:
        return
    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    _no_progress_bars()


def _no_progress_bars() -> None:
    """datasets reads HF_DATASETS_DISABLE_PROGRESS_BARS on import; once imported, only its switch works."""
    import huggingface_hub.utils
    import transformers

    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def quiet_lm_eval() -> None:
    """lm-eval draws tqdm bars it has no switch for, and runs `git describe`, which complains outside a repository."""
    if _verbose:
        return
    import subprocess

    import lm_eval.evaluator
    import tqdm

    def git_hash_quietly():
        try:
            out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
        except OSError:
            return None
        return out.stdout.strip() or None

    for name, module in list(sys.modules.items()):
        if name.startswith("lm_eval") and getattr(module, "tqdm", None) is tqdm.tqdm:
            module.tqdm = _hidden_bar
    lm_eval.evaluator.get_git_commit_hash = git_hash_quietly


def _hidden_bar(*args, **kwargs):
    import tqdm

    kwargs["disable"] = True
    return tqdm.tqdm(*args, **kwargs)


def quiet_tqdm(module) -> None:
    """A library module that draws its own tqdm bars with no switch (transformers' GGUF de-quantizer)."""
    if not _verbose:
        module.tqdm = _hidden_bar

"""Quiet libraries: no progress bars, no known deprecation chatter, unless --verbose.

Every command that loads models or data runs inside `with quiet(verbose):`, so
SFT, DPO, eval and the rest print clean lines like plan/build/pretrain. What goes:
progress bars of datasets, transformers and huggingface_hub (`\\r` noise in a
log file); the Trainer's tqdm bar (its log lines are printed instead);
transformers' FutureWarnings for the `gradient_checkpointing_*` aliases that
TRL still calls; lm-eval's INFO/WARNING lines ("Overwriting default
num_fewshot"), its own tqdm bars, and the `fatal: not a git repository` its
`git describe` prints.
Errors still show. Everything is put back when the block ends (warning filters,
logger levels, progress bars, lm-eval's patched names), so a later command or
test in the same process sees the libraries as they were.
"""

from __future__ import annotations

import contextlib
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

_verbose = True  # nothing silenced outside a quiet() block
_undo: contextlib.ExitStack | None = None  # what the current quiet() block puts back


@contextlib.contextmanager
def quiet(verbose: bool = False):
    """Silence the known chatter for the block (nothing with `verbose`), and put everything back after it."""
    global _verbose, _undo
    with contextlib.ExitStack() as undo:
        undo.callback(_restore, _verbose, _undo)
        _verbose, _undo = verbose, undo
        if not verbose:
            undo.enter_context(warnings.catch_warnings())  # the filters as they were, on the way out
            for message in KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=FutureWarning)
            for name in QUIET_LOGGERS:
                logger = logging.getLogger(name)
                undo.callback(logger.setLevel, logger.level)
                logger.setLevel(logging.ERROR)
            _no_progress_bars(undo)
        yield


def _restore(verbose: bool, undo: contextlib.ExitStack | None) -> None:
    global _verbose, _undo
    _verbose, _undo = verbose, undo


def _no_progress_bars(undo: contextlib.ExitStack) -> None:
    """datasets reads HF_DATASETS_DISABLE_PROGRESS_BARS on import; once imported, only its switch works."""
    import huggingface_hub.utils
    import transformers

    if not huggingface_hub.utils.are_progress_bars_disabled():
        huggingface_hub.utils.disable_progress_bars()
        undo.callback(huggingface_hub.utils.enable_progress_bars)
    if transformers.utils.logging.is_progress_bar_enabled():
        transformers.utils.logging.disable_progress_bar()
        undo.callback(transformers.utils.logging.enable_progress_bar)
    if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        undo.callback(os.environ.pop, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    datasets = sys.modules.get("datasets")
    if datasets is not None and datasets.is_progress_bar_enabled():
        datasets.disable_progress_bars()
        undo.callback(datasets.enable_progress_bars)


def quiet_lm_eval() -> None:
    """lm-eval draws tqdm bars it has no switch for, and runs `git describe`, which complains outside a repository.
    Within a quiet() block only; its end puts lm-eval's names back."""
    if _verbose or _undo is None:
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
            _patch(module, "tqdm", _hidden_bar)
    _patch(lm_eval.evaluator, "get_git_commit_hash", git_hash_quietly)


def _hidden_bar(*args, **kwargs):
    import tqdm

    kwargs["disable"] = True
    return tqdm.tqdm(*args, **kwargs)


def quiet_tqdm(module) -> None:
    """A library module that draws its own tqdm bars with no switch (transformers' GGUF de-quantizer).
    Within a quiet() block only; its end puts the module's name back."""
    if not _verbose and _undo is not None:
        _patch(module, "tqdm", _hidden_bar)


def _patch(module, name: str, value) -> None:
    _undo.callback(setattr, module, name, getattr(module, name))
    setattr(module, name, value)

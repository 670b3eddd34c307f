"""Supervised fine-tuning with TRL's SFTTrainer, loss on the replies only."""

from __future__ import annotations

from dus.instruct.options import TrainOptions
from dus.instruct.trainer import config_kwargs, finish, pickle_free, prepare
from dus.runtime import check_weights


def sft_trainer(opts: TrainOptions, packing: bool = False):
    """(SFTTrainer ready to train, HygieneReport)."""
    from trl import SFTConfig, SFTTrainer

    tokenizer, dataset, report = prepare(opts, "sft")
    # completion_only_loss=None: TRL masks the prompt of prompt/completion rows
    # (every chat, once rendered) and trains on all of plain `text` rows.
    config = SFTConfig(**config_kwargs(opts), packing=packing, completion_only_loss=None)
    # TRL loads the weights itself; a pickle-only directory is refused first.
    return pickle_free(SFTTrainer)(
        model=check_weights(opts.model), args=config, train_dataset=dataset, processing_class=tokenizer
    ), report


def sft(opts: TrainOptions, packing: bool = False) -> dict:
    trainer, report = sft_trainer(opts, packing)
    trainer.train()
    return finish(trainer, opts, report, "sft", {"packing": packing})

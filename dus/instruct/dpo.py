"""Direct preference optimisation with TRL's DPOTrainer, after SFT."""

from __future__ import annotations

from dus.instruct.options import TrainOptions
from dus.instruct.trainer import config_kwargs, finish, pickle_free, prepare
from dus.runtime import check_weights


def dpo_trainer(opts: TrainOptions, beta: float = 0.1, loss_type: str = "sigmoid"):
    """(DPOTrainer ready to train, HygieneReport)."""
    from trl import DPOConfig, DPOTrainer

    tokenizer, dataset, report = prepare(opts, "dpo")
    config = DPOConfig(**config_kwargs(opts), beta=beta, loss_type=[t.strip() for t in loss_type.split(",")])
    # The policy is given as a path and no ref_model: TRL then loads the frozen
    # reference from the same directory (the SFT checkpoint on disk), which is
    # also what keeps it right under torchrun/accelerate.
    # TRL loads the weights itself; a pickle-only directory is refused first.
    return pickle_free(DPOTrainer)(
        model=check_weights(opts.model), args=config, train_dataset=dataset, processing_class=tokenizer
    ), report


def dpo(opts: TrainOptions, beta: float = 0.1, loss_type: str = "sigmoid") -> dict:
    trainer, report = dpo_trainer(opts, beta, loss_type)
    trainer.train()
    return finish(trainer, opts, report, "dpo", {"beta": beta, "loss_type": loss_type})

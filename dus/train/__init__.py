"""Continued pretraining after depth up-scaling: `dus pretrain`, from one CPU to many GPUs on FSDP2.

from dus.train import PretrainConfig, pretrain
pretrain(PretrainConfig(model="out/solar", data=["corpus/"], output="runs/cpt", max_steps=1000))
"""

from dus.train.config import PretrainConfig, load_config


def pretrain(cfg: PretrainConfig | dict) -> dict:
    """Train `cfg.model` on `cfg.data`; returns the run summary. Imports torch only when called."""
    from dus.train.loop import pretrain as run

    return run(cfg)


__all__ = ["PretrainConfig", "load_config", "pretrain"]

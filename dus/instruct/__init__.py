"""After depth up-scaling and continued pretraining: SFT, DPO and single-turn chat.

Training is TRL's (`SFTTrainer`, `DPOTrainer`); this package only prepares the
data (formats, chat template, hygiene filters) and the options, so a run under
`torchrun` or `accelerate launch` is TRL's multi-GPU run.
"""

"""LoRA fine-tuning: the loop, the loss, the optimizer, checkpoints, validation during training, the fit check.

- loop.py: `train_adapter`, one direction's run (prepare, resume, fit, save); `train_step`, one optimizer step
- loss.py: the chunked cross-entropy that never materialises logits
- optim.py: the adapter's optimizer (fused AdamW / paged 8-bit AdamW over fp32 masters)
- lora.py: wrapping a base in a LoRA adapter, gradient checkpointing
- stream.py: the tokenized, decontaminated training stream from Parquet shards
- state.py: the trainer state (a checkpoint's trainer_state.json) and the typed records of a run
- checkpoints.py: checkpoints and the adapter folder, written beside their name and renamed into place
- validate.py: the held-out slice scored during training (`HeldOutScorer`)
- fit.py: the fit check (`bhashaflow fit`)
"""


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why."""


class TrainingOutOfMemory(TrainingError):
    """A training step ran out of device memory: training stopped at its last checkpoint; the message names what
    to lower."""

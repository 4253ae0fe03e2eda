"""LoRA fine-tuning: the loop, the loss, the optimizer, checkpoints, validation during training, the fit check."""

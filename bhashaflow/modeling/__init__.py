"""Base models and adapters: loading (hub, local, built-in), LoRA adapters, the input formats, generation."""

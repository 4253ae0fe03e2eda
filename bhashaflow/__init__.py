"""bhashaflow: LoRA translation adapters for Indic languages, proven on FLORES-200."""

__version__ = "0.1.0"

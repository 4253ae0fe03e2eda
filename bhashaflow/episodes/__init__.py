"""Served translations and their feedback, and their export as RL logs."""

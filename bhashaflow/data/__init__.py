"""Parallel text on its way to training: FLORES files, row validation, ingestion into shards, decontamination, the validation slice, batching."""

"""The base every other part stands on: records, languages, files on any fsspec store, redaction, settings, file names."""

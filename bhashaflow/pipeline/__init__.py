"""A pipeline run as a whole: the report of its directions (the CLI table, report.md, the chart, the JSON rows)."""

"""chrF and chrF++ on FLORES-200, and the pipeline's report."""

"""chrF and chrF++ on FLORES-200: scoring, and translating an evaluation set with an adapter or none."""

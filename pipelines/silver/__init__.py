"""Silver: validated, deduplicated events and what is derived from them per user."""

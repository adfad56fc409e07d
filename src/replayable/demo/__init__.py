"""The incident demo: a support agent that sometimes deletes the wrong customer record."""

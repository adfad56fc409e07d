"""Integrations with model SDKs and frameworks; each is an optional extra, imported lazily."""

"""Prefect flows: they only wire the stages of `monitor` together."""

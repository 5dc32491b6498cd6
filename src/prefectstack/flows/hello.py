"""A hello flow: the smallest end-to-end check that scheduling, workers and logs work."""

from __future__ import annotations

from prefect import flow


@flow(name="hello", log_prints=True)
def hello(name: str = "world") -> str:
    """Print and return a greeting."""
    message = f"Hello, {name}! (from prefectstack)"
    print(message)
    return message

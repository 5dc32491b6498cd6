"""The stack file: model, loading, interpolation and error explanations."""

from prefectstack.stack.loader import default_stack, load_stack, parse_stack
from prefectstack.stack.model import Stack

__all__ = ["Stack", "default_stack", "load_stack", "parse_stack"]

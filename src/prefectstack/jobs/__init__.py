"""One-shot programs the stack runs."""

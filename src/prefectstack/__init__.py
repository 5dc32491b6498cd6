"""prefectstack: a production-grade, self-hosted Prefect 3 platform from one stack.yaml."""

__version__ = "0.1.0"

"""The flow library shipped with prefectstack: importable and deployable."""

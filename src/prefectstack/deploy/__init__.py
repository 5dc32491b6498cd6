"""Deployments as code: `prefectstack deploy plan|apply` keeps a Prefect server's work pools,
queues, deployments, global concurrency limits, variables and secret blocks in line with the
stack file.

state.py (plain comparable data) → desired.py (the file, checked) + the server snapshot →
plan.py (pure diff) → apply.py (through prefect_api.py).
"""

"""The warm worker: a Prefect process worker that forks each flow run from a pre-imported
parent (the forkserver) instead of starting a fresh interpreter.

- `protocol`: the messages between worker and forkserver, and the pure parts of a child's
  set-up (environment, `sys.path`, exit status).
- `forkserver`: the parent (`python -m prefectstack.warm.forkserver`) and its children.
- `child`: what a forked child runs: Prefect's workspace preparation, then the engine.
- `client`: the worker's side of the forkserver (spawn, exit status, restart).
- `worker`: `WarmProcessWorker` and `python -m prefectstack.warm.worker`.
"""

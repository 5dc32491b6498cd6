"""Renderers: the stack's topology as files for other targets (Docker Compose, Kubernetes,
systemd, GitHub Actions).

Every renderer is pure: a `Stack` (and, where a target needs them, secret values) in, a
`Bundle` of file contents out. Writing the files is the CLI's job.
"""

from prefectstack.render.common import Bundle

__all__ = ["Bundle"]

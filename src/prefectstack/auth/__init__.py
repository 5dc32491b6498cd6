"""The auth service behind Caddy's `forward_auth`: users, roles, API keys, sessions, audit.

roles.py names roles and rule types, routes.py is the route table (data), policy.py decides,
store.py keeps identities in SQLite, audit.py and throttle.py record and slow down, app.py
is the ASGI app Caddy asks.
"""

"""The sign-in page: one self-contained HTML document, no scripts, no external assets."""

from __future__ import annotations

from html import escape

# Nothing but our inline style may load, the form may post only to us, and no other site
# may frame the page (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

_STYLE = """
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;
font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;background:#f4f5f7;color:#1d2433}
main{background:#fff;padding:2rem 2.25rem;border-radius:10px;width:20rem;
box-shadow:0 1px 3px rgba(0,0,0,.08),0 8px 24px rgba(0,0,0,.06)}
h1{font-size:1.25rem;margin:0 0 1.25rem}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}
input{box-sizing:border-box;width:100%;padding:.55rem .65rem;border:1px solid #c8ccd4;
border-radius:6px;font:inherit}
input:focus{outline:2px solid #2d6cdf;border-color:transparent}
button{margin-top:1.25rem;width:100%;padding:.6rem;border:0;border-radius:6px;
background:#2d6cdf;color:#fff;font:inherit;font-weight:600;cursor:pointer}
.error{background:#fdecec;color:#9b1c1c;padding:.5rem .65rem;border-radius:6px;margin:0}
"""


def login_page(*, next_path: str, error: str = "", username: str = "") -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>Sign in · prefectstack</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>Sign in to Prefect</h1>
{message}
<form method="post" action="/auth/login">
<input type="hidden" name="next" value="{escape(next_path)}">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" required autofocus
 value="{escape(username)}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"""

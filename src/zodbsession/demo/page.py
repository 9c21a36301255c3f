"""The demo's one HTML page: a template filled with values, every one escaped.

Rendering is a pure function of what the application read, so it can neither
change the session nor forget to escape: each value passes through
``html.escape`` on its way in, user-provided or not.
"""

from __future__ import annotations

from html import escape

_STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; }
code { background: #f3f3f3; padding: 0 .25rem; }
section { border-top: 1px solid #ddd; margin-top: 1.5rem; padding-top: .5rem; }
form { display: inline-block; margin: .25rem .5rem .25rem 0; }
button { font: inherit; padding: .25rem .75rem; cursor: pointer; }
#flash { background: #e8f4e8; border: 1px solid #9c9; padding: .5rem 1rem; }
#fail { background: #fbe9e9; }
#error { background: #fbe9e9; border: 1px solid #c99; padding: .5rem 1rem; }
.note { color: #555; font-size: .9rem; }
"""


def render_page(
    *,
    count: int,
    user: str | None,
    session_prefix: str | None,
    flash: str | None,
    increments: int,
    error: str | None = None,
) -> str:
    """The whole page; *session_prefix* None means no session is stored yet."""
    flash_html = f'<p id="flash" role="status">{escape(flash)}</p>' if flash else ""
    if error:
        flash_html += f'<p id="error" role="alert">{escape(error)}</p>'
    session_html = (
        f'<code id="session-id">{escape(session_prefix)}</code>&hellip;'
        if session_prefix
        else '<span id="session-id">none yet</span> '
             '<span class="note">(a session is stored on its first write)</span>'
    )
    user_html = escape(user) if user is not None else "nobody"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>zodbsession demo</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>zodbsession demo</h1>
<p class="note">Every request is one ZODB transaction: the session and the
application's own data commit together when the request succeeds, and are
rolled back together when it fails.</p>
{flash_html}
<dl>
  <dt>Session id</dt><dd>{session_html}</dd>
  <dt>Logged in as</dt><dd id="user">{user_html}</dd>
  <dt>Counter (this session)</dt><dd id="count">{escape(str(count))}</dd>
  <dt>Increments by everyone</dt><dd id="increments">{escape(str(increments))}</dd>
</dl>

<section>
<h2>Counter</h2>
<form method="post" action="/counter">
  <button id="increment" type="submit">Increment</button>
</form>
<form method="post" action="/fail">
  <button id="fail" type="submit">Increment, then fail</button>
</form>
<p class="note">&ldquo;Increment, then fail&rdquo; adds one to this session's counter
and to the increments by everyone, then raises an exception. The publisher aborts
the transaction and answers <code>500 Internal Server Error</code> with this page
and a message: the counter did not change, and neither did the total.</p>
</section>

<section>
<h2>Login</h2>
<form method="post" action="/login">
  <label for="user-name">User name</label>
  <input id="user-name" name="user" required maxlength="64" autocomplete="username">
  <button id="login" type="submit">Log in</button>
</form>
<form method="post" action="/logout">
  <button id="logout" type="submit">Log out</button>
</form>
<p class="note">Logging in gives the session a new id (watch the session id above),
so an id known before the login is worthless after it. Logging out ends the session
on the server and deletes the cookie.</p>
</section>

<section>
<h2>JSON API</h2>
<p class="note"><a href="/api/session"><code>GET /api/session</code></a> reads the
session and changes nothing. <code>POST /api/counter</code>, <code>/api/fail</code>,
<code>/api/login</code> (body <code>{{"user": "..."}}</code>) and
<code>/api/logout</code> do what the buttons do.</p>
</section>
</body>
</html>
"""

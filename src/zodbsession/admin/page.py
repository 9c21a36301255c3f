"""The admin listener's HTML: the dashboard, the session search, one session, the login form.

Pure functions from figures to markup, so that ``app`` keeps the routes and
``access`` the rules, and this module only the looks. Charts are inline SVG drawn
here, on the server: the page loads no script and nothing from another host
(the machines it runs on often reach no internet). Every value that comes
from a request or the database goes through ``html.escape``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urlencode

from zodbsession.ops.maintenance import SessionDetail, SessionInfo

#: (when, value) points of one chart line.
Points = Sequence[tuple[float, float]]

CHART_WIDTH = 340
CHART_HEIGHT = 120
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 44, 8, 8, 18

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 1.5em;color:#1b1f24}
h1{font-size:1.4em;margin:.2em 0 .6em} h2{font-size:1.1em;margin:1.4em 0 .5em}
.figures{display:flex;flex-wrap:wrap;gap:.6em}
.figure{border:1px solid #d0d7de;border-radius:6px;padding:.5em .8em;min-width:9em}
.figure b{display:block;font-size:1.6em} .figure span{color:#57606a;font-size:.85em}
.charts{display:flex;flex-wrap:wrap;gap:1em} .chart{border:1px solid #d0d7de;border-radius:6px;padding:.4em}
.chart h3{font-size:.95em;margin:0 0 .2em}
table{border-collapse:collapse;margin:.4em 0} td,th{border-bottom:1px solid #d0d7de;padding:.25em .6em;
text-align:left;font-variant-numeric:tabular-nums} code{font-size:.9em}
form.inline{display:inline} .message{background:#dafbe1;border:1px solid #4ac26b;padding:.4em .8em;
border-radius:6px} .error{background:#ffebe9;border-color:#ff8182} button.danger{color:#cf222e}
nav a{margin-right:1em}
"""


@dataclass(frozen=True)
class Chart:
    """One small line chart: a title and named series of points, each with a colour."""

    title: str
    series: Sequence[tuple[str, str, Points]]  # (label, colour, points)
    unit: str = ""


@dataclass(frozen=True)
class Dashboard:
    """Everything the front page shows."""

    snapshot: Mapping[str, Any]
    rates: Mapping[str, float | None]  # per second over the last minute: requests, conflicts, ...
    charts: Sequence[Chart]
    last_pack: Mapping[str, float | None]  # {database name -> time of the last pack}
    csrf: str
    message: str = ""
    now: float = field(default_factory=time.time)


def layout(title: str, body: str, *, nonce: str, csrf: str | None = None) -> str:
    """A whole page: *body* inside the common head, navigation and logout button."""
    nav = ""
    if csrf is not None:
        nav = (f'<nav><a href="/">Dashboard</a><a href="/sessions">Sessions</a><a href="/metrics">'
               f"Metrics (Prometheus)</a>{_post_button('/logout', 'Log out', {}, csrf, 'logout')}</nav>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><style nonce="{nonce}">{_STYLE}</style>'
            f"</head><body>{nav}<h1>{escape(title)}</h1>{body}</body></html>")


def login_page(*, next_url: str, failed: bool, nonce: str) -> str:
    """The form that trades the admin token for a cookie (answered with 401)."""
    note = ('<p class="message error" id="login-error">That is not the admin token.</p>' if failed else
            "<p>This page needs the admin token (<code>admin.token</code> in the config, or "
            "<code>ZODBSESSION_ADMIN_TOKEN</code>), or an <code>Authorization: Bearer</code> header.</p>")
    body = (f'{note}<form method="post" action="/login" id="login-form">'
            f'<input type="hidden" name="next" value="{escape(next_url)}">'
            '<label>Token <input type="password" name="token" id="token" autocomplete="current-password" '
            'autofocus required></label> <button type="submit" id="login">Log in</button></form>')
    return layout("zodbsession admin: log in", body, nonce=nonce)


def dashboard_page(view: Dashboard, *, nonce: str) -> str:
    """The front page: figures, charts, search forms, janitor and pack."""
    snap = view.snapshot
    live = snap.get("live_sessions")
    commits = snap["commit_seconds"]
    mean_commit = commits["sum"] / commits["count"] if commits["count"] else None
    figures = [
        ("live-sessions", _number(live), "sessions stored (live + not yet swept)"),
        ("requests-rate", _rate(view.rates.get("requests")), "requests / s (last minute)"),
        ("conflicts-rate", _rate(view.rates.get("conflicts")), "conflicts / s"),
        ("retries-rate", _rate(view.rates.get("retries")), "retries / s"),
        ("requests-total", _number(snap["requests_total"]), "requests since start"),
        ("answers-503", _number(snap["answers_503"]), "answered 503"),
        ("commit-mean", _duration(mean_commit), "mean commit"),
    ]
    figures += [(f"sessions-{kind}", _number(count), f"sessions {kind}")
                for kind, count in snap["sessions"].items()]
    message = f'<p class="message" id="message">{escape(view.message)}</p>' if view.message else ""
    body = (message + _figures(figures)
            + '<h2>Over time</h2><div class="charts">' + "".join(map(line_chart, view.charts)) + "</div>"
            + "<h2>Find sessions</h2>" + search_forms()
            + "<h2>Housekeeping</h2>" + _housekeeping(snap, view.last_pack, view.now)
            + "<h2>Requests by outcome</h2>" + _table(("outcome", "requests"), sorted(
                (escape(k), _number(v)) for k, v in snap["requests"].items())))
    return layout("zodbsession admin", body, nonce=nonce, csrf=view.csrf)


def search_forms(prefix: str = "", user: str = "") -> str:
    """The two searches: by id prefix and by user."""
    return (
        '<form method="get" action="/sessions" class="inline" id="search-prefix">'
        f'<label>Id starts with <input name="prefix" id="prefix" value="{escape(prefix)}" '
        'pattern="[A-Za-z0-9_\\-]*" maxlength="43"></label> <button type="submit" id="search-by-prefix">'
        "Search</button></form> &nbsp; "
        '<form method="get" action="/sessions" class="inline" id="search-user">'
        f'<label>User <input name="user" id="user" value="{escape(user)}" maxlength="200"></label> '
        '<button type="submit" id="search-by-user">Search</button></form>'
    )


def sessions_page(infos: Sequence[SessionInfo], *, prefix: str, user: str, limit: int, csrf: str,
                  nonce: str, now: float, message: str = "") -> str:
    """Search results: bookkeeping only, with a revoke button on each row."""
    rows = []
    for info in infos:
        query = urlencode({"id": info.id})
        rows.append((
            f'<a href="/session?{escape(query)}"><code>{escape(info.id[:12])}…</code></a>',
            escape(info.user_id or "—"),
            _when(info.created, now), _when(info.last_access, now), _when(info.deadline, now),
            "live" if info.live else "expired", str(info.data_keys),
            _post_button("/revoke", "Revoke", {"id": info.id, "back": _back(prefix, user)}, csrf,
                         f"revoke-{info.id[:12]}", danger=True),
        ))
    header = ("id", "user", "created", "last access", "ends", "state", "keys", "")
    first = f" (the first {limit})" if len(infos) >= limit else ""
    found = f'<p id="found">{len(infos)} session(s){first}.</p>'
    revoke_user = ""
    if user:
        revoke_user = _post_button("/revoke-user", f"Revoke all sessions of {user}", {"user": user}, csrf,
                                   "revoke-user", danger=True)
    message = f'<p class="message" id="message">{escape(message)}</p>' if message else ""
    body = message + search_forms(prefix, user) + found + revoke_user + _table(header, rows, "results")
    return layout("Sessions", body, nonce=nonce, csrf=csrf)


def session_page(info: SessionInfo, detail: SessionDetail | None, *, csrf: str, nonce: str,
                 now: float) -> str:
    """One session's bookkeeping; its data only when *detail* was asked for."""
    rows = [("id", f"<code>{escape(info.id)}</code>"), ("user", escape(info.user_id or "—")),
            ("created", _when(info.created, now)), ("last access", _when(info.last_access, now)),
            ("ends", _when(info.deadline, now)), ("state", "live" if info.live else "expired"),
            ("data keys", str(info.data_keys))]
    if detail is None:
        data = (f'<p><a id="show-data" href="/session?{escape(urlencode({"id": info.id, "data": "1"}))}">'
                "Show data</a> (the values are shown as bounded reprs)</p>")
    else:
        data = "<h2>Data</h2>" + _table(("key", "value"), [
            (f"<code>{escape(k)}</code>", f"<code>{escape(v)}</code>") for k, v in detail.data.items()],
            "data")
    revoke = _post_button("/revoke", "Revoke this session", {"id": info.id, "back": "/sessions"}, csrf,
                          "revoke", danger=True)
    return layout("Session", _table(("", ""), rows, "bookkeeping") + data + revoke, nonce=nonce, csrf=csrf)


def error_page(title: str, text: str, *, nonce: str) -> str:
    """A short error page: what went wrong, never a traceback."""
    return layout(title, f"<p>{escape(text)}</p><p><a href=\"/\">Back to the dashboard</a></p>", nonce=nonce)


def line_chart(chart: Chart) -> str:
    """*chart* as an inline SVG: a line per series, the top value and the time span labelled."""
    width, height = CHART_WIDTH, CHART_HEIGHT
    plot_w, plot_h = width - _PAD_LEFT - _PAD_RIGHT, height - _PAD_TOP - _PAD_BOTTOM
    points = [p for _label, _colour, series in chart.series for p in series]
    title = f'<h3>{escape(chart.title)}</h3>'
    if len({t for t, _v in points}) < 2:
        body = (f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#57606a">'
                "collecting samples…</text>")
        return f'<div class="chart">{title}{_svg(chart.title, body)}</div>'
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    top = _nice_top(max(v for _, v in points))
    parts = [f'<line x1="{_PAD_LEFT}" y1="{_PAD_TOP + plot_h}" x2="{_PAD_LEFT + plot_w}" '
             f'y2="{_PAD_TOP + plot_h}" stroke="#d0d7de"/>',
             f'<line x1="{_PAD_LEFT}" y1="{_PAD_TOP}" x2="{_PAD_LEFT + plot_w}" y2="{_PAD_TOP}" '
             'stroke="#eaeef2" stroke-dasharray="3 3"/>',
             f'<text x="{_PAD_LEFT - 4}" y="{_PAD_TOP + 4}" text-anchor="end" font-size="10" '
             f'fill="#57606a">{escape(_short(top))}{escape(chart.unit)}</text>',
             f'<text x="{_PAD_LEFT - 4}" y="{_PAD_TOP + plot_h}" text-anchor="end" font-size="10" '
             'fill="#57606a">0</text>',
             f'<text x="{_PAD_LEFT}" y="{height - 4}" font-size="10" fill="#57606a">'
             f"{escape(_span(t1 - t0))} ago</text>",
             f'<text x="{_PAD_LEFT + plot_w}" y="{height - 4}" text-anchor="end" font-size="10" '
             'fill="#57606a">now</text>']
    for index, (label, colour, series) in enumerate(chart.series):
        coords = " ".join(
            f"{_PAD_LEFT + plot_w * (t - t0) / (t1 - t0):.1f},{_PAD_TOP + plot_h * (1 - v / top):.1f}"
            for t, v in series)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{escape(colour)}" '
                     'stroke-width="1.5"/>')
        if len(chart.series) > 1:
            x = _PAD_LEFT + 8 + 90 * index
            parts.append(f'<text x="{x}" y="{_PAD_TOP + 12}" font-size="10" fill="{escape(colour)}">'
                         f"{escape(label)}</text>")
    return f'<div class="chart">{title}{_svg(chart.title, "".join(parts))}</div>'


# -- pieces -------------------------------------------------------------------------------


def _svg(label: str, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
            f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" aria-label="{escape(label)}">'
            f"{body}</svg>")


def _post_button(action: str, label: str, fields: Mapping[str, str], csrf: str, element_id: str, *,
                 danger: bool = False) -> str:
    hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
                     for k, v in {**fields, "csrf": csrf}.items())
    css = ' class="danger"' if danger else ""
    return (f'<form method="post" action="{escape(action)}" class="inline" id="{escape(element_id)}-form">'
            f"{hidden}"
            f'<button type="submit" id="{escape(element_id)}"{css}>{escape(label)}</button></form>')


def _figures(figures: Iterable[tuple[str, str, str]]) -> str:
    return '<div class="figures">' + "".join(
        f'<div class="figure"><b id="{escape(key)}">{value}</b><span>{escape(label)}</span></div>'
        for key, value, label in figures) + "</div>"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], element_id: str = "") -> str:
    """A table of already escaped cells."""
    ident = f' id="{escape(element_id)}"' if element_id else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _housekeeping(snap: Mapping[str, Any], last_pack: Mapping[str, float | None], now: float) -> str:
    janitor = snap["janitor"]
    if janitor["last_run"] is None:
        last = "no sweep since this process started"
    else:
        last = (f'{_when(janitor["last_run"], now)}: removed {_number(janitor["last_removed"])} '
                f'in {_duration(janitor["last_seconds"])}')
    rows = [("last janitor sweep", f'<span id="janitor-last">{last}</span>'),
            ("janitor sweeps / removed", f'{_number(janitor["runs"])} / {_number(janitor["removed"])}')]
    for name in sorted(set(last_pack) | set(snap.get("storage_bytes", {}))):
        packed = last_pack.get(name)
        rows.append((f"database {escape(name)}: last pack",
                     _when(packed, now) if packed else "never packed by zodbsession"))
        if name in snap.get("storage_bytes", {}):
            rows.append((f"database {escape(name)}: size", _bytes(snap["storage_bytes"][name])))
        pool = snap.get("pool", {}).get(name)
        if pool is not None:
            rows.append((f"database {escape(name)}: connections in use",
                         f'{pool["in_use"]} of a pool of {pool["size"]}'))
    return _table(("", ""), [(escape(k), v) for k, v in rows], "housekeeping")


def _back(prefix: str, user: str) -> str:
    query = urlencode({k: v for k, v in (("prefix", prefix), ("user", user)) if v})
    return "/sessions" + (f"?{query}" if query else "")


def _number(value: float | None) -> str:
    return "—" if value is None else f"{int(value):,}"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _when(moment: float, now: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(moment))
    delta = now - moment
    relative = f"{_span(delta)} ago" if delta >= 0 else f"in {_span(-delta)}"
    return f'<time datetime="{stamp.replace(" ", "T")}Z" title="{stamp} UTC">{escape(relative)}</time>'


def _short(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}"


def _nice_top(value: float) -> float:
    """A round number at or above *value*, so the top gridline reads well (1, 2, 5 × 10ⁿ)."""
    if value <= 0:
        return 1.0
    scale = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    while scale > value:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale

"""docs/django.md runs as written: its files, its ``zodbsession serve`` command, its curl transcript.

The page's ``python`` blocks whose first line is ``# path`` are written to a
fresh directory; the ``serve`` command of its first console block is run
there in a subprocess (the test picks the port); each ``$ curl`` line of the
transcript is replayed with one cookie jar and its output compared with the
line the page shows after it.
"""

from __future__ import annotations

import re
import shlex
import urllib.parse
import urllib.request
from pathlib import Path

from serverproc import Client, ServerProcess

PAGE = Path(__file__).resolve().parents[2] / "docs" / "django.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(kind: str) -> list[str]:
    return [body for language, body in BLOCK.findall(PAGE.read_text()) if language == kind]


def project_files() -> dict[str, str]:
    files = {}
    for body in blocks("python"):
        first, _, rest = body.partition("\n")
        if re.fullmatch(r"# [\w/]+\.py", first):
            files[first[2:]] = rest
    return files


def serve_command() -> tuple[dict[str, str], list[str]]:
    """The environment assignments and the arguments after ``zodbsession serve``."""
    line = next(line for body in blocks("console") for line in body.splitlines() if " serve " in line)
    words = shlex.split(line.removeprefix("$ "))
    env = dict(word.split("=", 1) for word in words if "=" in word and not word.startswith("-"))
    return env, words[words.index("serve") + 1:]


def transcript() -> list[tuple[list[str], str]]:
    """``(curl arguments, expected output)`` pairs, in order."""
    body = next(body for body in blocks("console") if "$ curl" in body)
    lines = body.splitlines()
    return [(shlex.split(line[2:]), lines[i + 1])
            for i, line in enumerate(lines) if line.startswith("$ curl")]


def test_the_page_has_the_project_and_the_transcript():
    assert set(project_files()) == {"mysite/__init__.py", "mysite/settings.py", "mysite/urls.py",
                                    "mysite/wsgi.py"}
    assert len(transcript()) >= 4


def test_the_page_runs_as_written(tmp_path):
    for name, text in project_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env, args = serve_command()
    env = {key: str(tmp_path) if value == "." else value for key, value in env.items()}
    with ServerProcess(tmp_path, env, *args) as server:
        client = Client(server.url)
        client.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(client.jar),
                                                    _NoRedirects())
        for curl, expected in transcript():
            url = next(word for word in curl if word.startswith("http://"))
            status, _headers, body = client.request("GET", urllib.parse.urlsplit(url).path or "/")
            shown = str(status) if "%{http_code}\\n" in curl else body.decode()
            assert shown == expected, f"{' '.join(curl)}: got {shown!r}, the page says {expected!r}"
    assert (tmp_path / "var" / "Data.fs").exists()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """curl does not follow redirects without -L: neither does this client."""

    def redirect_request(self, *args, **kwargs):
        return None


def test_every_session_and_message_setting_the_example_uses_is_on_the_page():
    """The example's settings.py sets MESSAGE_STORAGE; the page's settings table omitted it."""
    example = PAGE.parents[1] / "examples" / "django" / "shop" / "settings.py"
    used = re.findall(r"^((?:SESSION|MESSAGE|ZODBSESSION)_\w+)\s*=", example.read_text(), re.M)
    assert "MESSAGE_STORAGE" in used
    text = PAGE.read_text()
    assert [name for name in used if f"`{name}" not in text] == []

"""GET /: the playground page, one self-contained HTML file.

The page (playground.html) calls the same API callers use, ``GET /convert``
with ``Accept: application/json``, and shows the image and what was applied.
Its CSS and script are inline and allowed by their hashes in a strict
Content-Security-Policy: the page loads nothing from anywhere and may only
talk to its own origin.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from functools import cache
from pathlib import Path

PAGE_FILE = Path(__file__).with_name("playground.html")
_PRESET_MARK = "<!--PRESETS-->"


def _digest(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


@cache
def page(presets: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """The page's HTML, with the preset names filled in, and its response headers."""
    text = PAGE_FILE.read_text(encoding="utf-8")
    options = "\n      ".join(
        f'<option value="{html.escape(name)}">{html.escape(name)}</option>' for name in presets
    )
    text = text.replace(_PRESET_MARK, options)
    scripts = re.findall(r"<script>(.*?)</script>", text, flags=re.S)
    styles = re.findall(r"<style>(.*?)</style>", text, flags=re.S)
    policy = "; ".join(
        (
            "default-src 'none'",
            "script-src " + " ".join(_digest(s) for s in scripts),
            "style-src " + " ".join(_digest(s) for s in styles),
            "img-src data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return text, headers

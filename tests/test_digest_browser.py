"""The digest page in a real headless browser (Debian ``chromium``).

Renders a digest built by the real Pipeline, then: screenshots at desktop and phone widths
(saved under tests/artifacts/ for CI), the DOM as the browser parsed it (key elements there,
hostile article text inert), no console message at all (the page has no script, so any
message is a CSP violation or an error), and no horizontal overflow on a phone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from storyline.models.types import Article
from storyline.service import digest as dg
from storyline.service.pipeline import Pipeline

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DAY = datetime(2021, 10, 20, tzinfo=UTC)
#: headless Chromium does not go below 500 CSS px; the page's phone layout starts at 600
PHONE = (500, 1100)
DESKTOP = (1280, 2400)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)


def chromium(profile: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def console_messages(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]


@pytest.fixture()
def digest_page(pipeline: Pipeline, shared_data: Path, tmp_path: Path) -> Path:
    from storyline.service.ingest import read_source

    by: dict[str, list[Article]] = {}
    for p in read_source(shared_data / "allsides" / "articles.jsonl"):
        if p.article is not None and str(p.article.story_id) in ("5608", "5620", "5646"):
            by.setdefault(str(p.article.story_id), []).append(p.article)
    arts = []
    for k, (sid, group) in enumerate(sorted(by.items())):
        for i, a in enumerate(sorted(group, key=lambda a: a.id)):
            a = replace(a, published_at=DAY + timedelta(hours=8 + 4 * k, minutes=5 * i))
            if sid == "5620":  # hostile article text
                a = replace(a, title=a.title + ' <script>alert("pwned")</script>',
                            text=a.text + ' <img src=x onerror="alert(1)"> <b>bold</b>')
            arts.append(a)
    pipeline.ingest(arts)
    since, until = dg.day_period(DAY.date())
    res = dg.build_digest(pipeline, since=since, until=until, formats=["html"],
                          out_dir=tmp_path / "out")
    assert len(res.featured) == 3
    return Path(res.files["html"])


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_digest_renders_in_chromium(digest_page: Path, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    url = digest_page.resolve().as_uri()
    for name, (w, h) in (("desktop", DESKTOP), ("phone", PHONE)):
        shot = ARTIFACTS / f"digest-{name}.png"
        shot.unlink(missing_ok=True)
        r = chromium(tmp_path / f"profile-{name}", f"--screenshot={shot}",
                     f"--window-size={w},{h}", url)
        assert r.returncode == 0, r.stderr[-2000:]
        assert shot.stat().st_size > 10_000, f"{name} screenshot is (nearly) empty"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # No script runs and nothing may be fetched: any console line is a failure.
        assert console_messages(r.stderr) == [], console_messages(r.stderr)

    r = chromium(tmp_path / "profile-dom", "--dump-dom", f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
                 url)
    assert r.returncode == 0, r.stderr[-2000:]
    assert console_messages(r.stderr) == []
    dom = _Dom()
    dom.feed(r.stdout)
    tags = [t for t, _ in dom.tags]
    assert tags.count("article") == 3
    assert sum(1 for t, a in dom.tags if t == "article" and a.get("data-rank")) == 3
    assert "svg" in tags and "nav" in tags and "h1" in tags
    assert "script" not in tags and "img" not in tags and "b" not in tags
    text = " ".join(dom.text)
    assert '<script>alert("pwned")</script>' in text  # shown as text, not run
    assert re.search(r"Generated for 2021-10-20", text)


def test_digest_has_no_horizontal_overflow_on_a_phone(digest_page: Path, tmp_path: Path) -> None:
    # A probe copy: the CSP (which rightly forbids scripts) dropped, one measuring script added.
    html = digest_page.read_text(encoding="utf-8")
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    probe = (
        "<script>const d=document.documentElement;document.body.dataset.probe="
        "[d.scrollWidth,window.innerWidth,getComputedStyle(document.querySelector('main'))"
        ".paddingLeft].join('|');</script></body>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe), encoding="utf-8")
    for w, h in (PHONE, DESKTOP):
        r = chromium(tmp_path / f"profile-{w}", "--dump-dom", f"--window-size={w},{h}",
                     page.as_uri())
        m = re.search(r'data-probe="(\d+)\|(\d+)\|([\d.]+)px"', r.stdout)
        assert m, r.stdout[:500]
        scroll, inner, pad = int(m[1]), int(m[2]), float(m[3])
        assert scroll <= inner, f"{w}px: content {scroll}px wider than the viewport {inner}px"
        assert pad == (10.0 if w <= 600 else 16.0), "the phone layout applies below 600px"

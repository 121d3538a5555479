"""Document readers: TXT, Markdown, reST, PDF (text layer, per page), HTML files and URLs (trafilatura).

A document is a list of sections (text, page, heading); chunking never crosses a section boundary.
Unusable inputs return None after `report.skip(where, reason)`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlparse

from slmkit.config.data import FetchConfig, LimitsConfig

from ..report import Report

DOC_EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
}
_ATX = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")


@dataclass
class Section:
    text: str
    page: int | None = None
    heading: str | None = None


@dataclass
class Document:
    source: str
    sha256: str
    kind: str
    sections: list[Section] = field(default_factory=list)
    title: str | None = None

    @property
    def text(self) -> str:
        """The sections' text, one blank line between them (headings stay in their section's text)."""
        return "\n\n".join(s.text for s in self.sections)


def decode_text(raw: bytes, where: str, limits: LimitsConfig, report: Report) -> str | None:
    """Text of a file that claims to be text: refuses binaries and over-long lines; non-UTF-8 is detected."""
    if b"\x00" in raw[:8192]:
        report.skip(where, "binary content (NUL bytes) in a text file")
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        matches = from_bytes(raw[:1_000_000])
        best = matches.best()
        if best is None:
            report.skip(where, "unknown text encoding (not UTF-8, and no other encoding fits)")
            return None
        # Short Western text is ambiguous between the Windows code pages; cp1252 is by far the most common
        # legacy encoding, so it wins when it reads about as cleanly as the detector's first pick.
        best = next((m for m in matches if m.encoding == "cp1252" and m.chaos <= best.chaos + 0.1), best)
        text = raw.decode(best.encoding, errors="replace")
        report.notes.append(f"{where}: decoded as {best.encoding} (not UTF-8)")
    longest = max((len(line) for line in text.split("\n")), default=0)
    if longest > limits.max_line_chars:
        report.skip(where, f"line too long ({longest} chars; data.limits.max_line_chars is {limits.max_line_chars})")
        return None
    if not text.strip():
        report.skip(where, "empty document")
        return None
    return text


def markdown_sections(text: str) -> list[Section]:
    """Split at ATX headings (outside fenced code); each section's heading is its path 'A > B'."""
    sections, path, buf, in_fence = [], [], [], False
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        text = text[4:].split("\n---\n", 1)[1]  # YAML front matter
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _ATX.match(line)
        if m:
            _flush(sections, buf, path)
            level = len(m.group(1))
            path = path[: level - 1] + [""] * max(0, level - 1 - len(path)) + [m.group(2)]
            buf = [line]
        else:
            buf.append(line)
    _flush(sections, buf, path)
    return sections


def rst_sections(text: str) -> list[Section]:
    """Split at reST titles (a line underlined by a repeated punctuation character at least as long)."""
    lines = text.split("\n")
    sections, buf, path, levels = [], [], [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (
            line.strip()
            and not _RST_UNDERLINE.match(line)
            and _RST_UNDERLINE.match(nxt)
            and len(nxt.rstrip()) >= len(line.rstrip())
        ):
            _flush(sections, buf, path)
            char = nxt.strip()[0]
            if char not in levels:
                levels.append(char)
            level = levels.index(char)
            path = path[:level] + [line.strip()]
            buf = [line.strip()]
            i += 2
            continue
        if not _RST_UNDERLINE.match(line):  # overlines and stray adornments carry no text
            buf.append(line)
        i += 1
    _flush(sections, buf, path)
    return sections


def _flush(sections: list[Section], buf: list[str], path: list[str]) -> None:
    text = "\n".join(buf).strip()
    if text:
        sections.append(Section(text, None, " > ".join(p for p in path if p) or None))


def pdf_sections(path: Path, report: Report) -> list[Section] | None:
    """One section per page with text (pypdf text layer); encrypted or corrupt PDFs are skipped."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            report.skip(str(path), "encrypted PDF (needs a password)")
            return None
        pages = [(n, page.extract_text() or "") for n, page in enumerate(reader.pages, 1)]
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, AttributeError) as e:
        report.skip(str(path), f"corrupt PDF ({type(e).__name__}: {str(e)[:120]})")
        return None
    sections = [Section(t.strip(), n) for n, t in pages if t.strip()]
    if not sections:
        report.skip(str(path), f"PDF has no text layer ({len(pages)} pages; scanned images need OCR first)")
        return None
    return sections


def html_sections(html: str, url: str | None = None) -> list[Section]:
    """Main text of an HTML page (trafilatura, boilerplate removed), split at its headings."""
    import trafilatura

    text = (
        trafilatura.extract(
            html, url=url, output_format="markdown", include_comments=False, include_tables=True, favor_precision=True
        )
        or ""
    )
    return markdown_sections(text)


def read_document(
    path: Path, kind: str | None = None, limits: LimitsConfig | None = None, report: Report | None = None
) -> Document | None:
    """A document from a file of `kind` (text, markdown, rst, pdf, html; default: what its suffix says, see
    DOC_EXTENSIONS), or None when skipped (the reason goes to `report`, and to the log)."""
    path = Path(path)
    kind = kind or DOC_EXTENSIONS.get(path.suffix.lower(), "text")
    limits, report = limits or LimitsConfig(), report if report is not None else Report()
    where = str(path)
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        report.skip(where, f"file too large ({size} bytes; data.limits.max_file_bytes is {limits.max_file_bytes})")
        return None
    raw = path.read_bytes()
    if not raw.strip():
        report.skip(where, "empty file")
        return None
    sha = hashlib.sha256(raw).hexdigest()
    if kind == "pdf":
        if not raw.startswith(b"%PDF"):
            report.skip(where, "corrupt PDF (no %PDF header)")
            return None
        sections = pdf_sections(path, report)
    else:
        text = decode_text(raw, where, limits, report)
        if text is None:
            return None
        sections = {"markdown": markdown_sections, "rst": rst_sections, "html": html_sections}.get(
            kind, lambda t: [Section(t.strip())]
        )(text)
    if not sections:
        if kind != "pdf":
            report.skip(where, "no text found")
        return None
    return Document(where, sha, kind, sections, title=path.stem)


# ----------------------------------------------------------------------------- URLs


def _robots_allow(url: str, client, cfg: FetchConfig) -> bool:
    """RFC 9309: a 4xx robots.txt means no rules; an unreachable one (5xx, network) means disallow."""
    from urllib.robotparser import RobotFileParser

    robots = urljoin(url, "/robots.txt")
    try:
        resp = client.get(robots)
    except Exception:  # noqa: BLE001 - any network failure: treat as unreachable
        return False
    if 400 <= resp.status_code < 500:
        return True
    if resp.status_code >= 500:
        return False
    parser = RobotFileParser()
    parser.parse(resp.text.splitlines())
    return parser.can_fetch(cfg.user_agent, url)


def fetch_url(url: str, cfg: FetchConfig, limits: LimitsConfig, report: Report) -> Document | None:
    """GET an http(s) page with a timeout and a size cap, honouring robots.txt; its main text as a document."""
    import httpx

    if urlparse(url).scheme not in ("http", "https"):
        report.skip(url, "unsupported URL scheme (use http or https)")
        return None
    headers = {"User-Agent": cfg.user_agent}
    try:
        with httpx.Client(timeout=cfg.timeout_s, follow_redirects=True, headers=headers) as client:
            if cfg.respect_robots and not _robots_allow(url, client, cfg):
                report.skip(url, "disallowed by robots.txt (or robots.txt unreachable)")
                return None
            with client.stream("GET", url) as resp:
                if resp.status_code >= 400:
                    report.skip(url, f"unreachable URL (HTTP {resp.status_code})")
                    return None
                body = bytearray()
                for part in resp.iter_bytes():
                    body += part
                    if len(body) > cfg.max_bytes:
                        report.skip(url, f"response too large (over data.fetch.max_bytes={cfg.max_bytes})")
                        return None
                ctype = resp.headers.get("content-type", "")
                encoding = resp.encoding or "utf-8"
    except httpx.HTTPError as e:
        report.skip(url, f"unreachable URL ({type(e).__name__}: {str(e)[:120]})")
        return None
    raw = bytes(body)
    if "html" in ctype or raw.lstrip()[:1] == b"<":
        sections = html_sections(raw.decode(encoding, errors="replace"), url)
    else:
        text = decode_text(raw, url, limits, report)
        sections = [Section(text)] if text else []
    if not sections:
        report.skip(url, "no main text found on the page")
        return None
    return Document(url, hashlib.sha256(raw).hexdigest(), "url", sections, title=urlparse(url).path or url)

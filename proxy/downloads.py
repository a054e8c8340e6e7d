"""Download rules: file extensions (from the URL path and Content-Disposition) and MIME types.

The district's acceptable-use policy forbids installing software, games and
media without permission. Per policy (``downloads:`` in config.yaml):

- ``block_extensions``: the file name's extension, read from the URL path
  (checked when the request arrives, so a blocked file is never fetched) and
  from the ``Content-Disposition`` header (checked on the response headers,
  before the body is read). Multi-part extensions work (``tar.gz``).
- ``block_mime``: the response's media type; ``type/*`` blocks a whole type.
- ``block_audio_video``: audio and video *downloads* (a file saved or opened on
  its own). Playback inside a page (``<audio>``/``<video>``, streaming players)
  is not a download and is allowed.
- ``allow_sites``: domains (and their subdomains) or ``host/path`` prefixes
  where none of this applies: the district's software portal.

File names are read the way a browser saves them: percent-decoding applied,
``;params`` dropped, trailing dots and spaces removed (Windows drops them, so
``setup.exe.`` is ``setup.exe``), case ignored.

No mitmproxy imports: ``addons/content.py`` applies these to flows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

# What `block_audio_video: true` adds.
MEDIA_EXTENSIONS = frozenset(
    {
        *("mp3", "m4a", "aac", "wav", "flac", "ogg", "oga", "opus", "wma", "aiff", "aif", "mid"),
        *("midi", "mp4", "m4v", "mkv", "avi", "mov", "wmv", "flv", "webm", "mpg", "mpeg", "3gp"),
        "ogv",
    }
)
MEDIA_MIME = ("audio/*", "video/*")

# Sec-Fetch-Dest values of a page playing media itself (not a download of the file).
_PLAYBACK_DEST = frozenset({"audio", "video", "track", "empty"})


@dataclass(frozen=True)
class Blocked:
    """Why a download is blocked: the rule and what matched (``.exe``, ``application/x-msi``)."""

    rule: str  # extension | disposition | mime | audio_video
    detail: str

    @property
    def reason(self) -> str:
        if self.rule in ("extension", "disposition"):
            return f"downloading {self.detail} files is not allowed"
        if self.rule == "mime":
            return f"downloading files of type {self.detail} is not allowed"
        return f"downloading audio and video files ({self.detail}) is not allowed"


def clean_filename(name: str) -> str:
    """A file name as a browser would save it: decoded, lower case, no trailing dots/spaces."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return name.strip().rstrip(". \t").lower()


def filename_from_path(path: str) -> str:
    """The last segment of a URL path (query, fragment and ;params dropped, percent-decoded)."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    last = path.rsplit("/", 1)[-1].split(";", 1)[0]
    return clean_filename(unquote(last))


_DISPOSITION = re.compile(r"""(?:^|;)\s*(filename\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)""", re.I)


def disposition_filenames(value: str | None) -> list[str]:
    """Every file name a Content-Disposition header names (``filename`` and ``filename*``).

    Both are returned, so a server cannot hide ``setup.exe`` in one behind a
    harmless name in the other.
    """
    if not value:
        return []
    names = []
    for key, raw in _DISPOSITION.findall(value):
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if key.endswith("*"):
            charset, _, rest = raw.partition("'")
            _lang, _, encoded = rest.partition("'")
            try:
                raw = unquote(
                    encoded if rest else raw, encoding=charset or "utf-8", errors="replace"
                )
            except LookupError:
                raw = unquote(encoded if rest else raw, errors="replace")
        else:
            raw = unquote(raw, errors="replace")
        name = clean_filename(raw)
        if name:
            names.append(name)
    return names


def is_attachment(value: str | None) -> bool:
    return bool(value) and value.split(";", 1)[0].strip().lower() == "attachment"


def extensions_of(filename: str) -> list[str]:
    """Every dotted suffix of a file name, shortest first: ``a.tar.gz`` -> ``gz``, ``tar.gz``."""
    parts = filename.split(".")
    return [".".join(parts[i:]) for i in range(len(parts) - 1, 0, -1)]


def mime_of(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def mime_matches(mime: str, patterns: Iterable[str]) -> str | None:
    """The pattern (``type/sub`` or ``type/*``) that ``mime`` matches, if any."""
    if not mime:
        return None
    major = mime.split("/", 1)[0]
    for p in patterns:
        if p == mime or (p.endswith("/*") and p[:-2] == major):
            return p
    return None


def site_allowed(host: str, path: str, allow_sites: Iterable[str]) -> bool:
    """``host`` is an allow-listed domain (or a subdomain), or ``host/path`` starts with an allowed prefix."""
    host = host.lower().rstrip(".")
    url = host + (path.split("?", 1)[0] or "/")
    for site in allow_sites:
        if "/" in site:
            if url == site.rstrip("/") or url.startswith(
                site if site.endswith("/") else site + "/"
            ):
                return True
        elif host == site or host.endswith("." + site):
            return True
    return False


def _blocked_extension(filename: str, blocked: frozenset[str]) -> str | None:
    for ext in extensions_of(filename):
        if ext in blocked:
            return ext
    return None


@dataclass(frozen=True)
class Rules:
    """One policy's download rules, ready to apply (built from ``config.Downloads``)."""

    extensions: frozenset[str] = frozenset()
    mime: tuple[str, ...] = ()
    allow_sites: tuple[str, ...] = ()
    audio_video: bool = False

    @classmethod
    def build(
        cls,
        extensions: Iterable[str] = (),
        mime: Iterable[str] = (),
        allow_sites: Iterable[str] = (),
        audio_video: bool = False,
    ) -> Rules:
        return cls(
            frozenset(e.lower().lstrip(".") for e in extensions),
            tuple(m.lower() for m in mime),
            tuple(s.lower().rstrip(".") for s in allow_sites),
            audio_video,
        )

    @property
    def active(self) -> bool:
        return bool(self.extensions or self.mime or self.audio_video)

    def _ext(self, filename: str, playback: bool) -> tuple[str, bool] | None:
        ext = _blocked_extension(filename, self.extensions)
        if ext is not None:
            return ext, False
        if self.audio_video and not playback:
            ext = _blocked_extension(filename, MEDIA_EXTENSIONS)
            if ext is not None:
                return ext, True
        return None

    def check_request(self, host: str, path: str, dest: str = "") -> Blocked | None:
        """The URL path's file name: decided before anything is fetched."""
        if not self.active or site_allowed(host, path, self.allow_sites):
            return None
        name = filename_from_path(path)
        if "." not in name:
            return None
        hit = self._ext(name, dest.lower() in _PLAYBACK_DEST)
        if hit is None:
            return None
        ext, media = hit
        return Blocked("audio_video" if media else "extension", "." + ext)

    def check_response(
        self,
        host: str,
        path: str,
        content_type: str | None,
        disposition: str | None,
        dest: str = "",
    ) -> Blocked | None:
        """Content-Disposition file names and the media type: decided before the body is read."""
        if not self.active or site_allowed(host, path, self.allow_sites):
            return None
        attachment = is_attachment(disposition)
        playback = dest.lower() in _PLAYBACK_DEST and not attachment
        for name in disposition_filenames(disposition):
            hit = self._ext(name, playback)
            if hit is not None:
                ext, media = hit
                return Blocked("audio_video" if media else "disposition", "." + ext)
        mime = mime_of(content_type)
        pattern = mime_matches(mime, self.mime)
        if pattern is not None:
            return Blocked("mime", mime)
        if self.audio_video and not playback and mime_matches(mime, MEDIA_MIME):
            return Blocked("audio_video", mime)
        return None

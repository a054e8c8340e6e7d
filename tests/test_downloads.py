"""Download rules (proxy/downloads.py): file names from URLs and Content-Disposition, MIME types."""

from __future__ import annotations

import pytest

from proxy.downloads import (
    Rules,
    disposition_filenames,
    extensions_of,
    filename_from_path,
    mime_matches,
    site_allowed,
)

STUDENTS = Rules.build(
    extensions=["exe", "msi", "tar.gz", ".APK"],
    mime=["application/x-msdownload", "application/x-bittorrent", "video/*"],
    allow_sites=["software.example.org", "portal.example.org/approved/"],
    audio_video=True,
)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/files/setup.exe", "setup.exe"),
        ("/files/Setup.EXE?x=1#frag", "setup.exe"),
        ("/files/setup%2Eexe", "setup.exe"),
        ("/files/setup.exe;jsessionid=abc", "setup.exe"),
        ("/files/setup.exe.", "setup.exe"),  # Windows drops trailing dots and spaces
        ("/files/setup.exe%20%20", "setup.exe"),
        ("/files/", ""),
        ("/download.php?file=setup.exe", "download.php"),  # the query is not the file name
    ],
)
def test_filename_from_path(path: str, name: str) -> None:
    assert filename_from_path(path) == name


@pytest.mark.parametrize(
    ("header", "names"),
    [
        ('attachment; filename="setup.exe"', ["setup.exe"]),
        ("attachment; filename=setup.exe", ["setup.exe"]),
        ("inline; filename=report.pdf", ["report.pdf"]),
        ('attachment; filename="a \\"b\\".msi"', ['a "b".msi']),
        (
            "attachment; filename*=UTF-8''instal%C3%A1dor.exe",
            ["instaládor.exe"],
        ),
        (
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''setup%2Eexe",
            ["report.pdf", "setup.exe"],
        ),
        ('attachment; filename="C:\\\\temp\\\\tool.msi"', ["tool.msi"]),
        ("attachment", []),
        (None, []),
    ],
)
def test_disposition_filenames(header: str | None, names: list[str]) -> None:
    assert disposition_filenames(header) == names


def test_extensions_and_mime_patterns() -> None:
    assert extensions_of("backup.tar.gz") == ["gz", "tar.gz"]
    assert extensions_of("noext") == []
    assert mime_matches("video/mp4", ["video/*"]) == "video/*"
    assert mime_matches("application/x-msdownload", ["application/x-msdownload"])
    assert mime_matches("videos/mp4", ["video/*"]) is None
    assert mime_matches("", ["video/*"]) is None


def test_allow_sites_domains_subdomains_and_path_prefixes() -> None:
    sites = ["software.example.org", "portal.example.org/approved/"]
    assert site_allowed("software.example.org", "/x.exe", sites)
    assert site_allowed("dl.software.example.org.", "/x.exe", sites)
    assert not site_allowed("evilsoftware.example.org", "/x.exe", sites)
    assert site_allowed("portal.example.org", "/approved/x.exe", sites)
    assert not site_allowed("portal.example.org", "/approvedx/x.exe", sites)
    assert not site_allowed("portal.example.org", "/x.exe?/approved/", sites)


def test_request_rules() -> None:
    assert STUDENTS.check_request("example.com", "/setup.exe").rule == "extension"
    assert STUDENTS.check_request("example.com", "/Game.APK").detail == ".apk"
    assert STUDENTS.check_request("example.com", "/src.tar.gz").detail == ".tar.gz"
    assert STUDENTS.check_request("example.com", "/page.html") is None
    assert STUDENTS.check_request("software.example.org", "/setup.exe") is None
    # audio/video: a download unless the page plays it
    assert STUDENTS.check_request("example.com", "/song.mp3").rule == "audio_video"
    assert STUDENTS.check_request("example.com", "/clip.mp4", dest="video") is None
    assert STUDENTS.check_request("example.com", "/clip.mp4", dest="document").rule == "audio_video"
    # an executable is blocked whatever fetches it
    assert STUDENTS.check_request("example.com", "/x.exe", dest="video").rule == "extension"


def test_response_rules() -> None:
    check = STUDENTS.check_response
    assert check(
        "e.com", "/dl", "application/octet-stream", 'attachment; filename="a.msi"'
    ).rule == ("disposition")
    assert check("e.com", "/dl", "application/x-msdownload; charset=binary", None).rule == "mime"
    assert (
        check("e.com", "/dl", "Application/X-BitTorrent", None).detail == "application/x-bittorrent"
    )
    assert check("e.com", "/v", "video/mp4", None).rule == "mime"  # an explicit video/* entry
    assert check("e.com", "/a", "audio/mpeg", None).rule == "audio_video"
    assert check("e.com", "/a", "audio/mpeg", None, dest="audio") is None
    assert check("e.com", "/a", "audio/mpeg", "attachment; filename=a.mp3", dest="audio").rule == (
        "audio_video"
    )  # saved as a file, even from an <audio> element
    assert check("e.com", "/p", "text/html", "inline") is None
    assert check("software.example.org", "/dl", "application/x-msdownload", None) is None


def test_no_rules_no_checks() -> None:
    none = Rules.build()
    assert not none.active
    assert none.check_request("e.com", "/setup.exe") is None
    assert (
        none.check_response("e.com", "/", "application/x-msdownload", "attachment; filename=a.exe")
        is None
    )
    media_only = Rules.build(audio_video=True)
    assert media_only.check_request("e.com", "/setup.exe") is None
    assert media_only.check_request("e.com", "/a.flac").rule == "audio_video"

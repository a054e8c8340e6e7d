"""Registered domains (eTLD+1), from the Public Suffix List bundled with tldextract.

Used to tell whether two names belong to the same site (SNI vs CONNECT host).
The extractor never fetches: the suffix list snapshot shipped in the wheel is
used, so there is no network access at run time and results are reproducible.
"""

from __future__ import annotations

from functools import lru_cache

import tldextract

_extract = tldextract.TLDExtract(
    suffix_list_urls=(), cache_dir=None, include_psl_private_domains=False
)


@lru_cache(maxsize=16384)
def registered_domain(host: str) -> str:
    """``www.example.co.uk`` -> ``example.co.uk``; IP literals return themselves."""
    if host.startswith("[") or host.replace(".", "").isdigit():
        return host
    ext = _extract(host)
    if ext.domain and ext.suffix:
        return f"{ext.domain}.{ext.suffix}"
    # Not under a known public suffix (internal names, test TLDs): the last two labels.
    return ".".join(host.rsplit(".", 2)[-2:])

"""The CA setup page, served by the proxy itself at ``http://<district.setup_host>/``.

Default name ``cipa-proxy.setup``; it never needs DNS, because browsers send
every request to the proxy, which answers requests for that name itself.
Flows for the setup host never reach the identity check, the filter or an
upstream server: this addon runs right after ``Access`` and halts the hook
chain for them (``AddonHalt``), and refuses any server connection for a
tunnel it took over. Paths:

- ``/``                   the setup page (English or Spanish by Accept-Language)
- ``/setup.js``           its script (the trust check, the steps for this device)
- ``/cipa-proxy-ca.pem``  the CA certificate, PEM (ChromeOS, macOS, Linux, Firefox)
- ``/cipa-proxy-ca.cer``  the CA certificate, DER (Windows, iOS, Android)
- ``/trust-check.png``    HTTPS only: a 1x1 image

The trust check: ``CONNECT <setup host>:443`` is decrypted here with a
certificate the district CA signs (mitmproxy mints it like for any
intercepted site), so ``https://<setup host>/trust-check.png`` loads only in a
browser that trusts the CA, and fails with a certificate error otherwise. The
page's script shows which happened. Under ``tls.inspect: none`` nothing is
decrypted: the CONNECT is refused and the page says the CA is not needed.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from mitmproxy import connection, exceptions, http, tls
from mitmproxy.proxy import server_hooks

from proxy import blockpage
from proxy.ca import ca_paths

from .runtime import Runtime, new_request_id

log = logging.getLogger("cipa.onboarding")


def _png_1x1() -> bytes:
    """A valid 1x1 transparent PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
    idat = zlib.compress(b"\x00\x00\x00\x00\x00")  # filter byte + one transparent pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PIXEL = _png_1x1()


@dataclass(frozen=True)
class CaFiles:
    pem: bytes
    der: bytes
    name: str
    fingerprint: str  # SHA-256 of the DER, AA:BB:... as certificate dialogs show it


def load_ca(confdir: Path) -> CaFiles:
    _, cert_file = ca_paths(confdir)
    pem = cert_file.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else cert.subject.rfc4514_string()
    digest = hashlib.sha256(der).hexdigest().upper()
    fingerprint = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    return CaFiles(pem, der, name, fingerprint)


class Onboarding:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.tunnels: set[str] = set()  # client connections whose CONNECT named the setup host
        self._ca: tuple[tuple[Path, int], CaFiles] | None = None

    # ------------------------------------------------------------------ helpers

    def _setup_host(self) -> str:
        return self.rt.config.district.setup_host

    def _is_setup(self, host: str) -> bool:
        setup = self._setup_host()
        return bool(setup) and host.lower().rstrip(".") == setup

    def _ca_files(self) -> CaFiles:
        confdir = self.rt.config.tls.confdir
        _, cert_file = ca_paths(confdir)
        key = (cert_file, cert_file.stat().st_mtime_ns)
        if self._ca is None or self._ca[0] != key:
            self._ca = (key, load_ca(confdir))
        return self._ca[1]

    # ------------------------------------------------------------------ tunnels

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not self._is_setup(flow.request.host):
            return
        if self.rt.config.tls.inspect == "none" or flow.request.port != 443:
            flow.response = http.Response.make(
                403,
                f"The setup page is at http://{self._setup_host()}/\n".encode(),
                {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"},
            )
        else:
            self.tunnels.add(flow.client_conn.id)
        raise exceptions.AddonHalt  # ours: no other addon decides this CONNECT

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        if client.id not in self.tunnels:
            return
        sni = data.client_hello.sni
        # Decrypt and answer it ourselves; a tunnel naming another server is cut (server_connect).
        data.ignore_connection = bool(sni) and not self._is_setup(sni)
        if data.ignore_connection:
            log.info("setup tunnel with SNI %r: closed", sni)
        raise exceptions.AddonHalt

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.client.id in self.tunnels:
            data.server.error = "answered by cipa-proxy (setup page)"
            raise exceptions.AddonHalt

    def client_disconnected(self, client: connection.Client) -> None:
        self.tunnels.discard(client.id)

    # ------------------------------------------------------------------ requests

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        tunnel = flow.client_conn.id in self.tunnels
        # Plain HTTP to the setup name, or anything in a tunnel we took over. A decrypted tunnel to
        # another site naming the setup host in its Host header stays the filter's business.
        plain = not flow.client_conn.tls_established and self._is_setup(flow.request.host)
        if flow.response is not None or not (tunnel or plain):
            return
        flow.metadata["cipa_id"] = new_request_id()
        flow.metadata["cipa_setup"] = True
        try:
            flow.response = self._answer(flow.request, tunnel and flow.client_conn.tls_established)
        except Exception:
            log.exception("cannot serve the setup page")
            flow.response = http.Response.make(
                500,
                b"The setup page is not available right now.\n",
                {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"},
            )
        raise exceptions.AddonHalt

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get("cipa_setup"):
            raise exceptions.AddonHalt  # answered in requestheaders

    def _answer(self, r: http.Request, tls_: bool) -> http.Response:
        base = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        path = r.path.split("?", 1)[0]
        if r.method not in ("GET", "HEAD"):
            return http.Response.make(405, b"", {**base, "Allow": "GET, HEAD"})
        cfg = self.rt.config
        if path == "/":
            ca = self._ca_files()
            lang, body = blockpage.render_setup(
                accept_language=r.headers.get("accept-language", ""),
                district=cfg.district.name,
                contact=cfg.district.contact,
                logo=cfg.district.logo,
                setup_host=self._setup_host(),
                ca_name=ca.name,
                fingerprint=ca.fingerprint,
                inspects=cfg.tls.inspect != "none",
            )
            return http.Response.make(
                200,
                body,
                {
                    **base,
                    "Content-Type": "text/html; charset=utf-8",
                    "Content-Language": lang,
                    "Vary": "Accept-Language",
                    "Content-Security-Policy": blockpage.setup_csp(self._setup_host()),
                },
            )
        if path == "/setup.js":
            return http.Response.make(
                200,
                blockpage.asset("setup.js"),
                {**base, "Content-Type": "text/javascript; charset=utf-8"},
            )
        if path in ("/cipa-proxy-ca.pem", "/cipa-proxy-ca.cer"):
            ca = self._ca_files()
            pem = path.endswith(".pem")
            return http.Response.make(
                200,
                ca.pem if pem else ca.der,
                {
                    **base,
                    "Content-Type": "application/x-pem-file"
                    if pem
                    else "application/x-x509-ca-cert",
                    "Content-Disposition": f'attachment; filename="{path[1:]}"',
                },
            )
        if path == "/trust-check.png" and tls_:
            return http.Response.make(200, PIXEL, {**base, "Content-Type": "image/png"})
        return http.Response.make(
            404, b"Not found.\n", {**base, "Content-Type": "text/plain; charset=utf-8"}
        )

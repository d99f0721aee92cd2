#!/usr/bin/env python3
"""An interop endpoint on aioquic (PyPI), independent of Quiver, for Quiver's local interop runner.

It follows the interop runner's endpoint contract in both roles:
  ROLE=server|client, TESTCASE, REQUESTS (client), WWW, DOWNLOADS, CERTS, LISTEN (server),
  SSLKEYLOGFILE, QLOGDIR.
The server prints `LISTENING <address>` on stdout once it is bound and serves until killed.
Exit codes: 0 success, 1 failure, 127 unsupported test case.

ALPN hq-interop (HTTP/0.9: one bidirectional stream per file, `GET /path\\r\\n`, the file back) for every
case but http3, which uses h3. The server accepts both in every case.

Needs aioquic (python3 -m pip install aioquic); nothing else beyond the standard library.
"""

import asyncio
import os
import signal
import socket
import ssl
import sys
from urllib.parse import urlsplit

try:
    import aioquic
    from aioquic.asyncio import QuicConnectionProtocol, connect, serve
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import (
        ConnectionTerminated,
        HandshakeCompleted,
        ProtocolNegotiated,
        StreamDataReceived,
        StreamReset,
    )
    from aioquic.quic.logger import QuicFileLogger
    from aioquic import tls
    from aioquic.tls import CipherSuite
except ImportError as error:  # the runner reads 1 as "this endpoint failed"
    print(f"aioquic-endpoint: aioquic is not installed ({error}); pip install aioquic", file=sys.stderr)
    sys.exit(1)

EXIT_UNSUPPORTED = 127
ALPN_HQ = "hq-interop"
SUPPORTED_CASES = {
    "handshake",
    "transfer",
    "multiconnect",
    "chacha20",
    "retry",
    "resumption",
    "zerortt",
    "http3",
    "keyupdate",
    "connectionmigration",
}
# HTTP/0.9 has no error codes: this one resets a stream whose file does not exist.
HQ_FILE_NOT_FOUND = 0x10
# HTTP/3's "no error" application close code (RFC 9114 §8.1).
H3_NO_ERROR = 0x100
# An HTTP/0.9 request is one short line.
MAX_REQUEST_BYTES = 4096
# keyupdate (server): the first piece of a response goes out under the old keys, the rest under the new.
FIRST_CHUNK_BYTES = 64 * 1024
# transfer (client): receive windows small enough that the server needs MAX_DATA / MAX_STREAM_DATA updates.
TRANSFER_STREAM_WINDOW_BYTES = 64 * 1024
TRANSFER_CONNECTION_WINDOW_BYTES = 256 * 1024
# resumption/zerortt: how long the first connection waits for a session ticket (bounds failure only).
TICKET_WAIT_SECONDS = 5.0
# One connection's handshake and downloads must finish within this; a stuck run then fails, not hangs.
CONNECTION_DEADLINE_SECONDS = 120.0


def log(message):
    print(f"aioquic-endpoint: {message}", file=sys.stderr, flush=True)


class Settings:
    """Everything the environment tells the endpoint."""

    def __init__(self):
        self.role = os.environ.get("ROLE", "")
        self.testcase = os.environ.get("TESTCASE", "")
        self.requests = os.environ.get("REQUESTS", "").split()
        self.www = os.environ.get("WWW", "/www")
        self.downloads = os.environ.get("DOWNLOADS", "/downloads")
        self.certs = os.environ.get("CERTS", "/certs")
        self.listen = os.environ.get("LISTEN", "[::]:443")
        self.keylog_path = os.environ.get("SSLKEYLOGFILE")
        self.qlog_dir = os.environ.get("QLOGDIR")

    def configuration(self, is_client, alpn_protocols):
        """A QuicConfiguration with what every case shares: ALPN, key log, qlog, cipher suites."""
        configuration = QuicConfiguration(is_client=is_client, alpn_protocols=alpn_protocols)
        if self.keylog_path:
            configuration.secrets_log_file = open(self.keylog_path, "a", buffering=1)
        if self.qlog_dir:
            os.makedirs(self.qlog_dir, exist_ok=True)
            configuration.quic_logger = QuicFileLogger(self.qlog_dir)
        if self.testcase == "chacha20":
            configuration.cipher_suites = [CipherSuite.CHACHA20_POLY1305_SHA256]
        return configuration


def initiate_key_update(protocol, role):
    """Starts a key update unless the peer has already started one.

    RFC 9001 §6.5: no new update before a packet of the current phase was acknowledged. aioquic does not
    check that, so when both sides update at once (the local runner asks both roles to) a second flip
    right after the peer's leaves the peer unable to decrypt anything (seen with quinn: idle timeout).
    """
    one_rtt = protocol._quic._cryptos.get(tls.Epoch.ONE_RTT)
    if one_rtt is not None and one_rtt.key_phase != 0:
        log(f"{role}: the peer already updated the keys; not starting another update")
        return
    # aioquic defers it until the handshake is confirmed, as RFC 9001 §6.1 requires.
    protocol.request_key_update()
    log(f"{role} requested a key update")


def split_host_port(address):
    """'[::1]:443' -> ('::1', 443); '127.0.0.1:0' -> ('127.0.0.1', 0)."""
    if address.startswith("["):
        host, _, port = address[1:].partition("]:")
    else:
        host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"LISTEN={address!r} is not a socket address")
    return host, int(port)


def format_address(sockname):
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------------------------------
# Server


def file_for(www, request_path):
    """The file under `www` that a request path names, or None when it leaves `www` or does not exist."""
    relative = request_path.split("?", 1)[0].lstrip("/")
    parts = relative.split("/")
    if not relative or any(part in ("", ".", "..") for part in parts):
        return None
    path = os.path.join(www, *parts)
    return path if os.path.isfile(path) else None


class ServerProtocol(QuicConnectionProtocol):
    """One server connection: answers hq-interop or h3 requests with files from WWW."""

    settings = None  # set by run_server

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._alpn = None
        self._h3 = None
        self._hq_requests = {}
        self._key_update_done = self.settings.testcase != "keyupdate"

    def quic_event_received(self, event):
        if isinstance(event, ProtocolNegotiated):
            self._alpn = event.alpn_protocol
            if self._alpn in H3_ALPN:
                self._h3 = H3Connection(self._quic)
        elif isinstance(event, HandshakeCompleted):
            log(
                f"server handshake complete: alpn={event.alpn_protocol} resumed={event.session_resumed}"
                f" early_data_accepted={event.early_data_accepted}"
            )
        if self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                self._h3_event(h3_event)
        elif self._alpn == ALPN_HQ and isinstance(event, StreamDataReceived):
            self._hq_data(event)

    def _hq_data(self, event):
        request = self._hq_requests.get(event.stream_id, b"") + event.data
        if len(request) > MAX_REQUEST_BYTES:
            self._hq_requests.pop(event.stream_id, None)
            self._quic.reset_stream(event.stream_id, HQ_FILE_NOT_FOUND)
            return
        if not event.end_stream:
            self._hq_requests[event.stream_id] = request
            return
        self._hq_requests.pop(event.stream_id, None)
        line = request.decode("utf-8", "replace").strip()
        path = file_for(self.settings.www, line[4:].strip()) if line.startswith("GET ") else None
        if path is None:
            log(f"hq: no file for {line!r}")
            self._quic.reset_stream(event.stream_id, HQ_FILE_NOT_FOUND)
            return
        with open(path, "rb") as file:
            body = file.read()
        self._send_body(event.stream_id, body, lambda data, end: self._quic.send_stream_data(event.stream_id, data, end))

    def _h3_event(self, event):
        if not isinstance(event, HeadersReceived):
            return  # a GET carries no body worth reading
        headers = dict(event.headers)
        method, request_path = headers.get(b":method", b""), headers.get(b":path", b"").decode()
        path = file_for(self.settings.www, request_path) if method == b"GET" else None
        if path is None:
            self._h3.send_headers(event.stream_id, [(b":status", b"404")], end_stream=True)
            return
        with open(path, "rb") as file:
            body = file.read()
        self._h3.send_headers(
            event.stream_id, [(b":status", b"200"), (b"content-length", str(len(body)).encode())]
        )
        self._send_body(event.stream_id, body, lambda data, end: self._h3.send_data(event.stream_id, data, end))

    def _send_body(self, stream_id, body, send):
        if self._key_update_done:
            send(body, True)
            return
        # keyupdate: the start of the first response under the current keys, then a key update
        # (deferred by aioquic until the handshake is confirmed), then the rest under the new keys.
        self._key_update_done = True
        send(body[:FIRST_CHUNK_BYTES], False)
        self.transmit()
        initiate_key_update(self, "server")
        send(body[FIRST_CHUNK_BYTES:], True)


async def run_server(settings):
    host, port = split_host_port(settings.listen)
    configuration = settings.configuration(is_client=False, alpn_protocols=[ALPN_HQ, *H3_ALPN])
    configuration.load_cert_chain(os.path.join(settings.certs, "cert.pem"), os.path.join(settings.certs, "priv.key"))
    tickets = {}  # single use: a ticket taken for 0-RTT cannot be replayed

    ServerProtocol.settings = settings
    server = await serve(
        host,
        port,
        configuration=configuration,
        create_protocol=ServerProtocol,
        session_ticket_handler=lambda ticket: tickets.__setitem__(ticket.ticket, ticket),
        session_ticket_fetcher=lambda label: tickets.pop(label, None),
        retry=settings.testcase == "retry",
    )
    # serve() hides the transport it bound; the bound port (LISTEN may say 0) is only there.
    bound = server._transport.get_extra_info("sockname")
    print(f"LISTENING {format_address(bound)}", flush=True)
    log(f"server {settings.testcase} on {format_address(bound)}")
    # Serve until SIGTERM/SIGINT. aioquic writes a qlog file when its connection ends, after draining;
    # the runner kills the server right after the client is done, so the traces still open are written here.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    logger = configuration.quic_logger
    if logger is not None:
        for trace in list(logger._traces):
            logger.end_trace(trace)
    server.close()


# ---------------------------------------------------------------------------------------------------
# Client


class Download:
    """One URL being fetched: its stream, the file it is saved to, and when it is done."""

    def __init__(self, url, downloads):
        parts = urlsplit(url)
        self.url = url
        self.path = parts.path or "/"
        self.authority = parts.netloc
        name = self.path.rstrip("/").rsplit("/", 1)[-1]
        if name in ("", ".", ".."):
            raise ValueError(f"{url}: the URL path has no file name")
        self.file = open(os.path.join(downloads, name), "wb")
        self.done = asyncio.get_running_loop().create_future()

    def finish(self, error=None):
        if self.done.done():
            return
        self.file.close()
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(RuntimeError(f"{self.url}: {error}"))


class ClientProtocol(QuicConnectionProtocol):
    """One client connection: sends requests, saves responses, and the mid-transfer actions."""

    settings = None  # set by run_client

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._downloads = {}
        self._h3 = H3Connection(self._quic) if self.settings.testcase == "http3" else None
        self._mid_transfer_done = self.settings.testcase not in ("keyupdate", "connectionmigration")
        self.handshake = None  # the HandshakeCompleted event
        self.migration = None  # the migration task, connectionmigration only
        self.new_transport = None  # the socket it moved to

    def request(self, download):
        stream_id = self._quic.get_next_available_stream_id()
        self._downloads[stream_id] = download
        if self._h3 is not None:
            headers = [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", download.authority.encode()),
                (b":path", download.path.encode()),
            ]
            self._h3.send_headers(stream_id, headers, end_stream=True)
        else:
            self._quic.send_stream_data(stream_id, f"GET {download.path}\r\n".encode(), end_stream=True)

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
            log(
                f"client handshake complete: alpn={event.alpn_protocol} resumed={event.session_resumed}"
                f" early_data_accepted={event.early_data_accepted}"
            )
        elif isinstance(event, ConnectionTerminated):
            for download in self._downloads.values():
                download.finish(f"connection closed: {event.error_code:#x} {event.reason_phrase}")
        elif isinstance(event, StreamReset) and event.stream_id in self._downloads:
            self._downloads[event.stream_id].finish(f"stream reset by the server ({event.error_code:#x})")
        if self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                self._h3_event(h3_event)
        elif isinstance(event, StreamDataReceived) and event.stream_id in self._downloads:
            self._data(event.stream_id, event.data, event.end_stream)

    def _h3_event(self, event):
        download = self._downloads.get(event.stream_id)
        if download is None:
            return
        if isinstance(event, HeadersReceived):
            status = dict(event.headers).get(b":status")
            if status != b"200":
                download.finish(f"status {status!r}")
            elif event.stream_ended:
                download.finish()
        elif isinstance(event, DataReceived):
            self._data(event.stream_id, event.data, event.stream_ended)

    def _data(self, stream_id, data, end_stream):
        download = self._downloads[stream_id]
        if download.done.done():
            return
        download.file.write(data)
        if data and not self._mid_transfer_done:
            self._mid_transfer_done = True
            self._mid_transfer()
        if end_stream:
            download.finish()

    def _mid_transfer(self):
        if self.settings.testcase == "keyupdate":
            initiate_key_update(self, "client")
        else:
            self.migration = asyncio.ensure_future(self._migrate())

    async def _migrate(self):
        """connectionmigration: go on from a new local UDP socket, on a new connection ID."""
        loop = asyncio.get_running_loop()
        old_address = self._transport.get_extra_info("sockname")
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0, 0, 0))
        # The new datagram endpoint delivers to this same protocol, and connection_made points transmit()
        # at the new socket. The old socket stays open: packets already on their way to it still count.
        self.new_transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        new_address = self._transport.get_extra_info("sockname")
        if self._quic._peer_cid_available:
            self.change_connection_id()
        else:
            log("no spare connection ID from the server; migrating on the current one")
        self.transmit()
        log(f"client migrated from {format_address(old_address)} to {format_address(new_address)}")


async def fetch(settings, urls, configuration, ticket_handler=None, early_data=False):
    """One connection that fetches `urls`, all at once. Returns the HandshakeCompleted event."""
    first = urlsplit(urls[0])
    downloads = [Download(url, settings.downloads) for url in urls]
    async with connect(
        first.hostname,
        first.port or 443,
        configuration=configuration,
        create_protocol=ClientProtocol,
        session_ticket_handler=ticket_handler,
        wait_connected=not early_data,
    ) as protocol:
        for download in downloads:
            protocol.request(download)
        protocol.transmit()  # with early_data, this sends the ClientHello and the 0-RTT requests together
        try:
            await asyncio.wait_for(
                asyncio.gather(*(download.done for download in downloads)), CONNECTION_DEADLINE_SECONDS
            )
        finally:
            for download in downloads:
                download.finish("connection ended before the response")
        if protocol.migration is not None:
            await protocol.migration  # raises if the migration itself failed
        if protocol.handshake is None:
            raise RuntimeError("every response arrived but the handshake never completed")
        if settings.testcase == "http3":
            protocol.close(error_code=H3_NO_ERROR)  # HTTP/3 closes with its own "no error" (RFC 9114 §8.1)
    # `connect` closed the connection, through the migrated socket when there is one; now that can go too.
    if protocol.new_transport is not None:
        protocol.new_transport.close()
    return protocol.handshake


async def run_client(settings):
    if not settings.requests:
        raise RuntimeError("REQUESTS is empty")
    os.makedirs(settings.downloads, exist_ok=True)
    testcase = settings.testcase

    def configuration():
        alpn = H3_ALPN if testcase == "http3" else [ALPN_HQ]
        result = settings.configuration(is_client=True, alpn_protocols=alpn)
        # The runner's certificates are self-signed: interop only, never verify.
        result.verify_mode = ssl.CERT_NONE
        if testcase == "transfer":
            result.max_stream_data = TRANSFER_STREAM_WINDOW_BYTES
            result.max_data = TRANSFER_CONNECTION_WINDOW_BYTES
        return result

    if testcase == "multiconnect":
        for url in settings.requests:
            await fetch(settings, [url], configuration())
        return

    if testcase not in ("resumption", "zerortt"):
        await fetch(settings, settings.requests, configuration())
        return

    first, rest = settings.requests[0], settings.requests[1:]
    tickets = []
    ticket_arrived = asyncio.Event()

    def keep_ticket(ticket):
        tickets.append(ticket)
        ticket_arrived.set()

    await fetch_with_ticket(settings, first, configuration(), keep_ticket, ticket_arrived)
    if not rest:
        return
    second = configuration()
    second.session_ticket = tickets[-1]
    if testcase == "resumption":
        # Without a limit in the ticket the client does not even offer early data: a plain resumption.
        second.session_ticket.max_early_data_size = None
    handshake = await fetch(settings, rest, second, early_data=testcase == "zerortt")
    if not handshake.session_resumed:
        raise RuntimeError("the second connection did not resume the session")
    if testcase == "zerortt" and not handshake.early_data_accepted:
        raise RuntimeError("the server did not accept 0-RTT")


async def fetch_with_ticket(settings, url, configuration, keep_ticket, ticket_arrived):
    """resumption/zerortt's first connection: fetch `url`, and close only once a session ticket arrived."""
    first = urlsplit(url)
    download = Download(url, settings.downloads)
    async with connect(
        first.hostname,
        first.port or 443,
        configuration=configuration,
        create_protocol=ClientProtocol,
        session_ticket_handler=keep_ticket,
    ) as protocol:
        protocol.request(download)
        protocol.transmit()
        try:
            await asyncio.wait_for(download.done, CONNECTION_DEADLINE_SECONDS)
        finally:
            download.finish("connection ended before the response")
        try:
            await asyncio.wait_for(ticket_arrived.wait(), TICKET_WAIT_SECONDS)
        except asyncio.TimeoutError:
            raise RuntimeError("the server sent no session ticket on the first connection") from None


def main():
    settings = Settings()
    log(f"aioquic {aioquic.__version__}, role {settings.role!r}, test case {settings.testcase!r}")
    ClientProtocol.settings = settings
    if settings.testcase not in SUPPORTED_CASES:
        log(f"test case {settings.testcase!r} is not supported")
        return EXIT_UNSUPPORTED
    if settings.role == "server":
        run = run_server
    elif settings.role == "client":
        run = run_client
    else:
        log(f"ROLE must be server or client, got {settings.role!r}")
        return 1
    try:
        asyncio.run(run(settings))
    except Exception as error:  # any failure of the case is exit 1, with the reason on stderr
        log(f"{settings.role} {settings.testcase} failed: {type(error).__name__}: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A CONNECT-UDP client (RFC 9298) written on aioquic, an independent QUIC + HTTP/3 stack in Python.

Run by tests/interop_aioquic.rs against `quiver-masque`'s proxy: opens several tunnels on one
connection, echoes datagrams of mixed sizes through each (HTTP Datagrams, context ID 0) and checks
them byte for byte, then asks for a denied target and expects 403 with Proxy-Status. Prints one line
per check; exits 0 when all hold, 1 otherwise.
"""

import argparse
import asyncio
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DatagramReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration

TIMEOUT = 10.0


class ConnectUdpClient(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # enable_webtransport is how aioquic sends SETTINGS_H3_DATAGRAM; the WebTransport setting it
        # adds is ignored by the proxy.
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.responses = {}
        self.datagrams = {}

    def quic_event_received(self, event):
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                waiter = self.responses.get(h3_event.stream_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(dict(h3_event.headers))
            elif isinstance(h3_event, DatagramReceived):
                queue = self.datagrams.get(h3_event.stream_id)
                if queue is not None:
                    queue.put_nowait(h3_event.data)

    async def open(self, authority, path):
        stream_id = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"connect-udp"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"capsule-protocol", b"?1"),
        ]
        waiter = asyncio.get_running_loop().create_future()
        self.responses[stream_id] = waiter
        self.datagrams[stream_id] = asyncio.Queue()
        self.h3.send_headers(stream_id, headers, end_stream=False)
        self.transmit()
        return stream_id, await asyncio.wait_for(waiter, TIMEOUT)

    async def echo(self, stream_id, payload):
        """Sends one UDP payload and waits for its echo, resending a few times (datagrams are unreliable)."""
        for _ in range(5):
            self.h3.send_datagram(stream_id, b"\x00" + payload)
            self.transmit()
            try:
                while True:
                    received = await asyncio.wait_for(self.datagrams[stream_id].get(), 1.0)
                    if received[:1] == b"\x00" and received[1:5] == payload[:4]:
                        return received[1:]
            except asyncio.TimeoutError:
                continue
        raise RuntimeError(f"no echo on stream {stream_id}")


def payload(tunnel, index, size):
    head = bytes([tunnel]) + index.to_bytes(3, "big")
    return head + bytes((tunnel * 7 + index * 31 + position) % 256 for position in range(size - 4))


async def run(args):
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536, server_name="localhost"
    )
    configuration.load_verify_locations(args.cafile)
    authority = f"localhost:{args.port}"
    async with connect("127.0.0.1", args.port, configuration=configuration, create_protocol=ConnectUdpClient) as client:
        tunnels = []
        for _ in range(args.tunnels):
            path = f"/.well-known/masque/udp/127.0.0.1/{args.target_port}/"
            stream_id, headers = await client.open(authority, path)
            if headers.get(b":status") != b"200" or headers.get(b"capsule-protocol") != b"?1":
                print(f"FAIL tunnel on stream {stream_id}: {headers}")
                return 1
            tunnels.append(stream_id)
        print(f"ok {len(tunnels)} tunnels open on streams {tunnels}")
        for index in range(args.count):
            for tunnel, stream_id in enumerate(tunnels):
                sent = payload(tunnel, index, 4 + (index * 97 + tunnel * 13) % 1100)
                echoed = await client.echo(stream_id, sent)
                if echoed != sent:
                    print(f"FAIL datagram {index} on stream {stream_id} differs")
                    return 1
        print(f"ok {args.count * len(tunnels)} datagrams echoed byte for byte")
        stream_id, headers = await client.open(authority, "/.well-known/masque/udp/127.0.0.2/53/")
        status, proxy_status = headers.get(b":status"), headers.get(b"proxy-status", b"")
        if status != b"403" or b"error=destination_ip_prohibited" not in proxy_status:
            print(f"FAIL denied target answered {status} {proxy_status}")
            return 1
        print(f"ok denied target: 403, Proxy-Status: {proxy_status.decode()}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="the proxy's UDP port on 127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True, help="a UDP echo server on 127.0.0.1")
    parser.add_argument("--cafile", required=True, help="PEM certificate to trust for the proxy")
    parser.add_argument("--tunnels", type=int, default=3)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()

"""Queries a DoQ server with dnspython (over aioquic) and prints one line per answer.

usage: dnspython_query.py PORT CA_PEM NAME:TYPE...
Each line: NAME TYPE RCODE ID RECORD... ; the certificate is verified against CA_PEM for "localhost".
"""

import sys

import dns.message
import dns.query
import dns.rcode


def main() -> None:
    port = int(sys.argv[1])
    ca_pem = sys.argv[2]
    for question in sys.argv[3:]:
        name, rdtype = question.split(":")
        query = dns.message.make_query(name, rdtype)
        answer = dns.query.quic(query, "127.0.0.1", port=port, verify=ca_pem, hostname="localhost", timeout=10)
        records = " ".join(rr.to_text() for rrset in answer.answer for rr in rrset)
        print(name, rdtype, dns.rcode.to_text(answer.rcode()), answer.id, records, flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A client of a reverse proxy (draft-ietf-core-groupcomm-proxy-07 §6.2) on aiocoap 0.4.17.

Usage:
    aiocoap_reverse_client.py --to ADDR:PORT --path a/b [--timeout T] [--wait S]
                              [--uri-host H] [--uri-port P] [--con]

Sends one GET to ADDR:PORT itself, with no forward-proxy option (no Proxy-Uri, no
Proxy-Scheme): the Uri-Path segments of --path, Uri-Host/Uri-Port if given (what a
Reply-From's CRI reference asks for, §6.2), and Multicast-Timeout (option 2, uint
seconds) with --timeout. aiocoap-client has no way to add an option it does not know,
and aiocoap's request API keeps only the first response, so the message is built with
aiocoap's Message class, sent on a plain UDP socket, and every response read for
--wait seconds (default: T + 1, or 3 without --timeout).

Output, one JSON object per response:
    code             "2.05"
    type             "CON", "NON", "ACK" or "RST"
    multicast_timeout   the Multicast-Timeout option's value (int), when present
    reply_from_hex   the Reply-From option (248) value, when present
    reply_from       its CBOR sequence as [[scheme, [host-hex, port]], ...] (JSON)
    payload          UTF-8 text
"""

import argparse
import io
import ipaddress
import json
import os
import socket
import time

import cbor2
from aiocoap import ACK, CON, NON, RST, Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import UintOption

MULTICAST_TIMEOUT = 2
REPLY_FROM = 248
TYPES = {CON: "CON", NON: "NON", ACK: "ACK", RST: "RST"}


def jsonable(item):
    """CBOR items as JSON: byte strings in hex, null as None."""
    if isinstance(item, bytes):
        return item.hex()
    if isinstance(item, list):
        return [jsonable(i) for i in item]
    return item


def sequence(raw):
    """Every item of a CBOR sequence (Reply-From holds one or two)."""
    stream = io.BytesIO(raw)
    items = []
    while stream.tell() < len(raw):
        items.append(jsonable(cbor2.CBORDecoder(stream).decode()))
    return items


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--to", required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--timeout", type=int)
    ap.add_argument("--wait", type=float)
    ap.add_argument("--uri-host")
    ap.add_argument("--uri-port", type=int)
    ap.add_argument("--con", action="store_true")
    args = ap.parse_args()

    host, _, port = args.to.rpartition(":")
    ip = ipaddress.ip_address(host.strip("[]"))
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    dest = (str(ip), int(port))

    m = Message(code=Code.GET, mtype=CON if args.con else NON)
    m.opt.uri_path = [s for s in args.path.split("/") if s]
    if args.uri_host is not None:
        m.opt.uri_host = args.uri_host
    if args.uri_port is not None:
        m.opt.uri_port = args.uri_port
    if args.timeout is not None:
        m.opt.add_option(UintOption(MULTICAST_TIMEOUT, args.timeout))
    m.mid = int.from_bytes(os.urandom(2), "big")
    m.token = os.urandom(4)

    s = socket.socket(family, socket.SOCK_DGRAM)
    s.sendto(m.encode(), dest)
    wait = args.wait if args.wait is not None else (args.timeout + 1 if args.timeout else 3)
    end = time.monotonic() + wait
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, src = s.recvfrom(2048)
        except socket.timeout:
            break
        r = Message.decode(data)
        if r.code == Code.EMPTY or r.token != m.token:
            continue
        if r.mtype == CON:
            ack = Message(code=Code.EMPTY, mtype=ACK)
            ack.mid = r.mid
            s.sendto(ack.encode(), src)
        out = {"code": r.code.dotted, "type": TYPES.get(r.mtype, str(r.mtype))}
        mt = r.opt.get_option(MULTICAST_TIMEOUT)
        if mt:
            raw = mt[0].encode()
            out["multicast_timeout"] = int.from_bytes(raw, "big") if raw else 0
        rf = r.opt.get_option(REPLY_FROM)
        if rf:
            raw = rf[0].encode()
            out["reply_from_hex"] = raw.hex()
            out["reply_from"] = sequence(raw)
        out["payload"] = r.payload.decode("utf-8", "replace")
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

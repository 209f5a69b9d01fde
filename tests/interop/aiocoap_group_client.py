#!/usr/bin/env python3
"""A groupcomm-proxy client built on aiocoap 0.4.17 that keeps every response.

Usage:
    aiocoap_group_client.py --proxy ADDR:PORT --uri coap://GROUP/PATH --timeout T
                            [--margin S] [--method GET|POST|PUT|DELETE|FETCH]
                            [--payload TEXT] [--con] [--oscore GROUP.json]

Sends one request for URI to the forward proxy at ADDR:PORT ("[v6]:port" for
IPv6) and prints one JSON line per response until T + margin seconds after
sending (draft-ietf-core-groupcomm-proxy-07 §5.1.1, §5.5.1), then exits 0.

aiocoap's own request API hands back only the first response to a request, so
this script builds the message with aiocoap's Message class, sends it on a
plain UDP socket and reads that socket itself. The request carries the target
as Proxy-Scheme + Uri-Host (+ Uri-Port) + Uri-Path/Uri-Query, and the
Multicast-Timeout option (§2: number 2, elective, unsafe, uint seconds).

With --oscore, GROUP.json holds the group fields of README.md (plus an
optional "ssn", the first Sender Sequence Number to use). The request is
protected in group mode by aiocoap's SimpleGroupContext.protect(). aiocoap's
protect() keeps only Uri-Host of the proxy options, so Proxy-Scheme, Uri-Host,
Uri-Port and Multicast-Timeout, all Class U (RFC 8613 §4.1, §2 above), are
added to the protected message afterwards. Every response is unprotected with
the context aiocoap picks from its kid and Group Flag (context_from_response),
as aiocoap's own client transport does; responses from different servers thus
verify under different recipient contexts.

Output, one JSON object per response:
    code          "2.05"; with --oscore the verified inner code, if it verified
    outer_code    with --oscore: the code of the message on the wire
    type          "CON", "NON", "ACK" or "RST"
    reply_from    "ip:port" / "[ip]:port" from the Reply-From option's CRI
                  (option 248, §3), or null when there is none
    reply_from_hex   the raw option value (when present)
    payload       UTF-8 text, or payload_hex when it is not text
    elapsed_ms    time since the request was sent
  with --oscore also:
    verified      true if aiocoap unprotected it
    kid           the server's Sender ID (hex) that the response named
    mode          "pairwise" or "group": the context aiocoap verified with
    error         why unprotecting failed (verified false)
"""

import argparse
import io
import ipaddress
import json
import os
import socket
import sys
import time
import urllib.parse

import cbor2
from aiocoap import ACK, CON, NON, RST, Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import UintOption

# Lives next to this script, which puts it on sys.path.
from aiocoap_peer import build_group_context, mode_of

MULTICAST_TIMEOUT = 2  # §11.1 suggested number; Table 1: elective, unsafe
REPLY_FROM = 248  # §11.1 suggested number
CRI_SCHEME_COAP = -1  # CRI scheme-id of coap (RFC 9844)

TYPE_NAMES = {CON: "CON", NON: "NON", ACK: "ACK", RST: "RST"}


def parse_addr(text):
    """ADDR:PORT or [V6]:PORT -> (family, sockaddr)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError("%r is not ADDR:PORT" % text)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ip = ipaddress.ip_address(host)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, (str(ip), int(port))


def format_addr(ip, port):
    return ("[%s]:%d" if ip.version == 6 else "%s:%d") % (ip, port)


def decode_reply_from(value):
    """The first CRI of a Reply-From value (§3): [-1, [host-ip, ?zone, ?port]].

    Returns "ip:port" ("[ip%zone]:port" with a zone), or raises ValueError."""
    stream = io.BytesIO(value)
    cri = cbor2.CBORDecoder(stream).decode()
    if not (isinstance(cri, list) and len(cri) >= 2 and cri[0] == CRI_SCHEME_COAP):
        raise ValueError("not a coap CRI: %r" % (cri,))
    authority = cri[1]
    if not (isinstance(authority, list) and authority and isinstance(authority[0], bytes)):
        raise ValueError("CRI authority is not a host-ip: %r" % (authority,))
    ip = ipaddress.ip_address(authority[0])
    rest = authority[1:]
    zone = rest.pop(0) if rest and isinstance(rest[0], str) else None
    port = rest.pop(0) if rest else 5683
    if rest or not isinstance(port, int):
        raise ValueError("unexpected CRI authority %r" % (authority,))
    text = format_addr(ip, port)
    if zone is not None:
        text = text.replace("]", "%" + zone + "]", 1)
    return text


def build_request(args, target):
    """The request as aiocoap Message, with the path and query of the target."""
    message = Message(code=getattr(Code, args.method.upper()))
    path = target.path[1:] if target.path.startswith("/") else target.path
    if path:
        message.opt.uri_path = [urllib.parse.unquote(s) for s in path.split("/")]
    if target.query:
        message.opt.uri_query = [urllib.parse.unquote(q) for q in target.query.split("&")]
    if args.payload is not None:
        message.payload = args.payload.encode()
    return message


def add_proxy_options(message, target, timeout):
    """Proxy-Scheme + Uri-Host (+ Uri-Port) and Multicast-Timeout (§5.1.1 steps 1, 3)."""
    message.opt.proxy_scheme = target.scheme
    # urllib gives the host without the brackets of an IPv6 literal, which is
    # what groxy's own client puts into Uri-Host as well.
    message.opt.uri_host = target.hostname
    if target.port is not None:
        message.opt.uri_port = target.port
    message.opt.add_option(UintOption(MULTICAST_TIMEOUT, timeout))


def describe(message, started):
    out = {
        "code": message.code.dotted,
        "type": TYPE_NAMES.get(message.mtype, str(message.mtype)),
        "elapsed_ms": int((time.monotonic() - started) * 1000),
    }
    reply_from = message.opt.get_option(REPLY_FROM)
    if reply_from:
        raw = reply_from[0].encode()
        out["reply_from_hex"] = raw.hex()
        try:
            out["reply_from"] = decode_reply_from(raw)
        except Exception as e:  # reported, never fatal: the test judges it
            out["reply_from"] = None
            out["reply_from_error"] = "%s: %s" % (type(e).__name__, e)
    else:
        out["reply_from"] = None
    try:
        out["payload"] = message.payload.decode("utf-8")
    except UnicodeDecodeError:
        out["payload_hex"] = message.payload.hex()
    return out


def unprotect(context, request_id, message, started):
    """Verify one response with aiocoap and describe its plaintext."""
    from aiocoap import oscore

    out = describe(message, started)
    out["outer_code"] = out.pop("code")
    if message.opt.oscore is None:
        out.update(code=out["outer_code"], verified=False, error="not OSCORE protected")
        return out
    try:
        unprotected_bag = oscore.verify_start(message)
        recipient = context.context_from_response(unprotected_bag)
        plain, _ = recipient.unprotect(message, request_id)
    except Exception as e:
        out.update(code=None, verified=False, error="%s: %s" % (type(e).__name__, e))
        return out
    out.update(
        code=plain.code.dotted,
        verified=True,
        kid=unprotected_bag.get(oscore.COSE_KID, b"").hex(),
        mode=mode_of(recipient),
    )
    out.pop("payload", None)
    out.pop("payload_hex", None)
    try:
        out["payload"] = plain.payload.decode("utf-8")
    except UnicodeDecodeError:
        out["payload_hex"] = plain.payload.hex()
    return out


def empty(mtype, mid):
    """An empty ACK or RST (RFC 7252 §4.2, §4.3)."""
    message = Message(code=Code.EMPTY)
    message.mtype = mtype
    message.mid = mid
    return message.encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxy", required=True, help="ADDR:PORT or [V6]:PORT")
    ap.add_argument("--uri", required=True, help="target, e.g. coap://224.0.1.187/hello")
    ap.add_argument("--timeout", type=int, required=True, help="Multicast-Timeout T' (s)")
    ap.add_argument("--margin", type=float, default=1.0, help="T - T' (s)")
    ap.add_argument("--method", default="GET")
    ap.add_argument("--payload")
    ap.add_argument("--con", action="store_true", help="send a Confirmable request")
    ap.add_argument("--oscore", help="group JSON: protect in group mode")
    args = ap.parse_args()

    family, proxy = parse_addr(args.proxy)
    target = urllib.parse.urlsplit(args.uri)
    if not target.scheme or not target.hostname:
        sys.exit("--uri must be an absolute URI with a host")

    request = build_request(args, target)
    context = request_id = None
    if args.oscore:
        with open(args.oscore) as f:
            cfg = json.load(f)
        context = build_group_context(cfg)
        context.sender_sequence_number = int(cfg.get("ssn", 0))
        # Group mode: the group context itself signs (RFC 10021 §5).
        request, request_id = context.protect(request)
    # Class U options go outside, after protection (RFC 8613 §4.1.3.3).
    add_proxy_options(request, target, args.timeout)

    token = os.urandom(8)
    request.token = token
    request.mid = int.from_bytes(os.urandom(2), "big")
    request.mtype = CON if args.con else NON
    datagram = request.encode()

    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    started = time.monotonic()
    sock.sendto(datagram, proxy)
    deadline = started + args.timeout + args.margin
    seen_con = set()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data, sender = sock.recvfrom(65536)
        except socket.timeout:
            break
        if (ipaddress.ip_address(sender[0].split("%")[0]), sender[1]) != (
            ipaddress.ip_address(proxy[0]),
            proxy[1],
        ):
            continue
        try:
            message = Message.decode(data)
        except Exception:
            continue
        if message.code == Code.EMPTY:
            continue  # the ACK of our CON request
        if message.token != token:
            # §5.5.1: responses not matching a live request are rejected.
            if message.mtype == CON:
                sock.sendto(empty(RST, message.mid), sender)
            continue
        if message.mtype == CON:
            sock.sendto(empty(ACK, message.mid), sender)
            if message.mid in seen_con:
                continue
            seen_con.add(message.mid)
        if context is None:
            out = describe(message, started)
        else:
            out = unprotect(context, request_id, message, started)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

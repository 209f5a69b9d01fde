#!/usr/bin/env python3
"""A real aiocoap 0.4.17 Group OSCORE (or plain CoAP) server over UDP, for groxy's
interop tests.

Usage: aiocoap_server.py CONFIG.json (fields in README.md next to this file).

Requests are handled by aiocoap's own server stack (udp6 transport,
OscoreSiteWrapper, CredentialsMap lookup). Additions: resources refuse
requests that were not OSCORE protected (GroupOnlyResource), replays are
reported the way aiocoap intends (aiocoap_peer.GroupContext), and the response
mode can be switched to group mode (GroupRespondingContext). With
"oscore": false it serves the same resources as plain CoAP instead (no group
fields needed). Prints "READY <port>" once listening and serves until stdin
reaches EOF or SIGTERM arrives.
"""

import asyncio
import json
import os
import signal
import sys
import threading

import aiocoap
from aiocoap import error, resource
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiocoap.transports.oscore import OSCOREAddress

# Lives next to this script, which puts it on sys.path.
from aiocoap_peer import GroupContext, build_group_context

# "request_log" (optional): a file that gets one line per request a Group OSCORE
# resource renders, so a test can tell how many requests reached this server
# (e.g. none for an answer a proxy served from its cache). Set by serve().
REQUEST_LOG = None


class GroupRespondingContext(GroupContext):
    """Answers requests in group mode instead of aiocoap's default pairwise.

    OscoreSiteWrapper protects responses with the context returned by the
    recipient aspect's context_for_response(); for a SimpleGroupContext that is
    always a pairwise context. Returning the group context itself makes
    aiocoap sign the response (Group Flag set, kid included).
    """

    def get_oscore_context_for(self, unprotected):
        aspect = super().get_oscore_context_for(unprotected)
        if aspect is not None:
            aspect.context_for_response = lambda: self
        return aspect


class GroupOnlyResource(resource.Resource):
    """Refuses requests that did not come through the group context.

    OscoreSiteWrapper passes requests without an OSCORE option straight to the
    site; it marks the ones it unprotected by giving them an OSCOREAddress as
    remote. The group context is the only OSCORE credential configured, so
    that mark means "verified Group OSCORE (group or pairwise mode)".
    """

    async def render(self, request):
        if not isinstance(request.remote, OSCOREAddress):
            raise error.Unauthorized("Group OSCORE required")
        if REQUEST_LOG is not None:
            # Appended and closed at once: the test reads it while this runs.
            with open(REQUEST_LOG, "a") as log:
                log.write("%s /%s\n" % (request.code, "/".join(request.opt.uri_path)))
        return await super().render(request)


class PlainHello(resource.Resource):
    """GET /hello: a fixed text naming this server."""

    def __init__(self, payload):
        super().__init__()
        self.payload = payload

    async def render_get(self, request):
        return aiocoap.Message(code=aiocoap.CONTENT, payload=self.payload)


class PlainEcho(resource.Resource):
    """POST /echo: the request payload back."""

    async def render_post(self, request):
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)


class Hello(GroupOnlyResource, PlainHello):
    def __init__(self, sender_id):
        super().__init__(b"hello from aiocoap " + sender_id.hex().encode())


class Echo(GroupOnlyResource, PlainEcho):
    pass


def bound_port(context):
    """The UDP port the (only) transport of a server context listens on.

    aiocoap has no public accessor; the socket sits at the bottom of the
    token manager -> message manager -> udp6 interface chain.
    """
    (token_manager,) = context.request_interfaces
    udp6 = token_manager.token_interface.message_interface
    return udp6.transport.get_extra_info("socket").getsockname()[1]


def stop_on_stdin_eof(loop, stop):
    """Set stop once stdin is closed.

    A thread, because stdin may be a pipe, a tty or /dev/null and the event
    loop cannot watch all of these. It uses os.read: a daemon thread still
    blocked inside sys.stdin's buffered reader makes interpreter shutdown
    abort (after SIGTERM) because it holds the reader's lock.
    """

    def wait_for_eof():
        while os.read(sys.stdin.fileno(), 4096):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, daemon=True).start()


def oscore_site(cfg):
    """The Group OSCORE server: /hello and /echo behind OscoreSiteWrapper."""
    response_mode = cfg.get("response_mode", "pairwise")
    if response_mode == "pairwise":
        group = build_group_context(cfg)
    elif response_mode == "group":
        group = build_group_context(cfg, GroupRespondingContext)
    else:
        raise ValueError("response_mode must be 'pairwise' or 'group'")

    site = resource.Site()
    site.add_resource(["hello"], Hello(group.sender_id))
    site.add_resource(["echo"], Echo())
    credentials = CredentialsMap()
    credentials[":grp"] = group
    return OscoreSiteWrapper(site, credentials)


def plain_site(cfg):
    """The plain CoAP server: /hello ("hello from <name>") and /echo, no OSCORE."""
    site = resource.Site()
    name = cfg.get("name", "aiocoap")
    site.add_resource(["hello"], PlainHello(("hello from %s" % name).encode()))
    site.add_resource(["echo"], PlainEcho())
    return site


async def serve(cfg):
    global REQUEST_LOG
    REQUEST_LOG = cfg.get("request_log")
    oscore = cfg.get("oscore", True)
    if not isinstance(oscore, bool):
        raise ValueError("oscore must be true or false")
    site = oscore_site(cfg) if oscore else plain_site(cfg)

    # Only udp6: the default transport list would also open TCP/TLS servers.
    context = await aiocoap.Context.create_server_context(
        site,
        bind=(cfg["bind"], cfg["port"]),
        # [group, interface] pairs or bare interface names, as aiocoap takes them.
        multicast=cfg.get("multicast", []),
        transports=["udp6"],
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stop_on_stdin_eof(loop, stop)

    print("READY %d" % bound_port(context), flush=True)
    await stop.wait()
    await context.shutdown()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: aiocoap_server.py CONFIG.json")
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    asyncio.run(serve(cfg))


if __name__ == "__main__":
    main()

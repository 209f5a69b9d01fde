#!/usr/bin/env python3
"""Group OSCORE oracle backed by aiocoap 0.4.17, speaking JSON lines.

Each line on stdin is one JSON request, each reply is one JSON line on stdout.
The protocol is described in README.md next to this file. All cryptography is
done by aiocoap's own security context objects, so groxy's tests get an
independent implementation to compare against; this script only moves bytes
between JSON and aiocoap.

aiocoap_server.py imports GroupContext and build_group_context from here, so
that both scripts configure groups identically.
"""

import itertools
import json
import sys
from typing import NamedTuple

from aiocoap import Message
from aiocoap.message import Direction
from aiocoap import oscore

# The algorithms are fixed for groxy's interop tests (see README.md).
AES_CCM_16_64_128 = oscore.algorithms["AES-CCM-16-64-128"]


class GroupContext(oscore.SimpleGroupContext):
    """aiocoap's SimpleGroupContext with its replay detection made reportable.

    In 0.4.17 the recipient aspects handed out by get_oscore_context_for
    (_GroupContextAspect, _PairwiseContextAspect) lack the `echo_recovery`
    attribute that CanUnprotect.unprotect reads once it has detected a reused
    sequence number, so a replayed request raises AttributeError instead of
    ReplayError (aiocoap's server then answers an unprotected 5.00). None is
    the value aiocoap uses for "no Echo-based recovery", which is what an
    ephemeral group context without persistence means.
    """

    def get_oscore_context_for(self, unprotected):
        aspect = super().get_oscore_context_for(unprotected)
        if aspect is not None:
            aspect.echo_recovery = None
        return aspect


def build_group_context(cfg, context_class=GroupContext):
    """Build a group context from the hex fields of a setup message."""
    h = bytes.fromhex
    return context_class(
        alg_aead=AES_CCM_16_64_128,
        hashfun=oscore.hashfunctions["sha256"],
        alg_signature=oscore.Ed25519(),
        alg_group_enc=AES_CCM_16_64_128,
        alg_pairwise_key_agreement=oscore.EcdhSsHkdf256(),
        group_id=h(cfg["gid"]),
        master_secret=h(cfg["master_secret"]),
        master_salt=h(cfg["master_salt"]),
        sender_id=h(cfg["sender_id"]),
        # aiocoap's Ed25519 takes the raw 32-byte seed as private key.
        private_key=h(cfg["private_key"]),
        # Credentials are opaque CCS bytes; aiocoap only parses the key out of
        # them and uses the exact bytes in external_aad and pairwise keys.
        sender_auth_cred=h(cfg["sender_cred"]),
        peers=peers_of(cfg),
        group_manager_cred=h(cfg["gm_cred"]),
    )


def peers_of(cfg):
    """The setup's peers by kid; with "deterministic_kid", also the group's
    Deterministic Client (cacheable-oscore-02 §3.4.1), which aiocoap 0.4.17
    takes as a peer whose credential is its DETERMINISTIC_KEY marker: its
    Sender Key is then derived like any peer's."""
    h = bytes.fromhex
    peers = {h(kid): h(ccs) for kid, ccs in cfg["peers"].items()}
    if cfg.get("deterministic_kid"):
        peers[h(cfg["deterministic_kid"])] = oscore.DETERMINISTIC_KEY
    return peers


def mode_of(context):
    """Name the mode in which aiocoap (un)protected with this context object."""
    if isinstance(context, oscore._DeterministicUnprotectProtoAspect):
        return "deterministic"
    if isinstance(context, oscore._PairwiseContextAspect):
        return "pairwise"
    if isinstance(context, (oscore.SimpleGroupContext, oscore._GroupContextAspect)):
        return "group"
    raise TypeError("unexpected context type %s" % type(context).__name__)


def decode(coap_hex, outgoing):
    """Parse a serialized CoAP message.

    Message.decode marks messages as received; aiocoap's protect() and
    encode() insist on messages marked as outgoing, so plaintexts that are
    about to be protected get re-marked.
    """
    message = Message.decode(bytes.fromhex(coap_hex))
    if outgoing:
        message.direction = Direction.OUTGOING
    return message


def encode_like(message, template):
    """Serialize message with the type, message ID and token of template.

    aiocoap builds protected and unprotected messages without any messaging
    layer fields (those are normally filled in by its transports), so they
    are copied from the message the caller handed in.
    """
    message.mtype = template.mtype
    message.mid = template.mid
    message.token = template.token
    message.direction = Direction.OUTGOING
    return message.encode().hex()


class SentRequest(NamedTuple):
    """A request this script protected: what unprotecting a response needs."""

    context: object
    request_id: oscore.RequestIdentifiers


class ReceivedRequest(NamedTuple):
    """A request this script unprotected: what protecting a response needs."""

    kid: bytes
    request_id: oscore.RequestIdentifiers


class Peer:
    def __init__(self):
        self.context = None
        self.requests = {}
        # Handles are never reused, not even across setups, so a stale handle
        # fails instead of silently naming another request.
        self.handles = itertools.count()

    def handle(self, msg):
        op = msg.get("op")
        if op == "setup":
            return self.setup(msg)
        if self.context is None:
            raise RuntimeError("no setup yet")
        if op == "set_ssn":
            self.context.sender_sequence_number = int(msg["value"])
            return {}
        if op == "protect_request":
            return self.protect_request(msg)
        if op == "protect_deterministic_request":
            return self.protect_deterministic_request(msg)
        if op == "unprotect_request":
            return self.unprotect_request(msg)
        if op == "protect_response":
            return self.protect_response(msg)
        if op == "unprotect_response":
            return self.unprotect_response(msg)
        raise ValueError("unknown op %r" % op)

    def setup(self, msg):
        self.context = build_group_context(msg)
        # Handles refer to the replaced context's keys and counters.
        self.requests = {}
        return {}

    def remember(self, record):
        handle = next(self.handles)
        self.requests[handle] = record
        return handle

    def recall(self, handle, kind):
        record = self.requests.get(handle)
        if not isinstance(record, kind):
            raise KeyError("no %s under request handle %r" % (kind.__name__, handle))
        return record

    def sending_context(self, mode, peer_kid):
        """The group context itself signs (group mode); pairwise_for derives
        the pairwise keys toward one member."""
        if mode == "group":
            return self.context
        if mode == "pairwise":
            return self.context.pairwise_for(peer_kid)
        raise ValueError("mode must be 'group' or 'pairwise', not %r" % mode)

    def protect_request(self, msg):
        peer = bytes.fromhex(msg["peer"]) if msg["mode"] == "pairwise" else None
        context = self.sending_context(msg["mode"], peer)
        plain = decode(msg["coap"], outgoing=True)
        protected, request_id = context.protect(plain)
        handle = self.remember(SentRequest(context, request_id))
        return {"coap": encode_like(protected, plain), "request": handle}

    def protect_deterministic_request(self, msg):
        """A Deterministic Request (cacheable-oscore-02 §3.4.2) as aiocoap's
        Deterministic Client aspect composes it; "server" (hex, optional) is
        the one server whose responses it accepts, else any (§3.4.5)."""
        server = bytes.fromhex(msg["server"]) if msg.get("server") else None
        context = self.context.for_sending_deterministic_requests(
            bytes.fromhex(msg["deterministic_kid"]), server
        )
        plain = decode(msg["coap"], outgoing=True)
        protected, request_id = context.protect(plain)
        handle = self.remember(SentRequest(context, request_id))
        return {"coap": encode_like(protected, plain), "request": handle}

    def unprotect_request(self, msg):
        protected = decode(msg["coap"], outgoing=False)
        # The same lookup aiocoap's OscoreSiteWrapper does (via CredentialsMap):
        # ID Context and kid select the member, the Group Flag selects a group
        # mode or a pairwise mode recipient context.
        unprotected_bag = oscore.verify_start(protected)
        recipient = self.context.get_oscore_context_for(unprotected_bag)
        if recipient is None:
            raise LookupError(
                "no recipient context for kid %s / kid context %s"
                % (
                    unprotected_bag.get(oscore.COSE_KID, b"").hex(),
                    unprotected_bag.get(oscore.COSE_KID_CONTEXT, b"").hex(),
                )
            )
        plain, request_id = recipient.unprotect(protected)
        handle = self.remember(ReceivedRequest(recipient.recipient_id, request_id))
        return {
            "coap": encode_like(plain, protected),
            "request": handle,
            "mode": mode_of(recipient),
            "kid": recipient.recipient_id.hex(),
        }

    def protect_response(self, msg):
        received = self.recall(msg["request"], ReceivedRequest)
        context = self.sending_context(msg["mode"], received.kid)
        if msg.get("fresh_piv"):
            # protect() reuses the request's nonce only while this flag is set
            # (it clears it on first use); clearing it makes aiocoap take a
            # Partial IV from its own sequence number.
            received.request_id.can_reuse_nonce = False
        plain = decode(msg["coap"], outgoing=True)
        protected, _ = context.protect(plain, received.request_id)
        return {"coap": encode_like(protected, plain)}

    def unprotect_response(self, msg):
        sent = self.recall(msg["request"], SentRequest)
        protected = decode(msg["coap"], outgoing=False)
        # As aiocoap's client transport does: the sending context picks the
        # recipient context from the response's kid and Group Flag.
        unprotected_bag = oscore.verify_start(protected)
        recipient = sent.context.context_from_response(unprotected_bag)
        plain, _ = recipient.unprotect(protected, sent.request_id)
        return {
            "coap": encode_like(plain, protected),
            "mode": mode_of(recipient),
            "kid": unprotected_bag.get(oscore.COSE_KID, b"").hex(),
        }


def main():
    peer = Peer()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = {"ok": True, **peer.handle(json.loads(line))}
        except Exception as e:  # any failure is a reply, never an exit
            reply = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

//! groxy's CoAP codec against an independent one, coap-lite 0.13 (proptest).
//!
//! Most datagrams in the other tests are built by groxy's encoder (`coap::build::encode`)
//! and read back by groxy's parser (`coap::MessageView`), so a bug shared by both sides
//! (a wrong extended-delta offset, say) would pass them all. Here each side is checked
//! against coap-lite, written independently of groxy:
//!
//! 1. every datagram groxy builds, coap-lite parses to the same message;
//! 2. every datagram coap-lite builds, `MessageView` parses to the same message;
//! 3. both build the same bytes for the same message (RFC 7252 §3.1 leaves no choice in
//!    the option encoding once the shortest delta and length forms are used, as both do);
//! 4. on arbitrary and on mutated datagrams the two parsers agree: whatever groxy accepts,
//!    coap-lite accepts as the same message, and whatever groxy rejects, coap-lite rejects
//!    too, except where coap-lite is laxer than RFC 7252 §3 (see [`coap_lite_laxity`]).
//!
//! "The same message" is: type, code, Message ID, token, every option as (number, value)
//! in message order, repeated options included, and the payload (RFC 7252 §3, §3.1).
//! coap-lite keeps options in a map from number to the list of that number's values, so
//! it can only represent them sorted by number with repeats in order, which is also what
//! §3.1 requires on the wire; groxy's `encode` sorts its input stably, so the generated
//! options (in any order) are compared after a stable sort.
//!
//! Known difference in building, not a parsing disagreement: coap-lite writes no payload
//! for a message of code 0.00 even when given one. Such a message is not well-formed
//! anyway (RFC 7252 §4.1: nothing may follow an Empty message's Message ID), so the
//! properties that build with coap-lite give code-0.00 messages no payload.
//!
//! Failure persistence is off so that running the tests writes no files.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
use groxy::coap::build::encode;
use groxy::coap::{MessageView, ViewError};
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use proptest::sample::select;

/// One CoAP message as compared: options in message order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg {
    mtype: u8,
    code: u8,
    mid: u16,
    token: Vec<u8>,
    options: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Msg {
    /// The message with its options as they go on the wire: sorted by number, stably,
    /// so that repeated options keep their order (RFC 7252 §3.1, §5.4.5).
    fn on_the_wire(&self) -> Msg {
        let mut m = self.clone();
        m.options.sort_by_key(|(n, _)| *n);
        m
    }

    fn groxy_encode(&self) -> Vec<u8> {
        let mut opts: Vec<(u16, &[u8])> = self
            .options
            .iter()
            .map(|(n, v)| (*n, v.as_slice()))
            .collect();
        encode(
            self.mtype,
            self.code,
            self.mid,
            &self.token,
            &mut opts,
            &self.payload,
        )
    }

    fn coap_lite_packet(&self) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(match self.mtype {
            0 => MessageType::Confirmable,
            1 => MessageType::NonConfirmable,
            2 => MessageType::Acknowledgement,
            _ => MessageType::Reset,
        });
        p.header.code = MessageClass::from(self.code);
        p.header.message_id = self.mid;
        p.set_token(self.token.clone());
        // add_option appends to the number's list: repeated options keep their order.
        for (n, v) in &self.options {
            p.add_option(CoapOption::from(*n), v.clone());
        }
        p.payload = self.payload.clone();
        p
    }

    fn coap_lite_encode(&self) -> Vec<u8> {
        self.coap_lite_packet()
            .to_bytes()
            .unwrap_or_else(|e| panic!("coap-lite cannot build {self:?}: {e:?}"))
    }

    /// What groxy's parser reads.
    fn from_view(v: &MessageView<'_>) -> Msg {
        Msg {
            mtype: v.mtype(),
            code: v.code(),
            mid: v.message_id(),
            token: v.token().to_vec(),
            options: v.options().map(|(n, v)| (n, v.to_vec())).collect(),
            payload: v.payload().to_vec(),
        }
    }

    /// What coap-lite's parser reads, with its version (groxy's view has only version 1).
    fn from_packet(p: &Packet) -> (u8, Msg) {
        let mtype = match p.header.get_type() {
            MessageType::Confirmable => 0,
            MessageType::NonConfirmable => 1,
            MessageType::Acknowledgement => 2,
            MessageType::Reset => 3,
        };
        let options = p
            .options()
            .flat_map(|(n, vs)| vs.iter().map(move |v| (*n, v.clone())))
            .collect();
        let m = Msg {
            mtype,
            code: u8::from(p.header.code),
            mid: p.header.message_id,
            token: p.get_token().to_vec(),
            options,
            payload: p.payload.clone(),
        };
        (p.header.get_version(), m)
    }
}

/// groxy's parse of `bytes`.
fn groxy_parse(bytes: &[u8]) -> Result<Msg, ViewError> {
    MessageView::parse(bytes).map(|v| Msg::from_view(&v))
}

/// coap-lite's parse of `bytes`: (version, message).
fn coap_lite_parse(bytes: &[u8]) -> Option<(u8, Msg)> {
    Packet::from_bytes(bytes).ok().map(|p| Msg::from_packet(&p))
}

/// Where coap-lite 0.13's parser accepts what RFC 7252 §3 makes a message format error
/// (or a message to ignore), and groxy's rejects it; groxy's verdict is the RFC's:
/// - a version other than 1: "Messages with unknown version numbers MUST be silently
///   ignored" (§3); coap-lite does not look at the version;
/// - a payload marker followed by no payload: "MUST be processed as a message format
///   error" (§3); coap-lite reads an empty payload.
///
/// Returns whether `err` is one of these, after checking that coap-lite's reading
/// `lite` is the one described.
fn coap_lite_laxity(bytes: &[u8], err: ViewError, lite: &(u8, Msg)) -> bool {
    match err {
        ViewError::Version => {
            assert_ne!(
                lite.0, 1,
                "groxy says version, coap-lite reads 1: {bytes:02x?}"
            );
            true
        }
        ViewError::EmptyPayload => {
            assert_eq!(bytes.last(), Some(&0xff), "{bytes:02x?}");
            assert!(lite.1.payload.is_empty(), "{bytes:02x?}: {lite:?}");
            // Everything before the marker is a message both read the same way.
            let before = groxy_parse(&bytes[..bytes.len() - 1]).unwrap();
            assert_eq!(before, lite.1, "{bytes:02x?}");
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------- generators

/// Option numbers over the whole range: small ones (one-nibble deltas, repeats likely),
/// around the extended-delta boundaries 13 and 269 (RFC 7252 §3.1), the registered
/// options, and any up to 65535.
fn option_number() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => 0u16..=15,
        2 => 0u16..=300,
        2 => select(vec![
            1u16, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 17, 20, 21, 23, 27, 28, 35, 39, 60, 258,
            292, 2049, 2053,
        ]),
        1 => select(vec![12u16, 13, 14, 267, 268, 269, 270, 65534, 65535]),
        2 => any::<u16>(),
    ]
}

/// Option values: empty, up to the one-nibble limit, one-byte extended (13..=268),
/// two-byte extended (269 and more), rarely a few kilobytes.
fn option_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(Vec::new()),
        4 => pvec(any::<u8>(), 1..=12),
        2 => pvec(any::<u8>(), 13..=268),
        2 => pvec(any::<u8>(), 269..=800),
        1 => pvec(any::<u8>(), 801..=4000),
        1 => select(vec![12usize, 13, 14, 267, 268, 269, 270, 524, 525]).prop_map(|n| vec![0xff; n]),
    ]
}

/// Options in any order, some numbers repeated (a number with 1-3 values each).
fn options() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    pvec((option_number(), pvec(option_value(), 1..=3)), 0..=8).prop_flat_map(|groups| {
        let flat: Vec<(u16, Vec<u8>)> = groups
            .into_iter()
            .flat_map(|(n, vs)| vs.into_iter().map(move |v| (n, v)))
            .collect();
        Just(flat).prop_shuffle()
    })
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        3 => pvec(any::<u8>(), 1..=16),
        2 => pvec(any::<u8>(), 17..=1500),
        1 => pvec(any::<u8>(), 1501..=8000),
    ]
}

/// Codes over the whole byte: every class, registered or not, and 0.00.
fn code() -> impl Strategy<Value = u8> {
    prop_oneof![
        select(vec![
            0x00u8, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x41, 0x44, 0x45, 0x5f, 0x80, 0x84,
            0x8d, 0x9d, 0xa0, 0xa5, 0xa8
        ]),
        any::<u8>(),
    ]
}

fn message() -> impl Strategy<Value = Msg> {
    (
        0u8..4,
        code(),
        any::<u16>(),
        pvec(any::<u8>(), 0..=8),
        options(),
        payload(),
    )
        .prop_map(|(mtype, code, mid, token, options, payload)| Msg {
            mtype,
            code,
            mid,
            token,
            options,
            payload,
        })
}

/// A message coap-lite can build as given: code 0.00 carries no payload (see the top).
fn buildable_by_coap_lite() -> impl Strategy<Value = Msg> {
    message().prop_map(|mut m| {
        if m.code == 0 {
            m.payload.clear();
        }
        m
    })
}

/// One change to a datagram.
#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    AppendMarker,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        Just(Mutation::AppendMarker),
    ]
}

/// Applies `m`; positions are taken modulo the length, and favour the front (header,
/// token and the first options, where a change is most often still parseable).
fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, len: usize| {
        if len == 0 {
            0
        } else if i.is_multiple_of(2) {
            i / 2 % len.min(24)
        } else {
            i / 2 % len
        }
    };
    match *m {
        Mutation::Set(i, b) if !bytes.is_empty() => {
            let i = at(i, bytes.len());
            bytes[i] = b;
        }
        Mutation::Flip(i, bit) if !bytes.is_empty() => {
            let i = at(i, bytes.len());
            bytes[i] ^= 1 << bit;
        }
        Mutation::Insert(i, b) => {
            let i = at(i, bytes.len() + 1);
            bytes.insert(i, b);
        }
        Mutation::Remove(i) if !bytes.is_empty() => {
            let i = at(i, bytes.len());
            bytes.remove(i);
        }
        Mutation::Truncate(i) => {
            let n = at(i, bytes.len() + 1);
            bytes.truncate(n);
        }
        Mutation::AppendMarker => bytes.push(0xff),
        _ => {}
    }
}

/// Property 4 on one datagram.
fn parsers_agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let ours = groxy_parse(bytes);
    let theirs = coap_lite_parse(bytes);
    match (&ours, &theirs) {
        (Ok(m), Some((version, lite))) => {
            prop_assert_eq!(*version, 1);
            prop_assert_eq!(m, lite, "{:02x?}", bytes);
        }
        (Ok(m), None) => {
            prop_assert!(
                false,
                "groxy accepts, coap-lite rejects {:02x?}: {:?}",
                bytes,
                m
            )
        }
        (Err(e), Some(lite)) => prop_assert!(
            coap_lite_laxity(bytes, *e, lite),
            "groxy rejects ({:?}), coap-lite accepts {:02x?}: {:?}",
            e,
            bytes,
            lite
        ),
        (Err(_), None) => {}
    }
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    // `GROXY_PROPTEST_SCALE` multiplies the cases for longer soak runs, as in properties.rs.
    let scale = std::env::var("GROXY_PROPTEST_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    ProptestConfig {
        cases: cases.saturating_mul(scale),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Property 1 (RFC 7252 §3, §3.1): coap-lite reads groxy's datagrams as the message
    /// groxy was asked to build, options sorted stably by number; and so does groxy.
    #[test]
    fn rfc7252_s3_coap_lite_parses_what_groxy_builds(m in message()) {
        let bytes = m.groxy_encode();
        let want = m.on_the_wire();
        let (version, lite) = coap_lite_parse(&bytes)
            .ok_or_else(|| TestCaseError::fail(format!("coap-lite rejects {bytes:02x?}")))?;
        prop_assert_eq!(version, 1);
        prop_assert_eq!(&lite, &want);
        prop_assert_eq!(groxy_parse(&bytes), Ok(want));
    }

    /// Property 2 (RFC 7252 §3, §3.1): groxy's `MessageView` reads coap-lite's datagrams
    /// as the message coap-lite was asked to build.
    #[test]
    fn rfc7252_s3_groxy_parses_what_coap_lite_builds(m in buildable_by_coap_lite()) {
        let bytes = m.coap_lite_encode();
        prop_assert_eq!(groxy_parse(&bytes), Ok(m.on_the_wire()), "{:02x?}", bytes);
    }

    /// Property 3 (RFC 7252 §3.1): both build the same bytes, so neither encoder picks a
    /// longer delta or length form than the other.
    #[test]
    fn rfc7252_s3_1_both_encoders_build_the_same_bytes(m in buildable_by_coap_lite()) {
        prop_assert_eq!(m.groxy_encode(), m.coap_lite_encode());
    }

    /// Property 4 (RFC 7252 §3): on well-formed datagrams changed in one to four places
    /// (header, token length, option nibbles and extensions, marker, truncation), the two
    /// parsers agree on accept or reject and on what they read.
    #[test]
    fn rfc7252_s3_parsers_agree_on_mutated_datagrams(
        m in message(),
        muts in pvec(mutation(), 1..=4),
    ) {
        let mut bytes = m.groxy_encode();
        for x in &muts {
            mutate(&mut bytes, x);
        }
        parsers_agree(&bytes)?;
    }

    /// Property 4 on arbitrary bytes, most of them with a version-1 header so that the
    /// parsers get past the first byte.
    #[test]
    fn rfc7252_s3_parsers_agree_on_arbitrary_bytes(
        first in prop_oneof![3 => 0x40u8..=0x7f, 1 => any::<u8>()],
        rest in pvec(any::<u8>(), 0..=64),
    ) {
        let mut bytes = vec![first];
        bytes.extend(rest);
        parsers_agree(&bytes)?;
    }
}

/// The extended-delta and extended-length boundaries of RFC 7252 §3.1 exhaustively, in
/// both directions: one-nibble (≤ 12), 8-bit (13..=268, minus 13), 16-bit (≥ 269, minus
/// 269); delta 0 for a repeat; the largest number, 65535; and each as the last bytes of
/// the message (no payload) so that an extension that runs to the end is read.
#[test]
fn rfc7252_s3_1_every_delta_and_length_boundary_both_ways() {
    let numbers = [0u16, 1, 12, 13, 14, 268, 269, 270, 525, 526, 65535];
    let lengths = [0usize, 1, 12, 13, 14, 268, 269, 270, 525, 1024];
    let mut checked = 0;
    for first in numbers {
        for second in numbers.iter().filter(|&&n| n >= first) {
            for len in lengths {
                for payload in [&b""[..], b"p"] {
                    let m = Msg {
                        mtype: 1,
                        code: 0x45,
                        mid: 0x1234,
                        token: vec![0xab; 3],
                        options: vec![(first, vec![0x5a; len]), (*second, vec![0xa5; 13])],
                        payload: payload.to_vec(),
                    };
                    let ours = m.groxy_encode();
                    assert_eq!(ours, m.coap_lite_encode(), "{m:?}");
                    assert_eq!(coap_lite_parse(&ours), Some((1, m.clone())), "{m:?}");
                    assert_eq!(groxy_parse(&ours), Ok(m.clone()));
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 66 * 10 * 2);
}

/// RFC 7252 §3: the two documented places where coap-lite accepts and groxy does not,
/// pinned so that a change on either side shows: a payload marker with nothing after it,
/// and version 2.
#[test]
fn rfc7252_s3_format_errors_groxy_rejects_and_coap_lite_accepts() {
    let marker_only = [0x51, 0x45, 0x00, 0x01, 0xaa, 0xb1, b'x', 0xff];
    assert_eq!(groxy_parse(&marker_only), Err(ViewError::EmptyPayload));
    let (_, lite) = coap_lite_parse(&marker_only).expect("coap-lite is lax here");
    assert!(coap_lite_laxity(
        &marker_only,
        ViewError::EmptyPayload,
        &(1, lite)
    ));

    let version2 = [0x91, 0x45, 0x00, 0x01, 0xaa];
    assert_eq!(groxy_parse(&version2), Err(ViewError::Version));
    let lite = coap_lite_parse(&version2).expect("coap-lite reads any version");
    assert_eq!(lite.0, 2);
}

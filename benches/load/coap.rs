//! Just enough CoAP (RFC 7252 §3) for the load generator, the origin and the in-process
//! devices: requests are a pre-encoded template whose Message ID and token are patched in
//! place, answers are written straight into a send buffer. Nothing here allocates per
//! message, so that core 0 spends its time on syscalls, not on the bench.

pub const CON: u8 = 0;
pub const NON: u8 = 1;
pub const ACK: u8 = 2;

pub const GET: u8 = 0x01;
pub const CONTENT: u8 = 0x45;

pub const URI_HOST: u16 = 3;
pub const URI_PORT: u16 = 7;
pub const URI_PATH: u16 = 11;
pub const CONTENT_FORMAT: u16 = 12;
pub const PROXY_URI: u16 = 35;
pub const PROXY_SCHEME: u16 = 39;
pub const MULTICAST_TIMEOUT: u16 = 2;

/// Length of the tokens the generator uses (slot in the top 16 bits, sequence below).
pub const TOKEN_LEN: usize = 8;

fn nibble(v: usize) -> (u8, Vec<u8>) {
    match v {
        0..=12 => (v as u8, vec![]),
        13..=268 => (13, vec![(v - 13) as u8]),
        _ => (14, ((v - 269) as u16).to_be_bytes().to_vec()),
    }
}

/// Appends options (sorted by the caller) in the delta encoding of RFC 7252 §3.1.
pub fn put_options(out: &mut Vec<u8>, opts: &[(u16, Vec<u8>)]) {
    let mut prev = 0u16;
    for (n, v) in opts {
        assert!(*n >= prev, "options must be sorted");
        let (d, dx) = nibble((n - prev) as usize);
        let (l, lx) = nibble(v.len());
        out.push(d << 4 | l);
        out.extend_from_slice(&dx);
        out.extend_from_slice(&lx);
        out.extend_from_slice(v);
        prev = *n;
    }
}

/// A minimal unsigned integer option value (RFC 7252 §3.2).
pub fn uint(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

/// A GET request with an 8-byte token; Message ID at [2..4], token at [4..12].
pub fn request_template(mtype: u8, opts: &mut [(u16, Vec<u8>)]) -> Vec<u8> {
    opts.sort_by_key(|(n, _)| *n);
    let mut out = vec![0x40 | mtype << 4 | TOKEN_LEN as u8, GET, 0, 0];
    out.extend_from_slice(&[0; TOKEN_LEN]);
    put_options(&mut out, opts);
    out
}

/// Writes Message ID and token into a copy of the template in `buf`; returns its length.
pub fn fill_request(buf: &mut [u8], template: &[u8], mid: u16, token: u64) -> usize {
    buf[..template.len()].copy_from_slice(template);
    buf[2..4].copy_from_slice(&mid.to_be_bytes());
    buf[4..12].copy_from_slice(&token.to_be_bytes());
    template.len()
}

/// Header fields: (type, code, Message ID, token).
pub fn header(b: &[u8]) -> Option<(u8, u8, u16, &[u8])> {
    if b.len() < 4 || b[0] >> 6 != 1 {
        return None;
    }
    let tkl = (b[0] & 0x0f) as usize;
    if tkl > 8 || b.len() < 4 + tkl {
        return None;
    }
    Some((
        (b[0] >> 4) & 3,
        b[1],
        u16::from_be_bytes([b[2], b[3]]),
        &b[4..4 + tkl],
    ))
}

/// The generator's token as a number (None if it is not one of ours by length).
pub fn token_u64(t: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(t).ok().map(u64::from_be_bytes)
}

/// Answers a request into `out`: a NON request gets a NON 2.05 with a fresh Message ID,
/// a CON one a piggybacked ACK (RFC 7252 §5.2.1); the token is echoed, Content-Format
/// text/plain, `payload` as body. Returns the length, or None for anything but a request.
pub fn answer(req: &[u8], out: &mut [u8], next_mid: &mut u16, payload: &[u8]) -> Option<usize> {
    let (t, code, mid, token) = header(req)?;
    if code == 0 || code >> 5 != 0 || !(t == CON || t == NON) {
        return None;
    }
    let (rt, rmid) = if t == CON {
        (ACK, mid)
    } else {
        *next_mid = next_mid.wrapping_add(1);
        (NON, *next_mid)
    };
    let tkl = token.len();
    out[0] = 0x40 | rt << 4 | tkl as u8;
    out[1] = CONTENT;
    out[2..4].copy_from_slice(&rmid.to_be_bytes());
    out[4..4 + tkl].copy_from_slice(token);
    let mut i = 4 + tkl;
    // Content-Format (12) = 0: delta 12, length 0.
    out[i] = (CONTENT_FORMAT as u8) << 4;
    i += 1;
    out[i] = 0xff;
    i += 1;
    out[i..i + payload.len()].copy_from_slice(payload);
    Some(i + payload.len())
}

//! The few deterministic CBOR encodings (RFC 8949 §4.2.1) that OSCORE builds: arrays, byte
//! and text strings, integers, null and booleans. Written by hand because every structure
//! is small, fixed in shape and on the hot path: this appends straight into a reused buffer.

fn head(buf: &mut Vec<u8>, major: u8, value: u64) {
    let mt = major << 5;
    match value {
        0..=23 => buf.push(mt | value as u8),
        24..=0xff => buf.extend_from_slice(&[mt | 24, value as u8]),
        0x100..=0xffff => {
            buf.push(mt | 25);
            buf.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            buf.push(mt | 26);
            buf.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            buf.push(mt | 27);
            buf.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// Array header of `len` items.
pub(crate) fn array(buf: &mut Vec<u8>, len: usize) {
    head(buf, 4, len as u64);
}

/// Byte string.
pub(crate) fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
    head(buf, 2, b.len() as u64);
    buf.extend_from_slice(b);
}

/// Text string.
pub(crate) fn text(buf: &mut Vec<u8>, s: &str) {
    head(buf, 3, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Signed integer (major type 0 or 1).
pub(crate) fn int(buf: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        head(buf, 0, v as u64);
    } else {
        head(buf, 1, (-1 - v) as u64);
    }
}

/// The simple value null.
pub(crate) fn null(buf: &mut Vec<u8>) {
    buf.push(0xf6);
}

/// The simple values false and true.
pub(crate) fn boolean(buf: &mut Vec<u8>, v: bool) {
    buf.push(if v { 0xf5 } else { 0xf4 });
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8949 Appendix A examples for the heads this module writes.
    #[test]
    fn rfc8949_appendix_a_integers() {
        for (v, hexed) in [
            (0i64, "00"),
            (23, "17"),
            (24, "1818"),
            (100, "1864"),
            (1000, "1903e8"),
            (1_000_000, "1a000f4240"),
            (1_000_000_000_000, "1b000000e8d4a51000"),
            (-1, "20"),
            (-10, "29"),
            (-100, "3863"),
            (-1000, "3903e7"),
        ] {
            let mut b = Vec::new();
            int(&mut b, v);
            assert_eq!(hex::encode(&b), hexed, "{v}");
        }
    }

    #[test]
    fn rfc8949_appendix_a_strings_and_simple() {
        let mut b = Vec::new();
        bytes(&mut b, &[1, 2, 3, 4]);
        text(&mut b, "IETF");
        null(&mut b);
        boolean(&mut b, true);
        boolean(&mut b, false);
        array(&mut b, 25);
        assert_eq!(hex::encode(&b), "44010203046449455446f6f5f49819");
    }
}

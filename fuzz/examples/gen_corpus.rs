//! Writes the seed corpora, fuzz/corpus/<target>/<name>: the messages of the test vectors
//! in tests/vectors/, datagrams as the tests send them, and messages protected under the
//! fixtures of src/lib.rs (so that they verify under the targets' checkers and contexts).
//! Deterministic: run it again and nothing changes. `cargo run --example gen_corpus`
//! from fuzz/.

use std::path::{Path, PathBuf};

use groxy::coap::build::{self, ACK, CON, NON, RST, code};
use groxy::coap::cri::reply_from;
use groxy::coap::options as opt;
use groxy::oscore::Mode;
use groxy_fuzz::{CLIENT, DEV_A, checked_group, encode_step, plain_context};
use serde_json::Value;

const GET_HELLO: &[u8] = &[
    0x51, 0x01, 0xaa, 0x01, 0xc3, 0xb5, b'h', b'e', b'l', b'l', b'o',
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Every string under a key containing one of `keys` that decodes as hex, by key path.
fn vectors(keys: &[&str]) -> Vec<(String, Vec<u8>)> {
    fn walk(v: &Value, path: &str, keys: &[&str], out: &mut Vec<(String, Vec<u8>)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    walk(v, &format!("{path}.{k}"), keys, out)
                }
            }
            Value::String(s) => {
                let leaf = path.rsplit('.').next().unwrap_or("").to_lowercase();
                if keys.iter().any(|k| leaf.contains(k))
                    && !path.contains("ALTERNATIVE")
                    && let Ok(b) = hex::decode(s)
                {
                    out.push((path.to_string(), b));
                }
            }
            _ => {}
        }
    }
    let mut out = vec![];
    for f in [
        "rfc8613-appendix-C.json",
        "group-oscore-rfc10021-messages.json",
    ] {
        let text = std::fs::read_to_string(root().join("../tests/vectors").join(f)).unwrap();
        walk(&serde_json::from_str(&text).unwrap(), "", keys, &mut out);
    }
    out
}

/// A request as a client sends it to the proxy, the target in Uri-Host and Proxy-Scheme
/// (groupcomm-proxy §5.1), with a Multicast-Timeout of 2 s.
fn proxied(t: u8, mid: u16, host: &[u8], inner: &[u8]) -> Vec<u8> {
    let v = groxy::coap::MessageView::parse(inner).unwrap();
    let mut opts: Vec<(u16, &[u8])> = v.options().collect();
    opts.push((opt::URI_HOST, host));
    opts.push((opt::PROXY_SCHEME, b"coap"));
    opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[2]));
    build::encode(t, v.code(), mid, &mid.to_be_bytes(), &mut opts, v.payload())
}

fn proxy_uri_request(t: u8, mid: u16, uri: &str) -> Vec<u8> {
    let mut opts: Vec<(u16, &[u8])> = vec![(opt::PROXY_URI, uri.as_bytes())];
    build::encode(t, code::GET, mid, &[0x71, mid as u8], &mut opts, b"")
}

fn main() {
    let coap_vectors = vectors(&["protected coap", "protected_coap", "unprotected"]);
    let g = checked_group();
    let mut client = g.context(CLIENT);
    let mut dev = g.context(DEV_A);

    // Group-mode and pairwise requests from the client, and the device's responses.
    let (group_req, _) = client
        .protect_request(GET_HELLO, Mode::Group, None)
        .unwrap();
    let (pair_req, _) = client
        .protect_request(GET_HELLO, Mode::Pairwise, Some(DEV_A))
        .unwrap();
    let content = build::encode(ACK, code::CONTENT, 0xaa01, &[0xb5], &mut [], b"hi");
    let (_, mut ex) = dev.unprotect_request(&group_req).unwrap();
    let group_resp = dev
        .protect_response(&content, &mut ex, Mode::Group, false)
        .unwrap();
    let group_resp_piv = dev
        .protect_response(&content, &mut ex, Mode::Group, true)
        .unwrap();
    let (_, mut ex) = dev.unprotect_request(&pair_req).unwrap();
    let pair_resp = dev
        .protect_response(&content, &mut ex, Mode::Pairwise, false)
        .unwrap();

    // view
    let get_proxy_uri = proxy_uri_request(CON, 0x1234, "coap://224.0.1.187/hello");
    for (i, (_, b)) in coap_vectors.iter().enumerate() {
        write("view", &format!("vector{i}"), b);
    }
    write("view", "get_proxy_uri", &get_proxy_uri);
    write("view", "group_request", &group_req);
    write("view", "empty_ack", &[0x60, 0x00, 0x12, 0x34]);
    write(
        "view",
        "rst",
        &build::encode(RST, code::EMPTY, 7, b"", &mut [], b""),
    );
    write(
        "view",
        "long_options",
        &build::encode(
            NON,
            code::POST,
            9,
            &[1; 8],
            &mut [(opt::URI_PATH, &[b'a'; 20]), (2000, &[1]), (65000, b"")],
            &[0xab; 40],
        ),
    );

    // proxy_uri
    for (name, uri) in [
        ("v4", "coap://224.0.1.187/hello"),
        ("v6_port_query", "coap://[ff02::fd]:5683/a/b?x=1&y"),
        ("name_escapes", "COAP://Host%41.Example/%2Fp/?q%3D1"),
        ("coaps", "coaps://device.local:61616"),
        ("empty_path", "coap://h/"),
    ] {
        write("proxy_uri", name, uri.as_bytes());
    }
    write("proxy_uri", "datagram", &get_proxy_uri);

    // oscore_option
    for (i, (_, b)) in vectors(&["oscore option value", "oscore_option"])
        .iter()
        .enumerate()
    {
        write("oscore_option", &format!("vector{i}"), b);
    }
    for (name, m) in [
        ("group", &group_req),
        ("pairwise", &pair_req),
        ("resp", &group_resp_piv),
    ] {
        let v = groxy::coap::MessageView::parse(m).unwrap();
        write("oscore_option", name, v.option(opt::OSCORE).unwrap());
    }

    // cbor: credentials and Reply-From CRIs
    for (i, (_, b)) in vectors(&["auth_cred_ccs"]).iter().enumerate() {
        write("cbor", &format!("ccs{i}"), b);
    }
    write("cbor", "ccs_fixture", g.gm.cred.bytes());
    write(
        "cbor",
        "cri_v4",
        &reply_from("10.0.0.1:5683".parse().unwrap()),
    );
    write(
        "cbor",
        "cri_v6",
        &reply_from("[2001:db8::1]:61616".parse().unwrap()),
    );

    // checker: selector byte, then the datagram (sel % 3: 0 check, 1 admit, 2 response
    // to a request with PIV [sel]).
    let with = |sel: u8, m: &[u8]| [&[sel][..], m].concat();
    write("checker", "check_group", &with(0, &group_req));
    write("checker", "admit_group", &with(1, &group_req));
    write("checker", "check_pairwise", &with(0, &pair_req));
    let mut c2 = g.context(CLIENT);
    let mut d2 = g.context(DEV_A);
    let mut last = None;
    for _ in 0..3 {
        last = Some(c2.protect_request(GET_HELLO, Mode::Group, None).unwrap().0);
    }
    let (_, mut ex) = d2.unprotect_request(&last.unwrap()).unwrap();
    let resp = d2
        .protect_response(&content, &mut ex, Mode::Group, false)
        .unwrap();
    write("checker", "response_piv2", &with(2, &resp));
    let resp = d2
        .protect_response(&content, &mut ex, Mode::Group, true)
        .unwrap();
    write("checker", "response_piv2_fresh", &with(2, &resp));

    // unprotect: selector (sel % 5: 0 group server, 1 group-mode response, 2 pairwise
    // response, 3 plain server, 4 plain response), then the datagram.
    write("unprotect", "group_request", &with(0, &group_req));
    write("unprotect", "pairwise_request", &with(0, &pair_req));
    write("unprotect", "group_response", &with(1, &group_resp));
    write("unprotect", "group_response_piv", &with(1, &group_resp_piv));
    write("unprotect", "pairwise_response", &with(2, &pair_resp));
    let mut pc = plain_context(true);
    let mut ps = plain_context(false);
    let (plain_req, _) = pc
        .protect_request(GET_HELLO, Mode::Pairwise, Some(&[]))
        .unwrap();
    let (_, mut ex) = ps.unprotect_request(&plain_req).unwrap();
    let plain_resp = ps
        .protect_response(&content, &mut ex, Mode::Pairwise, false)
        .unwrap();
    write("unprotect", "plain_request", &with(3, &plain_req));
    write("unprotect", "plain_response", &with(4, &plain_resp));

    // settings
    for f in ["groxy.toml", "member.toml"] {
        write(
            "settings",
            f,
            &std::fs::read(root().join("../config").join(f)).unwrap(),
        );
    }
    write(
        "settings",
        "small.toml",
        b"[proxy]\nlisten = [\"127.0.0.1:5683\"]\n\n[limits]\nmax_exchanges = 4\n\n[[group]]\nname = \"g\"\naddr = \"224.0.1.187:5683\"\nallow = [\"0.0.0.0/0\"]\n",
    );

    // engine: steps [ctl, dt, len, datagram]; ctl & 3: 0 listener, 1 group (bits 2-3
    // the group), 2 unicast, 3 timeout; 0x20 on an egress answers the latest request.
    let mut fresh = checked_group().context(CLIENT);
    let (enforced_req, _) = fresh.protect_request(GET_HELLO, Mode::Group, None).unwrap();
    let plain_get = build::encode(
        CON,
        code::GET,
        1,
        &[0xb5],
        &mut [(opt::URI_PATH, b"hello")],
        b"",
    );
    let device_content = build::encode(NON, code::CONTENT, 0, &[], &mut [], b"hello");
    let device_ack = build::encode(ACK, code::CONTENT, 0, &[], &mut [], b"ok");
    let mut s = vec![];
    encode_step(&mut s, 0, 0, &proxied(NON, 1, b"plain", &plain_get));
    encode_step(&mut s, 0x21, 10, &device_content);
    encode_step(&mut s, 0x21, 10, &device_content);
    encode_step(&mut s, 3, 60, b"");
    write("engine", "plain_group", &s);
    let mut s = vec![];
    encode_step(&mut s, 0, 0, &proxied(CON, 2, b"enforced", &enforced_req));
    encode_step(&mut s, 0x25, 5, &group_resp);
    encode_step(&mut s, 0, 1, &proxied(CON, 3, b"enforced", &pair_req));
    encode_step(&mut s, 3, 200, b"");
    write("engine", "enforced_group", &s);
    let mut s = vec![];
    encode_step(&mut s, 0, 0, &proxied(CON, 4, b"member", &plain_get));
    encode_step(&mut s, 0x29, 5, &device_content);
    encode_step(&mut s, 3, 100, b"");
    write("engine", "member_group", &s);
    let mut s = vec![];
    encode_step(
        &mut s,
        0,
        0,
        &proxy_uri_request(CON, 5, "coap://127.0.0.10:5683/hello"),
    );
    encode_step(&mut s, 3, 40, b"");
    encode_step(&mut s, 0x22, 1, &device_ack);
    encode_step(
        &mut s,
        0,
        1,
        &proxy_uri_request(CON, 5, "coap://127.0.0.10:5683/hello"),
    );
    encode_step(&mut s, 0, 0, &[0x60, 0x00, 0x00, 0x05]);
    write("engine", "unicast", &s);
    let mut s = vec![];
    for i in 0..12u16 {
        let uri = format!("coap://224.0.1.187/x{i}");
        encode_step(
            &mut s,
            (i as u8 & 7) << 5,
            0,
            &proxy_uri_request(NON, 100 + i, &uri),
        );
    }
    encode_step(&mut s, 3, 255, b"");
    write("engine", "flood", &s);
}

//! The binary's engine-level jobs: `groxy demo` walks a real exchange, `groxy keygen`
//! makes a key pair whose CCS parses back (RFC 10021 §2.4).

use std::process::Command;

use groxy::oscore::cred::Credential;

fn groxy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_groxy"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn oscore_demo_verifies_forgery_and_replay_outcomes() {
    let out = groxy(&["oscore-demo", "--payload", "ping"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // §7.5: the checker verifies the group request and the group-mode response,
    // rejects a flipped bit, and cannot check the pairwise response (§8).
    assert!(text.contains("verified without the group keys"), "{text}");
    assert!(
        text.contains("one bit flipped: countersignature does not verify"),
        "{text}"
    );
    assert!(
        text.contains("again: Partial IV already received (replay)"),
        "{text}"
    );
    assert!(text.contains("response signature verified"), "{text}");
    assert!(text.contains("relayed unchecked"), "{text}");
    // The device and client both decrypt the payload "ping".
    assert_eq!(text.matches(&hex::encode("ping")).count(), 4, "{text}");
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_a_parsable_ccs() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("groxy-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("device7");
    let out = groxy(&[
        "keygen",
        "--subject",
        "device7",
        "--out",
        prefix.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.join("device7.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let ccs = hex::decode(
        std::fs::read_to_string(dir.join("device7.ccs"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let cred = Credential::from_ccs(&ccs).unwrap();
    let seed = hex::decode(std::fs::read_to_string(&key).unwrap().trim()).unwrap();
    let sk = groxy::oscore::cred::PrivateKey::from_bytes(groxy::oscore::alg::SigAlg::EdDsa, &seed)
        .unwrap();
    assert!(cred.public_key().verify(b"m", &sk.sign(b"m")));
    // Never overwrite an existing key.
    let again = groxy(&["keygen", "--out", prefix.to_str().unwrap()]);
    assert!(!again.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's first command: a proxy and devices on loopback multicast; every device's
/// response arrives once, with its Reply-From (groupcomm-proxy §5.4.1).
#[test]
fn demo_relays_one_response_per_device_with_reply_from() {
    let out = groxy(&["demo", "--devices", "4"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 1..=4 {
        let line = text
            .lines()
            .find(|l| l.ends_with(&format!("hello from device{i}")))
            .unwrap_or_else(|| panic!("no response from device{i}:\n{text}"));
        assert!(
            line.starts_with(&format!("2.05 from 127.0.0.{}:", 10 + i)),
            "{line}"
        );
    }
    assert!(text.contains("4 responses from 4 devices"), "{text}");
}

#[test]
fn check_config_names_every_bad_key() {
    let dir = std::env::temp_dir().join(format!("groxy-cc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[group]]\nname = \"g\"\nuri = \"coap://10.0.0.1\"\nmax_timeout = 0\n",
    )
    .unwrap();
    let out = groxy(&["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("group[0].uri: host must be a multicast address"),
        "{text}"
    );
    assert!(text.contains("group[0].max_timeout"), "{text}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/groxy.toml");
    let out = groxy(&["check-config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checked group's replay windows, like a member's sequence numbers, are kept in
/// state_dir across restarts (groupcomm-proxy §10, RFC 10021 §2.6.1.1): without it the
/// file is refused by key, under enforce and monitor alike, and accepted with it.
#[test]
fn check_config_requires_state_dir_for_a_checked_group() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("groxy-cc-sd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sek = dir.join("g.sek");
    std::fs::write(&sek, "00112233445566778899aabbccddeeff").unwrap();
    std::fs::set_permissions(&sek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let gm = groxy::oscore::cred::PrivateKey::generate(groxy::oscore::alg::SigAlg::EdDsa);
    let gm_cred = Credential::ccs_for("gm", &gm.public_key());
    let file = |policy: &str, state_dir: &str| {
        format!(
            "[proxy]\n{state_dir}[[group]]\nname = \"g\"\nuri = \"coap://224.0.1.187\"\n\
             interface = \"127.0.0.1\"\n[group.security]\npolicy = \"{policy}\"\ngid = \"01\"\n\
             signature_encryption_key_file = \"g.sek\"\ngm_credential = \"{}\"\n",
            hex::encode(gm_cred.bytes())
        )
    };
    let path = dir.join("groxy.toml");
    for policy in ["enforce", "monitor"] {
        std::fs::write(&path, file(policy, "")).unwrap();
        let out = groxy(&["check-config", path.to_str().unwrap()]);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!out.status.success(), "{policy}: {text}");
        assert!(
            text.contains("proxy.state_dir: required by group[0]")
                && text.contains("replay windows"),
            "{policy}: {text}"
        );
    }
    for (policy, state_dir) in [("enforce", "state_dir = \"state\"\n"), ("off", "")] {
        std::fs::write(&path, file(policy, state_dir)).unwrap();
        let out = groxy(&["check-config", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{policy}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

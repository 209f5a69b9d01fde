//! Stable storage of the proxy's Sender Sequence Numbers (RFC 10021 §2.6.1.1): before a
//! block of numbers is used, its end is written to `<state_dir>/<group>.ssn` and synced,
//! so that after a crash the proxy continues above anything it may have used.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::proxy::Engine;
use crate::proxy::engine::SSN_BLOCK;

fn file(dir: &Path, group: &str) -> PathBuf {
    dir.join(format!("{group}.ssn"))
}

/// The key epoch a bound belongs to: Key Generation Number and Gid (RFC 10021 §12.2).
pub type Epoch = (u64, Vec<u8>);

/// Writes `value`, the bound of epoch `epoch`, atomically and durably: a synced
/// temporary file renamed over the old one, then the directory synced. The line is
/// `VALUE KEY_GENERATION GID_HEX`: with the epoch beside the bound, a start under
/// keying material older than what was recorded is refused rather than given numbers
/// the newer epoch's bound says nothing about (see [`restore`]).
pub fn write(dir: &Path, group: &str, value: u64, epoch: Option<&Epoch>) -> io::Result<()> {
    let path = file(dir, group);
    let tmp = path.with_extension("ssn.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        match epoch {
            Some((kg, gid)) => writeln!(f, "{value} {kg} {}", hex::encode(gid))?,
            None => writeln!(f, "{value}")?,
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// What a `.ssn` file records: the bound, and its epoch (None in the format of before,
/// a bare number).
type Recorded = (u64, Option<Epoch>);

fn read(dir: &Path, group: &str) -> io::Result<Option<Recorded>> {
    let path = file(dir, group);
    let text = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = || {
        io::Error::other(format!(
            "{}: not `VALUE [KEY_GENERATION GID]`",
            path.display()
        ))
    };
    let fields: Vec<&str> = text.split_whitespace().collect();
    let value = fields
        .first()
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    match fields[1..] {
        [] => Ok(Some((value, None))),
        [kg, gid] => {
            let kg = kg.parse().map_err(|_| bad())?;
            let gid = hex::decode(gid).map_err(|_| bad())?;
            Ok(Some((value, Some((kg, gid)))))
        }
        _ => Err(bad()),
    }
}

/// Whether `group` has a recorded bound (an earlier membership of this state_dir).
pub fn recorded(dir: &Path, group: &str) -> bool {
    file(dir, group).exists()
}

/// Where the numbers of `epoch` continue, given what the file records (RFC 10021
/// §2.6.1.1: never a number that may have been used):
/// * nothing recorded: 0;
/// * the same epoch, or a bound without an epoch (the format of before): at the bound;
/// * a newer epoch than recorded: at the bound still (the new epoch's numbers were never
///   used, since its first bound is written before its first number; going on above
///   costs nothing and needs no argument);
/// * an older epoch than recorded (a lower Key Generation Number, or the same with
///   another Gid): refused. The recorded bound is the newer epoch's; how far the older
///   one got is no longer known, and starting it anywhere could reuse its nonces.
fn continue_at(recorded: Option<&Recorded>, epoch: &Epoch, name: &str) -> io::Result<u64> {
    match recorded {
        None => Ok(0),
        Some((v, None)) => Ok(*v),
        Some((v, Some((kg, gid)))) => {
            if epoch.0 > *kg || (epoch.0 == *kg && epoch.1 == *gid) {
                Ok(*v)
            } else {
                Err(io::Error::other(format!(
                    "group {name}: {name}.ssn records the Sender Sequence Numbers of key                      generation {kg} (Gid {}), newer than the configured one ({}, Gid {}):                      the older epoch's numbers may have been used, refusing to start under                      it (RFC 10021 §2.6.1.1); configure the current keying material",
                    hex::encode(gid),
                    epoch.0,
                    hex::encode(&epoch.1)
                )))
            }
        }
    }
}

/// At start: every group the proxy is a member of continues where [`continue_at`] says,
/// with a new block reserved before any is used. A recorded bound means an earlier run:
/// its peers' replay state was lost, so their windows are invalid until the Echo
/// exchange (§2.6.1.2, §9).
pub fn restore(engine: &mut Engine, names: &[String], dir: Option<&Path>) -> io::Result<()> {
    let groups = engine.member_groups();
    if groups.is_empty() {
        return Ok(());
    }
    let dir = dir.ok_or_else(|| {
        io::Error::other(
            "the proxy is a group member: proxy.state_dir is needed to keep its sequence numbers",
        )
    })?;
    std::fs::create_dir_all(dir)?;
    for g in groups {
        let name = &names[g];
        let epoch = engine.member_epoch(g).expect("a member group");
        let recorded = read(dir, name)?;
        let next = continue_at(recorded.as_ref(), &epoch, name)?;
        let ceiling = next + SSN_BLOCK;
        write(dir, name, ceiling, Some(&epoch))?;
        engine.restore_member(g, next, ceiling, recorded.is_some());
    }
    Ok(())
}

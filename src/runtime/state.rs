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

/// Writes `value` atomically and durably: a synced temporary file renamed over the old
/// one, then the directory synced.
pub fn write(dir: &Path, group: &str, value: u64) -> io::Result<()> {
    let path = file(dir, group);
    let tmp = path.with_extension("ssn.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{value}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn read(dir: &Path, group: &str) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(file(dir, group)) {
        Ok(s) => {
            s.trim().parse().map(Some).map_err(|_| {
                io::Error::other(format!("{}: not a number", file(dir, group).display()))
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// At start: every group the proxy is a member of continues at its recorded bound (all
/// numbers below may have been used), with a new block reserved before any is used.
/// A recorded bound means an earlier run: its peers' replay state was lost, so their
/// windows are invalid until the Echo exchange (§2.6.1.2, §9).
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
        let recorded = read(dir, name)?;
        let next = recorded.unwrap_or(0);
        let ceiling = next + SSN_BLOCK;
        write(dir, name, ceiling)?;
        engine.restore_member(g, next, ceiling, recorded.is_some());
    }
    Ok(())
}

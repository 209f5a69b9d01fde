//! Stable storage of the signature checker's replay windows, so that a validly signed
//! request captured before a restart (clean or not) is not multicast again after it
//! (groupcomm-proxy §10; RFC 8613 §7.4 asks a receiver to keep its replay window, or to
//! treat it as lost, across reboots).
//!
//! Per group two files, `<state_dir>/<group>.replay.0` and `.replay.1`, written
//! alternately in place: `pwrite` of the whole state, `ftruncate` when it shrank, one
//! `fdatasync`. A write that a crash tears leaves the other slot intact, with the state
//! before it; the torn one fails its checksum. At start the valid slot with the higher
//! sequence number wins. Both files are created (synced, renamed, directory synced)
//! before the proxy serves, so later writes change no directory entry and need no
//! directory sync.
//!
//! Format, big-endian:
//!
//! ```text
//! "GRXRPLY1"  sequence u64  key_generation u64  gid_len u8  gid  count u32
//! count × ( kid_len u16  kid  tag u8 (0 empty, 1 active, 2 invalid)  top u64  seen u64 )
//! SHA-256 of everything before it (32 bytes)
//! ```
//!
//! Bytes after the checksum are ignored: a shorter state written over a longer one is
//! complete before its `ftruncate`, and the checksum bounds what is read.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::oscore::ReplayState;
use crate::oscore::checker::MAX_RECORDED_WINDOWS;
use crate::oscore::replay::WindowState;
use crate::proxy::Engine;

const MAGIC: &[u8; 8] = b"GRXRPLY1";
const DIGEST: usize = 32;

/// Why a slot's bytes are not a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The first bytes are not this format's magic and version.
    #[error("not a replay state file (bad magic or version)")]
    Magic,
    /// Shorter than its header or its windows say.
    #[error("truncated")]
    Truncated,
    /// The checksum disagrees: a torn or corrupted write.
    #[error("checksum mismatch")]
    Checksum,
    /// A window kind other than empty, active or invalid.
    #[error("bad window tag {0}")]
    Tag(u8),
    /// More windows than a group's checker can hold.
    #[error("{0} windows, more than {MAX_RECORDED_WINDOWS}")]
    TooMany(usize),
}

/// The bytes of slot content for `state` under sequence number `seq`. Fails only on a
/// kid longer than 65535 bytes or a Gid longer than 255, which no checker admits.
pub fn encode(seq: u64, state: &ReplayState) -> io::Result<Vec<u8>> {
    let mut b = Vec::new();
    encode_into(&mut b, seq, state)?;
    Ok(b)
}

/// [`encode`] into `b` (cleared first), so that a writer can reuse one buffer.
pub fn encode_into(b: &mut Vec<u8>, seq: u64, state: &ReplayState) -> io::Result<()> {
    let gid_len = u8::try_from(state.gid.len()).map_err(|_| io::Error::other("Gid too long"))?;
    b.clear();
    b.reserve(64 + state.windows.len() * 24);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&state.key_generation.to_be_bytes());
    b.push(gid_len);
    b.extend_from_slice(&state.gid);
    b.extend_from_slice(&(state.windows.len() as u32).to_be_bytes());
    for (kid, w) in &state.windows {
        let kid_len = u16::try_from(kid.len()).map_err(|_| io::Error::other("kid too long"))?;
        b.extend_from_slice(&kid_len.to_be_bytes());
        b.extend_from_slice(kid);
        let (tag, top, seen) = match *w {
            WindowState::Empty => (0u8, 0, 0),
            WindowState::Active { top, seen } => (1, top, seen),
            WindowState::Invalid => (2, 0, 0),
        };
        b.push(tag);
        b.extend_from_slice(&top.to_be_bytes());
        b.extend_from_slice(&seen.to_be_bytes());
    }
    let digest = Sha256::digest(&b[..]);
    b.extend_from_slice(&digest);
    Ok(())
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).ok_or(FormatError::Truncated)?;
        let s = self.b.get(self.at..end).ok_or(FormatError::Truncated)?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// A slot's sequence number and state; any damage is an error, never a partial state.
pub fn decode(bytes: &[u8]) -> Result<(u64, ReplayState), FormatError> {
    let mut r = Reader { b: bytes, at: 0 };
    if r.take(MAGIC.len()).map_err(|_| FormatError::Magic)? != MAGIC {
        return Err(FormatError::Magic);
    }
    let seq = r.u64()?;
    let key_generation = r.u64()?;
    let gid_len = r.u8()? as usize;
    let gid = r.take(gid_len)?.to_vec();
    let count = r.u32()? as usize;
    if count > MAX_RECORDED_WINDOWS {
        return Err(FormatError::TooMany(count));
    }
    // Each window takes at least 19 bytes: a count the file cannot hold is damage, and
    // allocating for it first would let a bad file ask for any amount of memory.
    if count.saturating_mul(19) > bytes.len() {
        return Err(FormatError::Truncated);
    }
    let mut windows = Vec::with_capacity(count);
    for _ in 0..count {
        let kid_len = r.u16()? as usize;
        let kid = r.take(kid_len)?.to_vec();
        let tag = r.u8()?;
        let (top, seen) = (r.u64()?, r.u64()?);
        let w = match tag {
            0 => WindowState::Empty,
            1 => WindowState::Active { top, seen },
            2 => WindowState::Invalid,
            t => return Err(FormatError::Tag(t)),
        };
        windows.push((kid, w));
    }
    let body = r.at;
    let digest = r.take(DIGEST)?;
    if Sha256::digest(&bytes[..body]).as_slice() != digest {
        return Err(FormatError::Checksum);
    }
    Ok((
        seq,
        ReplayState {
            gid,
            key_generation,
            windows,
        },
    ))
}

fn slot_path(dir: &Path, group: &str, slot: u64) -> PathBuf {
    dir.join(format!("{group}.replay.{slot}"))
}

/// What is in a group's two slots: the valid one with the higher sequence number, or
/// `None` when neither file exists. Files that exist but of which none is valid are an
/// error: the state that forwarding relied on is gone, and starting with empty windows
/// would let every request sent before pass again.
pub fn read(dir: &Path, group: &str) -> io::Result<Option<(u64, ReplayState)>> {
    let mut best: Option<(u64, ReplayState)> = None;
    let mut damaged = Vec::new();
    for slot in 0..2 {
        let path = slot_path(dir, group, slot);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        match decode(&bytes) {
            Ok((seq, st)) if best.as_ref().is_none_or(|(s, _)| seq > *s) => best = Some((seq, st)),
            Ok(_) => {}
            Err(e) => damaged.push(format!("{}: {e}", path.display())),
        }
    }
    if best.is_none() && !damaged.is_empty() {
        return Err(io::Error::other(format!(
            "no valid replay state for group {group:?} ({}): refusing to start, as requests \
             forwarded before could pass again. Restore the files, or remove them once the \
             group has been rekeyed (new gid, higher key_generation)",
            damaged.join("; ")
        )));
    }
    if !damaged.is_empty() {
        // The other slot is the state before a write that did not complete (a crash in
        // it): nothing that write covered was sent, so the valid slot covers everything.
        tracing::warn!(event = "replay_state_slot_damaged", group, slots = %damaged.join("; "));
    }
    Ok(best)
}

/// A group's two open slots and the sequence number of the next write.
#[derive(Debug)]
struct Slots {
    files: [File; 2],
    lens: [u64; 2],
    next: u64,
    /// The bytes of the last write, kept for the next one's encoding.
    buf: Vec<u8>,
}

impl Slots {
    /// Writes `state` over the older slot and syncs its data (one `fdatasync`). A failed
    /// write keeps the sequence number, so that the next attempt goes to the same slot
    /// and the newest valid one is never overwritten while the other may be damaged.
    fn write(&mut self, state: &ReplayState) -> io::Result<()> {
        encode_into(&mut self.buf, self.next, state)?;
        let bytes = &self.buf;
        let i = (self.next % 2) as usize;
        let f = &self.files[i];
        f.write_all_at(bytes, 0)?;
        let len = bytes.len() as u64;
        if len < self.lens[i] {
            f.set_len(len)?;
        }
        f.sync_data()?;
        self.lens[i] = len;
        self.next += 1;
        Ok(())
    }
}

/// The replay states of the checked groups on stable storage, open for writing.
#[derive(Debug)]
pub struct ReplayStore {
    dir: PathBuf,
    /// Per group (by index), its slots when its requests are checked.
    groups: Vec<Option<Slots>>,
}

impl ReplayStore {
    /// A store in `dir` (created if missing) for `groups` groups, none attached yet.
    pub fn new(dir: &Path, groups: usize) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(ReplayStore {
            dir: dir.to_path_buf(),
            groups: (0..groups).map(|_| None).collect(),
        })
    }

    /// Writes a group's state durably; see [`Engine::take_replay_state`] for when.
    pub fn write(&mut self, group: usize, state: &ReplayState) -> io::Result<()> {
        match self.groups.get_mut(group).and_then(Option::as_mut) {
            Some(s) => s.write(state),
            None => Err(io::Error::other("no replay state files for this group")),
        }
    }

    /// Makes every later write of `group` fail (`/dev/full`), as a full or failing disk
    /// would.
    #[cfg(test)]
    pub(super) fn fail_writes(&mut self, group: usize) {
        if let Some(s) = self.groups[group].as_mut() {
            s.files = [
                File::open("/dev/full").expect("/dev/full"),
                File::open("/dev/full").expect("/dev/full"),
            ];
        }
    }

    /// Whether `group`'s replay state files are open (the group is checked).
    pub fn has(&self, group: usize) -> bool {
        self.groups.get(group).is_some_and(Option::is_some)
    }

    /// Opens a group's slots, creates the missing ones, and writes `state` to both, so
    /// that each holds a complete state before anything is forwarded. `recorded` is the
    /// sequence number read at start, if any.
    pub fn attach(
        &mut self,
        group: usize,
        name: &str,
        recorded: Option<u64>,
        state: &ReplayState,
    ) -> io::Result<()> {
        let mut created = false;
        let mut files = Vec::with_capacity(2);
        let next = recorded.map_or(0, |s| s + 1);
        for slot in 0..2 {
            let path = slot_path(&self.dir, name, slot);
            if !path.exists() {
                // Written whole under another name and renamed: the slot exists complete
                // or not at all, so a damaged slot is always a torn in-place write.
                let tmp = path.with_extension(format!("{slot}.tmp"));
                let seq = if next % 2 == slot { next } else { next + 1 };
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all_at(&encode(seq, state)?, 0)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                created = true;
            }
            let f = OpenOptions::new().read(true).write(true).open(&path)?;
            files.push(f);
        }
        if created {
            File::open(&self.dir)?.sync_all()?;
        }
        let [a, b]: [File; 2] = files.try_into().expect("two slots");
        let lens = [a.metadata()?.len(), b.metadata()?.len()];
        let mut slots = Slots {
            files: [a, b],
            lens,
            next,
            buf: Vec::new(),
        };
        // Both slots now get the current state (a restored one, or a new epoch's empty
        // windows), in order: at every moment one of them is valid and complete.
        slots.write(state)?;
        slots.write(state)?;
        if let Some(g) = self.groups.get_mut(group) {
            *g = Some(slots);
        }
        Ok(())
    }
}

/// At start: every checked group's recorded windows come back (or, rekeyed while
/// stopped, start empty; keying material that went back is refused), and both its slots
/// hold that state before anything is served.
pub fn restore(
    engine: &mut Engine,
    names: &[String],
    dir: Option<&Path>,
) -> io::Result<Option<ReplayStore>> {
    let groups = engine.checked_groups();
    if groups.is_empty() {
        return Ok(None);
    }
    let dir = dir.ok_or_else(|| {
        io::Error::other(
            "a group's requests are checked (policy enforce or monitor): proxy.state_dir is \
             needed to keep the replay windows across restarts",
        )
    })?;
    let mut store = ReplayStore::new(dir, names.len())?;
    for g in groups {
        attach_group(engine, &mut store, g, &names[g])?;
    }
    // What was just written is the engine's whole state: nothing is left to take.
    let _ = engine.take_replay_state();
    Ok(Some(store))
}

/// Reads group `g`'s recorded state, restores it into the engine, and opens its slots.
pub(crate) fn attach_group(
    engine: &mut Engine,
    store: &mut ReplayStore,
    g: usize,
    name: &str,
) -> io::Result<()> {
    let recorded = read(&store.dir, name)?;
    let outcome = match &recorded {
        Some((_, st)) => engine.restore_replay(g, st).map_err(|e| {
            io::Error::other(format!(
                "group {name} ({}): {e}",
                slot_path(&store.dir, name, 0).with_extension("*").display()
            ))
        })?,
        None => None,
    };
    let Some(state) = engine.checker(g).map(|c| c.replay_state()) else {
        return Ok(());
    };
    tracing::info!(
        event = "replay_state_restored",
        group = name,
        outcome = ?outcome,
        windows = state.windows.len(),
        key_generation = state.key_generation
    );
    store.attach(g, name, recorded.map(|r| r.0), &state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(gid: &[u8], kg: u64, seqs: &[(u8, u64)]) -> ReplayState {
        let mut windows: Vec<(Vec<u8>, WindowState)> = seqs
            .iter()
            .map(|&(kid, top)| (vec![kid], WindowState::Active { top, seen: 0b1011 }))
            .collect();
        windows.push((vec![0xee, 0xff], WindowState::Invalid));
        windows.push((vec![], WindowState::Empty));
        windows.sort_by(|a, b| a.0.cmp(&b.0));
        ReplayState {
            gid: gid.to_vec(),
            key_generation: kg,
            windows,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("groxy-rs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rfc8613_s7_4_state_round_trips_and_every_damage_is_refused() {
        let s = state(b"gid1", 3, &[(1, 7), (2, 1 << 39)]);
        let b = encode(42, &s).unwrap();
        assert_eq!(decode(&b), Ok((42, s.clone())));
        // Trailing bytes (an older, longer state before its ftruncate) do not matter.
        let mut longer = b.clone();
        longer.extend_from_slice(&[0xab; 40]);
        assert_eq!(decode(&longer), Ok((42, s)));
        // Torn at every length: never a state.
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "torn at {n}");
        }
        // Any flipped bit: the checksum (or the structure) refuses it.
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(decode(&c).is_err(), "flip at {i}");
        }
        let mut c = b.clone();
        let last = c.len() - 1;
        c[last] ^= 1;
        assert_eq!(decode(&c), Err(FormatError::Checksum));
        // A count no file of this size can hold is refused before any allocation.
        let mut huge = b[..8 + 8 + 8 + 1 + 4].to_vec();
        let at = huge.len() - 4;
        huge[at..].copy_from_slice(&(MAX_RECORDED_WINDOWS as u32).to_be_bytes());
        assert_eq!(decode(&huge), Err(FormatError::Truncated));
    }

    #[test]
    fn both_slots_the_valid_one_with_the_higher_sequence_wins() {
        let dir = tmp("slots");
        let (old, new) = (state(b"g", 1, &[(1, 5)]), state(b"g", 1, &[(1, 6)]));
        assert_eq!(read(&dir, "grp").unwrap(), None, "nothing recorded yet");
        std::fs::write(slot_path(&dir, "grp", 0), encode(8, &new).unwrap()).unwrap();
        std::fs::write(slot_path(&dir, "grp", 1), encode(7, &old).unwrap()).unwrap();
        assert_eq!(read(&dir, "grp").unwrap(), Some((8, new.clone())));
        // The newer slot torn by a crash in its write: the other one, the state before
        // that write, is used.
        let torn = encode(9, &new).unwrap();
        std::fs::write(slot_path(&dir, "grp", 1), &torn[..torn.len() / 2]).unwrap();
        assert_eq!(read(&dir, "grp").unwrap(), Some((8, new.clone())));
        // A wrong checksum is damage like a tear.
        let mut bad = encode(10, &new).unwrap();
        let n = bad.len();
        bad[n - 3] ^= 0xff;
        std::fs::write(slot_path(&dir, "grp", 1), &bad).unwrap();
        assert_eq!(read(&dir, "grp").unwrap(), Some((8, new)));
        // Both damaged: the proxy must not start with empty windows.
        std::fs::write(slot_path(&dir, "grp", 0), b"GRXRPLY1 garbage").unwrap();
        let e = read(&dir, "grp").unwrap_err().to_string();
        assert!(
            e.contains("no valid replay state") && e.contains("refusing to start"),
            "{e}"
        );
        // Only one file, damaged: refused too (slots are created whole by rename).
        std::fs::remove_file(slot_path(&dir, "grp", 0)).unwrap();
        assert!(read(&dir, "grp").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn writes_alternate_slots_and_a_failed_write_keeps_the_newest_slot() {
        let dir = tmp("alt");
        let mut store = ReplayStore::new(&dir, 2).unwrap();
        let s0 = state(b"g", 0, &[]);
        store.attach(1, "grp", None, &s0).unwrap();
        assert!(!store.has(0) && store.has(1));
        // Both slots hold the initial state, with sequence numbers 0 and 1.
        for (slot, seq) in [(0, 0), (1, 1)] {
            let b = std::fs::read(slot_path(&dir, "grp", slot)).unwrap();
            assert_eq!(decode(&b).unwrap(), (seq, s0.clone()));
        }
        let s1 = state(b"g", 0, &[(1, 1), (2, 2), (3, 3)]);
        store.write(1, &s1).unwrap();
        assert_eq!(read(&dir, "grp").unwrap(), Some((2, s1.clone())));
        // A shorter state over a longer slot: truncated, and still the newest.
        let s2 = state(b"g", 0, &[(1, 9)]);
        store.write(1, &s2).unwrap();
        store.write(1, &s2).unwrap();
        assert_eq!(read(&dir, "grp").unwrap(), Some((4, s2.clone())));
        let len = std::fs::metadata(slot_path(&dir, "grp", 0)).unwrap().len();
        assert_eq!(len, encode(4, &s2).unwrap().len() as u64);
        // A write that fails leaves the sequence number for the same slot next time.
        let Some(slots) = store.groups[1].as_mut() else {
            panic!()
        };
        let good = std::mem::replace(&mut slots.files[1], File::open("/dev/full").unwrap());
        assert!(store.write(1, &s1).is_err());
        assert_eq!(read(&dir, "grp").unwrap(), Some((4, s2)));
        store.groups[1].as_mut().unwrap().files[1] = good;
        store.write(1, &s1).unwrap();
        assert_eq!(read(&dir, "grp").unwrap(), Some((5, s1)));
        assert!(store.write(0, &s0).is_err(), "group 0 is not checked");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

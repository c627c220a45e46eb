//! The Raft log's entries as append-only segment files: an append is one write and one
//! `fdatasync`, whatever the number of entries in it.
//!
//! Why not the redb file that holds the vote and the snapshot: a redb commit rewrites the
//! B-tree pages it touched (about 16 KB per lock operation in the 50-connection cluster
//! benchmark, BENCHMARKS.md), and on this kind of disk an fsync costs time by the byte
//! (measured with `dd oflag=dsync`: 0.48 ms for a 4 KiB write, 2.2 ms for 64 KiB). Here a
//! batch costs its own bytes and a header.
//!
//! **Format.** A segment is named by the index of its first entry (`{:020}.wal`) and holds
//! records: a 16-byte header (entry index `u64`, payload length `u32`, CRC-32 of index,
//! length and payload `u32`, little-endian) and the payload (the entry, postcard). A new
//! segment starts once the current one passes [`SEGMENT_BYTES`], so that purging the log
//! behind a snapshot deletes whole files.
//!
//! **Recovery.** Opening reads every record. A torn or corrupt record at the end of the
//! last segment is a write a crash cut short (never acknowledged: openraft is told an
//! append is flushed only after its `fdatasync`), and is cut off; anywhere else it is an
//! error, as is a gap between indexes. Entries at or below the purged index are skipped.
//!
//! **Concurrency.** openraft serializes the writes (append, truncate, purge), but its
//! replication tasks read entries meanwhile: the index (where each entry is) sits behind a
//! short-held mutex, not held across an append's write or fsync (the path every commit
//! takes); the rare operations (starting a segment, truncating, purging) hold it across
//! their file operations. Reads use `pread` on a shared handle.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const HEADER: usize = 16;
/// A segment is closed once it passes this size (a snapshot every 10,000 entries keeps a
/// few segments at most).
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// No record is larger (a batch is far smaller: the peer frame bounds it at 16 MiB); a
/// header claiming more is corrupt, and is not allocated for.
const MAX_RECORD: u32 = 64 << 20;

/// Where one entry's record is.
#[derive(Clone)]
struct Loc {
    file: Arc<File>,
    off: u64,
    len: u32,
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
}

struct Index {
    segments: Vec<Segment>,
    /// The log index of `locs[0]`.
    first: u64,
    locs: VecDeque<Loc>,
}

impl Index {
    fn next(&self) -> u64 {
        self.first + self.locs.len() as u64
    }
}

/// The entries' files and where each entry is.
pub struct Wal {
    dir: PathBuf,
    index: Mutex<Index>,
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The next record from `r`: `Ok(None)` at a clean end (no byte left), `Err` for a torn
/// or corrupt record (short, oversized, or failing its CRC).
fn read_record(r: &mut impl Read) -> Result<Option<(u64, Vec<u8>)>, ()> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    let index = u64::from_le_bytes(h[0..8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    let sum = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err(());
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|_| ())?;
    if crc(index, &payload) != sum {
        return Err(());
    }
    Ok(Some((index, payload)))
}

impl Wal {
    /// Opens (or makes) the directory and reads its segments; entries at or below
    /// `purged` are not indexed.
    pub fn open(dir: &Path, purged: Option<u64>) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let mut firsts = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name
                .strip_suffix(".wal")
                .and_then(|s| s.parse::<u64>().ok())
            {
                firsts.push(n);
            }
        }
        firsts.sort_unstable();
        let mut index = Index {
            segments: Vec::new(),
            first: purged.map_or(0, |p| p + 1),
            locs: VecDeque::new(),
        };
        let count = firsts.len();
        for (k, first) in firsts.into_iter().enumerate() {
            let path = segment_path(dir, first);
            let file = Arc::new(OpenOptions::new().read(true).write(true).open(&path)?);
            let mut reader = io::BufReader::with_capacity(1 << 20, &*file);
            let mut off = 0u64;
            loop {
                match read_record(&mut reader) {
                    Ok(None) => break,
                    Ok(Some((i, payload))) => {
                        let len = payload.len() as u32;
                        if purged.is_none_or(|p| i > p) {
                            if index.locs.is_empty() {
                                index.first = i;
                            } else if i != index.next() {
                                return Err(corrupt(format!(
                                    "{}: entry {i} where {} was expected",
                                    path.display(),
                                    index.next()
                                )));
                            }
                            index.locs.push_back(Loc {
                                file: file.clone(),
                                off,
                                len,
                            });
                        }
                        off += (HEADER + len as usize) as u64;
                    }
                    Err(()) if k + 1 == count => {
                        // A write a crash cut short: never acknowledged.
                        tracing::warn!(
                            segment = %path.display(),
                            offset = off,
                            "the Raft log ends in a torn record (a write cut short); cut off"
                        );
                        file.set_len(off)?;
                        file.sync_all()?;
                        break;
                    }
                    Err(()) => {
                        return Err(corrupt(format!(
                            "{}: corrupt record at offset {off} (not the last segment)",
                            path.display()
                        )))
                    }
                }
            }
            index.segments.push(Segment {
                first,
                path,
                file,
                len: off,
            });
        }
        Ok(Wal {
            dir: dir.to_path_buf(),
            index: Mutex::new(index),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no entry is indexed.
    pub fn is_empty(&self) -> bool {
        self.index().locs.is_empty()
    }

    /// The index the next append must have, if anything is held; else the one above the
    /// purged index (0 if none).
    pub fn next_index(&self) -> u64 {
        self.index().next()
    }

    /// The highest index held.
    pub fn last_index(&self) -> Option<u64> {
        let ix = self.index();
        (!ix.locs.is_empty()).then(|| ix.next() - 1)
    }

    /// Appends entries (index, payload), contiguous with what is held, in one write, and
    /// returns once they are on disk. `before_sync` runs between the write and the fsync
    /// (the test-only slow-disk switch).
    pub fn append(&self, entries: &[(u64, Vec<u8>)], before_sync: impl FnOnce()) -> io::Result<()> {
        let Some(&(start, _)) = entries.first() else {
            return Ok(());
        };
        for (k, (i, _)) in entries.iter().enumerate() {
            if *i != start + k as u64 {
                return Err(corrupt(format!("append of entries not in sequence at {i}")));
            }
        }
        let (file, off) = {
            let mut ix = self.index();
            if !ix.locs.is_empty() && start != ix.next() {
                return Err(corrupt(format!(
                    "append of entry {start} where {} was expected",
                    ix.next()
                )));
            }
            let roll = ix.segments.last().is_none_or(|s| s.len >= SEGMENT_BYTES);
            if roll {
                let path = segment_path(&self.dir, start);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?;
                // The file's name must be durable before an entry in it is acknowledged.
                sync_dir(&self.dir)?;
                ix.segments.push(Segment {
                    first: start,
                    path,
                    file: Arc::new(file),
                    len: 0,
                });
            }
            let seg = ix.segments.last().expect("a segment");
            (seg.file.clone(), seg.len)
        };
        let mut buf = Vec::new();
        let mut locs = Vec::with_capacity(entries.len());
        for (i, payload) in entries {
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|l| *l <= MAX_RECORD)
                .ok_or_else(|| corrupt(format!("entry {i} is too large for the log")))?;
            locs.push(Loc {
                file: file.clone(),
                off: off + buf.len() as u64,
                len,
            });
            buf.extend_from_slice(&i.to_le_bytes());
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc(*i, payload).to_le_bytes());
            buf.extend_from_slice(payload);
        }
        let written = file.write_all_at(&buf, off).and_then(|()| {
            before_sync();
            file.sync_data()
        });
        if let Err(e) = written {
            // Best effort: what was half written must not be read back as entries.
            let _ = file.set_len(off);
            return Err(e);
        }
        let mut ix = self.index();
        if ix.locs.is_empty() {
            ix.first = start;
        }
        ix.locs.extend(locs);
        if let Some(seg) = ix.segments.last_mut() {
            seg.len = off + buf.len() as u64;
        }
        Ok(())
    }

    /// Removes the entries from `from` on, durably.
    pub fn truncate(&self, from: u64) -> io::Result<()> {
        let mut ix = self.index();
        if from >= ix.next() {
            return Ok(());
        }
        let from = from.max(ix.first);
        let keep = (from - ix.first) as usize;
        let cut = ix.locs.get(keep).map(|l| l.off);
        let mut removed_file = false;
        while ix.segments.last().is_some_and(|s| s.first > from) {
            let s = ix.segments.pop().expect("a segment");
            std::fs::remove_file(&s.path)?;
            removed_file = true;
        }
        if let (Some(seg), Some(off)) = (ix.segments.last_mut(), cut) {
            seg.file.set_len(off)?;
            seg.file.sync_all()?;
            seg.len = off;
        }
        if removed_file {
            sync_dir(&self.dir)?;
        }
        ix.locs.truncate(keep);
        Ok(())
    }

    /// Forgets the entries up to `upto` (the caller has recorded the purge durably) and
    /// deletes the segments that hold nothing newer. The last segment stays: it is where
    /// the next append goes; opening skips what it holds at or below the purged index.
    pub fn purge(&self, upto: u64) -> io::Result<()> {
        let mut ix = self.index();
        while ix.first <= upto && ix.locs.pop_front().is_some() {
            ix.first += 1;
        }
        if ix.locs.is_empty() {
            ix.first = ix.first.max(upto + 1);
        }
        let mut removed_file = false;
        while ix.segments.len() > 1 && ix.segments[1].first <= upto + 1 {
            let s = ix.segments.remove(0);
            std::fs::remove_file(&s.path)?;
            removed_file = true;
        }
        if removed_file {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The payloads of the entries in `[from, to)` that are held, in order.
    pub fn read(&self, from: u64, to: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let (first, locs): (u64, Vec<Loc>) = {
            let ix = self.index();
            let lo = from.max(ix.first);
            let hi = to.min(ix.next());
            if lo >= hi {
                return Ok(Vec::new());
            }
            let a = (lo - ix.first) as usize;
            let b = (hi - ix.first) as usize;
            (lo, ix.locs.range(a..b).cloned().collect())
        };
        let mut out = Vec::with_capacity(locs.len());
        for (k, loc) in locs.into_iter().enumerate() {
            let want = first + k as u64;
            let mut rec = vec![0u8; HEADER + loc.len as usize];
            loc.file.read_exact_at(&mut rec, loc.off)?;
            let mut r = &rec[..];
            match read_record(&mut r) {
                Ok(Some((i, payload))) if i == want => out.push((i, payload)),
                _ => return Err(corrupt(format!("entry {want} does not read back"))),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry {i}")
            .repeat((i % 7) as usize + 1)
            .into_bytes()
    }

    fn entries(from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        (from..to).map(|i| (i, payload(i))).collect()
    }

    #[test]
    fn entries_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path(), None).unwrap();
        w.append(&entries(1, 10), || {}).unwrap();
        w.append(&entries(10, 12), || {}).unwrap();
        assert_eq!(w.read(0, 100).unwrap(), entries(1, 12));
        drop(w);
        let w = Wal::open(dir.path(), None).unwrap();
        assert_eq!(w.last_index(), Some(11));
        assert_eq!(w.read(3, 5).unwrap(), entries(3, 5));
        assert!(
            w.append(&entries(13, 14), || {}).is_err(),
            "a gap is refused"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_corruption_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path(), None).unwrap();
        w.append(&entries(1, 5), || {}).unwrap();
        drop(w);
        let seg = segment_path(dir.path(), 1);
        let full = std::fs::metadata(&seg).unwrap().len();
        // Cut inside the last record, as a crash mid-write would.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(full - 3).unwrap();
        let w = Wal::open(dir.path(), None).unwrap();
        assert_eq!(w.read(0, 100).unwrap(), entries(1, 4));
        let record4 = (HEADER + payload(4).len()) as u64;
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            full - record4,
            "the torn record's bytes are gone from the file"
        );
        w.append(&entries(4, 6), || {}).unwrap();
        drop(w);
        let w = Wal::open(dir.path(), None).unwrap();
        assert_eq!(w.read(0, 100).unwrap(), entries(1, 6));
        drop(w);
        // A flipped byte in the first record of a segment that is not the last.
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[HEADER + 1] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        std::fs::write(segment_path(dir.path(), 6), b"").unwrap();
        let e = Wal::open(dir.path(), None)
            .err()
            .expect("corruption is an error");
        assert!(e.to_string().contains("corrupt record"), "{e}");
    }

    #[test]
    fn truncate_and_purge_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path(), None).unwrap();
        let big = |i: u64| (i, vec![i as u8; (SEGMENT_BYTES / 2 + 1) as usize]);
        // Entries 1-2 fill the first segment past its size; 3-4 go to the second, 5 to
        // the third.
        for i in 1..=5 {
            w.append(&[big(i)], || {}).unwrap();
        }
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files(), 3);
        w.truncate(4).unwrap();
        assert_eq!(files(), 2, "the third segment held only entry 5");
        assert_eq!(w.last_index(), Some(3));
        w.append(&[(4, b"four".to_vec())], || {}).unwrap();
        w.purge(2).unwrap();
        assert_eq!(files(), 1, "the first segment held nothing newer than 2");
        assert_eq!(
            w.read(0, 10)
                .unwrap()
                .iter()
                .map(|(i, _)| *i)
                .collect::<Vec<_>>(),
            vec![3, 4]
        );
        drop(w);
        let w = Wal::open(dir.path(), Some(3)).unwrap();
        assert_eq!(w.read(0, 10).unwrap(), vec![(4, b"four".to_vec())]);
        // A purge past the end: the next append may start anywhere above it.
        w.purge(10).unwrap();
        assert!(w.is_empty());
        w.append(&entries(11, 13), || {}).unwrap();
        drop(w);
        let w = Wal::open(dir.path(), Some(10)).unwrap();
        assert_eq!(w.read(0, 100).unwrap(), entries(11, 13));
    }
}

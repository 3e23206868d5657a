//! The content store through its public API: ingests, commits, reads, locks, and crashes.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use berth_content::{ContentError, ContentStore, Digest, Writer};
use tempfile::TempDir;

// ---- helpers ----

fn store() -> (TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    (dir, store)
}

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Appends `data` from the writer's offset in `chunk`-sized writes.
fn feed(w: &mut Writer, data: &[u8], chunk: usize) {
    let start = usize::try_from(w.offset()).unwrap();
    for piece in data[start..].chunks(chunk) {
        let off = w.offset();
        assert_eq!(w.write_at(off, piece).unwrap(), off + piece.len() as u64);
    }
}

fn put(store: &ContentStore, r#ref: &str, data: &[u8]) -> Digest {
    let mut w = store.writer(r#ref, Some(data.len() as i64), None).unwrap();
    feed(&mut w, data, 4096);
    w.commit(data.len() as i64, Some(Digest::of(data))).unwrap()
}

fn read_blob(store: &ContentStore, d: &Digest) -> Vec<u8> {
    let mut out = Vec::new();
    store.reader(d).unwrap().read_to_end(&mut out).unwrap();
    out
}

/// The key property: every blob file is read-only and holds exactly the bytes its name says.
/// A store killed before it made its directories has none.
fn check_blobs(root: &Path) -> usize {
    let dir = root.join("blobs/sha256");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    let mut n = 0;
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let data = fs::read(entry.path()).unwrap();
        assert_eq!(
            Digest::of(&data).hex(),
            name,
            "blob {name} does not match its content"
        );
        assert_eq!(
            entry.metadata().unwrap().permissions().mode() & 0o777,
            0o444,
            "blob {name}"
        );
        n += 1;
    }
    n
}

fn ingest_dirs(root: &Path) -> usize {
    fs::read_dir(root.join("ingest")).unwrap().count()
}

// ---- writing, committing, reading ----

#[test]
fn write_commit_read() {
    let (root, store) = store();
    // Chunks below, at and above the writer's 1 MiB buffer.
    let data = bytes(1, 3 * (1 << 20) + 12345);
    let mut w = store
        .writer("layer-1", Some(data.len() as i64), None)
        .unwrap();
    assert_eq!(w.r#ref(), "layer-1");
    assert_eq!(w.offset(), 0);
    let mut off = 0;
    for len in [10, 1 << 20, 5000, (1 << 20) + 1, 77, 1 << 19] {
        assert_eq!(
            w.write_at(off as u64, &data[off..off + len]).unwrap(),
            (off + len) as u64
        );
        off += len;
        assert_eq!(w.digest(), Digest::of(&data[..off]));
    }
    feed(&mut w, &data, 300_000);
    assert_eq!(w.offset(), data.len() as u64);
    let st = w.status();
    assert_eq!(
        (st.r#ref.as_str(), st.offset, st.total),
        ("layer-1", data.len() as u64, data.len() as i64)
    );
    let d = w
        .commit(data.len() as i64, Some(Digest::of(&data)))
        .unwrap();

    assert_eq!(d, Digest::of(&data));
    assert!(store.exists(&d));
    assert_eq!(
        store.blob_path(&d),
        root.path().join("blobs/sha256").join(d.hex())
    );
    assert_eq!(store.info(&d).unwrap().size, data.len() as u64);
    assert_eq!(read_blob(&store, &d), data);
    assert!(matches!(
        store.status("layer-1"),
        Err(ContentError::NotFound(_))
    ));
    assert_eq!(ingest_dirs(root.path()), 0);

    let r = store.reader(&d).unwrap();
    assert_eq!(r.size(), data.len() as u64);
    let mut buf = vec![0; 1000];
    assert_eq!(r.read_at(123_456, &mut buf).unwrap(), 1000);
    assert_eq!(buf, data[123_456..124_456]);
    let tail = data.len() as u64 - 10;
    assert_eq!(r.read_at(tail, &mut buf).unwrap(), 10);
    assert_eq!(buf[..10], data[data.len() - 10..]);
    assert_eq!(r.read_at(data.len() as u64, &mut buf).unwrap(), 0);
    assert_eq!(r.read_at(u64::MAX, &mut buf).unwrap(), 0);
    assert_eq!(check_blobs(root.path()), 1);
}

#[test]
fn commit_checks_only_what_is_given() {
    let (_root, store) = store();
    let empty = store
        .writer("empty", None, None)
        .unwrap()
        .commit(0, None)
        .unwrap();
    assert_eq!(empty, Digest::of(b""));
    assert_eq!(store.info(&empty).unwrap().size, 0);

    let mut w = store.writer("x", None, None).unwrap();
    w.write_at(0, b"hello").unwrap();
    assert_eq!(w.commit(0, None).unwrap(), Digest::of(b"hello"));
}

#[test]
fn blobs_are_read_only() {
    let (_root, store) = store();
    let d = put(&store, "r", b"immutable");
    let mode = fs::metadata(store.blob_path(&d))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
}

#[test]
fn empty_ref_is_invalid() {
    let (_root, store) = store();
    assert!(matches!(
        store.writer("", None, None),
        Err(ContentError::InvalidArgument(_))
    ));
}

#[test]
fn offsets_other_than_current_or_zero_are_out_of_range() {
    let (_root, store) = store();
    let mut w = store.writer("r", None, None).unwrap();
    w.write_at(0, b"abcd").unwrap();
    for bad in [1, 3, 5, 100] {
        match w.write_at(bad, b"x") {
            Err(ContentError::OutOfRange { offset, expected }) => {
                assert_eq!((offset, expected), (bad, 4))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(w.write_at(4, b"ef").unwrap(), 6);
    assert_eq!(w.commit(6, None).unwrap(), Digest::of(b"abcdef"));
}

#[test]
fn offset_zero_restarts_the_ingest() {
    let (_root, store) = store();
    let mut w = store.writer("r", None, None).unwrap();
    w.write_at(0, &bytes(2, 3 << 20)).unwrap();
    w.write_at(3 << 20, b"tail").unwrap();
    assert_eq!(w.write_at(0, b"fresh").unwrap(), 5);
    assert_eq!(w.digest(), Digest::of(b"fresh"));
    drop(w);
    assert_eq!(store.status("r").unwrap().offset, 5);
    let w = store.writer("r", None, None).unwrap();
    assert_eq!(w.digest(), Digest::of(b"fresh"));
    assert_eq!(
        w.commit(5, Some(Digest::of(b"fresh"))).unwrap(),
        Digest::of(b"fresh")
    );
}

#[test]
fn writes_past_total_are_refused() {
    let (_root, store) = store();
    let mut w = store.writer("r", Some(4), None).unwrap();
    w.write_at(0, b"abc").unwrap();
    let e = w.write_at(3, b"de").unwrap_err();
    assert!(
        matches!(&e, ContentError::InvalidArgument(m) if m.contains("exceeds total")),
        "{e}"
    );
    assert_eq!(w.offset(), 3);
    w.set_total(0);
    w.write_at(3, b"de").unwrap();
    assert_eq!(w.commit(5, None).unwrap(), Digest::of(b"abcde"));
}

// ---- resuming ----

#[test]
fn resume_after_drop() {
    let (_root, store) = store();
    let data = bytes(3, (1 << 20) + 999);
    let expected = Digest::of(&data);
    let mut w = store
        .writer("r", Some(data.len() as i64), Some(expected.clone()))
        .unwrap();
    w.write_at(0, &data[..700_001]).unwrap();
    let started = w.status().started_at;
    drop(w);

    let st = store.status("r").unwrap();
    assert_eq!(st.offset, 700_001);
    assert_eq!(st.total, data.len() as i64);
    assert_eq!(st.expected.as_ref(), Some(&expected));
    assert_eq!(st.started_at, started);

    // Nothing given: the recorded total and expected digest hold.
    let mut w = store.writer("r", None, None).unwrap();
    assert_eq!(w.offset(), 700_001);
    assert_eq!(w.digest(), Digest::of(&data[..700_001]));
    assert_eq!(w.status().total, data.len() as i64);
    assert_eq!(w.status().expected, Some(expected.clone()));
    assert_eq!(w.status().started_at, started);
    feed(&mut w, &data, 65536);
    assert_eq!(w.commit(0, None).unwrap(), expected);
    assert_eq!(read_blob(&store, &expected), data);
}

#[test]
fn total_and_expected_set_later_are_recorded() {
    let (_root, store) = store();
    let mut w = store.writer("r", None, None).unwrap();
    assert_eq!((w.status().total, w.status().expected), (0, None));
    w.set_total(42);
    w.set_expected(Digest::of(b"x"));
    let st = store.status("r").unwrap();
    assert_eq!((st.total, st.expected), (42, Some(Digest::of(b"x"))));
    drop(w);
    // Given values replace recorded ones.
    let w = store.writer("r", Some(7), Some(Digest::of(b"y"))).unwrap();
    assert_eq!(
        (w.status().total, w.status().expected),
        (7, Some(Digest::of(b"y")))
    );
}

#[test]
fn store_status_counts_buffered_bytes() {
    let (_root, store) = store();
    let mut w = store.writer("r", None, None).unwrap();
    w.write_at(0, b"still in the buffer").unwrap();
    let st = store.status("r").unwrap();
    assert_eq!(st.offset, 19);
    assert_eq!(st.updated_at, w.status().updated_at);
    assert_eq!(store.list_statuses().unwrap()[0].offset, 19);
}

// ---- locks ----

#[test]
fn one_writer_per_ref() {
    let (_root, store) = store();
    let w = store.writer("r", None, None).unwrap();
    match store.writer("r", None, None) {
        Err(e @ ContentError::Locked(_)) => assert_eq!(e.to_string(), "ref r locked"),
        other => panic!("{other:?}"),
    }
    // A clone shares the locks.
    assert!(matches!(
        store.clone().writer("r", None, None),
        Err(ContentError::Locked(_))
    ));
    let other = store.writer("s", None, None).unwrap();
    drop(w);
    drop(store.writer("r", None, None).unwrap());
    drop(other);
}

/// A ref reopened (or aborted) the moment its writer is closing waits for the lock a short
/// while, as containerd's store does; an abort under a writer that stays removes the ingest
/// anyway (containerd's Abort takes no lock), and that writer's commit then fails.
#[test]
fn reopen_and_abort_wait_for_a_closing_writer() {
    let (_root, store) = store();
    let mut w = store.writer("r", None, None).unwrap();
    w.write_at(0, b"abc").unwrap();
    let closing = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        drop(w);
    });
    let w = store
        .writer("r", None, None)
        .expect("the lock once the writer let go");
    closing.join().unwrap();
    assert_eq!(w.offset(), 3);
    drop(w);

    let mut held = store.writer("r", None, None).unwrap();
    held.write_at(3, b"def").unwrap();
    store.abort("r").expect("abort under a live writer");
    assert!(matches!(store.status("r"), Err(ContentError::NotFound(_))));
    assert!(held.commit(0, None).is_err());
    assert!(matches!(store.abort("r"), Err(ContentError::NotFound(_))));
}

#[test]
fn commit_releases_the_lock() {
    let (_root, store) = store();
    let mut w = store.writer("r", None, None).unwrap();
    w.write_at(0, b"a").unwrap();
    w.commit(0, None).unwrap();
    let w = store.writer("r", None, None).unwrap();
    assert_eq!(w.offset(), 0);
}

// ---- already exists ----

#[test]
fn writer_for_committed_expected_digest_is_already_exists() {
    let (root, store) = store();
    let d = put(&store, "first", b"blob");
    // A stale ingest under the new ref goes away.
    let mut w = store.writer("second", None, None).unwrap();
    w.write_at(0, b"bl").unwrap();
    drop(w);
    match store.writer("second", Some(4), Some(d.clone())) {
        Err(e @ ContentError::AlreadyExists(_)) => {
            assert_eq!(e.to_string(), format!("content {d}: already exists"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.status("second"),
        Err(ContentError::NotFound(_))
    ));
    assert_eq!(ingest_dirs(root.path()), 0);
    // The lock was released.
    drop(store.writer("second", None, None).unwrap());
}

#[test]
fn commit_of_committed_content_is_already_exists() {
    let (root, store) = store();
    let mut a = store.writer("a", None, None).unwrap();
    let mut b = store.writer("b", None, None).unwrap();
    a.write_at(0, b"same bytes").unwrap();
    b.write_at(0, b"same bytes").unwrap();
    let d = a.commit(10, None).unwrap();
    match b.commit(10, None) {
        Err(ContentError::AlreadyExists(got)) => assert_eq!(got, d),
        other => panic!("{other:?}"),
    }
    assert_eq!(ingest_dirs(root.path()), 0);
    assert_eq!(read_blob(&store, &d), b"same bytes");
}

// ---- mismatches keep the ingest ----

#[test]
fn size_mismatch_keeps_the_ingest() {
    let (_root, store) = store();
    let mut w = store.writer("r", None, None).unwrap();
    w.write_at(0, b"12345").unwrap();
    match w.commit(6, None) {
        Err(ContentError::FailedPrecondition(m)) => {
            assert_eq!(m, "unexpected commit size 5, expected 6")
        }
        other => panic!("{other:?}"),
    }
    let mut w = store.writer("r", None, None).unwrap();
    assert_eq!(w.offset(), 5);
    w.write_at(5, b"6").unwrap();
    assert_eq!(w.commit(6, None).unwrap(), Digest::of(b"123456"));
}

#[test]
fn digest_mismatch_keeps_the_ingest() {
    let (root, store) = store();
    let wrong = Digest::of(b"something else");
    let mut w = store.writer("r", None, Some(wrong.clone())).unwrap();
    w.write_at(0, b"payload").unwrap();
    match w.commit(0, None) {
        Err(ContentError::FailedPrecondition(m)) => {
            assert_eq!(
                m,
                format!(
                    "unexpected commit digest {}, expected {wrong}",
                    Digest::of(b"payload")
                )
            );
        }
        other => panic!("{other:?}"),
    }
    // An explicit expected digest overrides the recorded one.
    let w = store.writer("r", None, None).unwrap();
    assert_eq!(w.offset(), 7);
    let mut w2 = store.writer("r2", None, None).unwrap();
    w2.write_at(0, b"x").unwrap();
    assert!(matches!(
        w2.commit(0, Some(wrong)),
        Err(ContentError::FailedPrecondition(_))
    ));
    assert_eq!(
        w.commit(7, Some(Digest::of(b"payload"))).unwrap(),
        Digest::of(b"payload")
    );
    assert_eq!(check_blobs(root.path()), 1);
    store.abort("r2").unwrap();
}

// ---- abort, delete, list ----

#[test]
fn abort_removes_the_ingest() {
    let (root, store) = store();
    match store.abort("nope") {
        Err(e @ ContentError::NotFound(_)) => {
            assert_eq!(e.to_string(), "ingest ref nope: not found")
        }
        other => panic!("{other:?}"),
    }
    let mut w = store.writer("r", None, None).unwrap();
    w.write_at(0, b"data").unwrap();
    drop(w);
    store.abort("r").unwrap();
    assert!(matches!(store.status("r"), Err(ContentError::NotFound(_))));
    assert!(matches!(store.abort("r"), Err(ContentError::NotFound(_))));
    assert_eq!(ingest_dirs(root.path()), 0);
    assert_eq!(store.writer("r", None, None).unwrap().offset(), 0);
}

#[test]
fn delete_and_not_found() {
    let (_root, store) = store();
    let d = put(&store, "r", b"to delete");
    let r = store.reader(&d).unwrap();
    store.delete(&d).unwrap();
    assert!(!store.exists(&d));
    match store.delete(&d) {
        Err(e @ ContentError::NotFound(_)) => {
            assert_eq!(e.to_string(), format!("content {d}: not found"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(store.info(&d), Err(ContentError::NotFound(_))));
    assert!(matches!(store.reader(&d), Err(ContentError::NotFound(_))));
    // An open reader keeps its blob.
    let mut buf = [0; 9];
    assert_eq!(r.read_at(0, &mut buf).unwrap(), 9);
    assert_eq!(&buf, b"to delete");
}

#[test]
fn list_blobs_and_statuses() {
    let (root, store) = store();
    let mut want: Vec<Digest> = (0..5)
        .map(|i| put(&store, &format!("b{i}"), &bytes(i, 100 + i as usize)))
        .collect();
    want.sort();
    // Not digests: ignored.
    fs::write(root.path().join("blobs/sha256/README"), "x").unwrap();
    fs::create_dir(root.path().join("ingest/not-an-ingest")).unwrap();
    let mut got: Vec<Digest> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|b| b.digest)
        .collect();
    got.sort();
    assert_eq!(got, want);
    let info = store.info(&want[0]).unwrap();
    assert!(info.created <= SystemTime::now());

    let refs = ["default/layer-sha256:abc", "../escape", "x"];
    let writers: Vec<Writer> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut w = store.writer(r, Some(10), None).unwrap();
            w.write_at(0, &bytes(i as u64, i)).unwrap();
            w
        })
        .collect();
    drop(writers);
    let mut st = store.list_statuses().unwrap();
    st.sort_by(|a, b| a.r#ref.cmp(&b.r#ref));
    let got: Vec<(&str, u64, i64)> = st
        .iter()
        .map(|s| (s.r#ref.as_str(), s.offset, s.total))
        .collect();
    assert_eq!(
        got,
        [
            ("../escape", 1, 10),
            ("default/layer-sha256:abc", 0, 10),
            ("x", 2, 10)
        ]
    );
    for s in &st {
        assert!(s.started_at <= s.updated_at);
        assert_eq!(&store.status(&s.r#ref).unwrap(), s);
    }
}

// ---- stale ingests ----

fn age(root: &Path, store: &ContentStore, r#ref: &str, by: Duration) {
    let st = store.status(r#ref).unwrap();
    let old = SystemTime::now() - by;
    for entry in fs::read_dir(root.join("ingest")).unwrap() {
        let dir = entry.unwrap().path();
        if fs::read_to_string(dir.join("ref")).ok().as_deref() == Some(r#ref) {
            let f = fs::File::options()
                .write(true)
                .open(dir.join("data"))
                .unwrap();
            f.set_modified(old).unwrap();
        }
    }
    assert!(store.status(r#ref).unwrap().updated_at < st.updated_at);
}

#[test]
fn stale_ingests_are_removed() {
    let (root, store) = store();
    for r in ["old", "new", "old-but-locked"] {
        let mut w = store.writer(r, None, None).unwrap();
        w.write_at(0, r.as_bytes()).unwrap();
    }
    age(root.path(), &store, "old", Duration::from_secs(7200));
    age(
        root.path(),
        &store,
        "old-but-locked",
        Duration::from_secs(7200),
    );
    let held = store.writer("old-but-locked", None, None).unwrap();
    // An ingest directory whose ref was lost is unreachable; it goes too, unnamed.
    let orphan = root.path().join("ingest").join("0".repeat(64));
    fs::create_dir(&orphan).unwrap();
    fs::write(orphan.join("data"), "lost").unwrap();
    fs::File::options()
        .write(true)
        .open(orphan.join("data"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();

    assert_eq!(
        store
            .remove_ingests_older_than(Duration::from_secs(3600))
            .unwrap(),
        ["old"]
    );
    assert!(!orphan.exists());
    assert!(matches!(
        store.status("old"),
        Err(ContentError::NotFound(_))
    ));
    assert_eq!(store.status("new").unwrap().offset, 3);
    assert_eq!(held.offset(), 14);
    assert_eq!(
        store
            .remove_ingests_older_than(Duration::from_secs(3600))
            .unwrap(),
        Vec::<String>::new()
    );
    drop(held);
    let mut gone = store.remove_ingests_older_than(Duration::ZERO).unwrap();
    gone.sort();
    assert_eq!(gone, ["new", "old-but-locked"]);
    assert_eq!(ingest_dirs(root.path()), 0);
}

// ---- concurrency ----

#[test]
fn concurrent_writers_on_different_refs() {
    let (root, store) = store();
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let data = bytes(100 + i as u64, 200_000 + i * 1000);
                let mut w = store
                    .writer(&format!("t{i}"), Some(data.len() as i64), None)
                    .unwrap();
                barrier.wait();
                feed(&mut w, &data, 8191);
                let d = w
                    .commit(data.len() as i64, Some(Digest::of(&data)))
                    .unwrap();
                assert_eq!(read_blob(&store, &d), data);
                d
            })
        })
        .collect();
    let digests: Vec<Digest> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(store.list().unwrap().len(), threads);
    assert_eq!(check_blobs(root.path()), threads);
    assert!(digests.iter().all(|d| store.exists(d)));
}

#[test]
fn contended_ref_has_one_writer_at_a_time() {
    let (_root, store) = store();
    let data = bytes(7, 64 * 1024);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let data = data.clone();
            thread::spawn(move || {
                // Each thread appends one piece whenever it gets the lock, like retrying clients.
                let mut wrote = 0;
                loop {
                    match store.writer("shared", None, None) {
                        Ok(w) if w.offset() == data.len() as u64 => return wrote,
                        Ok(mut w) => {
                            let off = usize::try_from(w.offset()).unwrap();
                            let end = (off + 1000).min(data.len());
                            w.write_at(off as u64, &data[off..end]).unwrap();
                            wrote += 1;
                        }
                        Err(ContentError::Locked(_)) => thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    let pieces: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(pieces, data.len().div_ceil(1000));
    let w = store.writer("shared", None, None).unwrap();
    assert_eq!(
        w.commit(data.len() as i64, Some(Digest::of(&data)))
            .unwrap(),
        Digest::of(&data)
    );
}

// ---- crashes ----

#[test]
fn forgotten_writers_and_half_written_ingests_resume() {
    let root = tempfile::tempdir().unwrap();
    let small = bytes(10, 5000);
    let big = bytes(11, 3 << 20);
    {
        let store = ContentStore::open(root.path()).unwrap();
        put(&store, "done", b"committed before the crash");
        // Killed mid-write: buffered bytes never reach the file, the lock is never released.
        let mut w = store
            .writer("small", Some(small.len() as i64), None)
            .unwrap();
        w.write_at(0, &small[..3000]).unwrap();
        std::mem::forget(w);
        let mut w = store.writer("big", None, Some(Digest::of(&big))).unwrap();
        w.write_at(0, &big[..(1 << 20) + 10]).unwrap();
        w.write_at((1 << 20) + 10, &big[(1 << 20) + 10..(1 << 20) + 500])
            .unwrap();
        std::mem::forget(w);
        assert!(matches!(
            store.writer("big", None, None),
            Err(ContentError::Locked(_))
        ));
    }

    // Half-written ingest directories, as a kill at various points leaves them.
    let ingest = root.path().join("ingest");
    let dir_of = |r: &str| ingest.join(Digest::of(r.as_bytes()).hex());
    // Killed right after creating the directory.
    fs::create_dir(dir_of("bare")).unwrap();
    // Killed while writing metadata: only a temporary file, and a garbled total.
    fs::create_dir(dir_of("meta")).unwrap();
    fs::write(dir_of("meta").join("ref"), "meta").unwrap();
    fs::write(dir_of("meta").join(".tmp-total"), "12").unwrap();
    fs::write(dir_of("meta").join("total"), "1x").unwrap();
    fs::write(dir_of("meta").join("startedat"), "yesterday").unwrap();
    fs::write(dir_of("meta").join("data"), b"abc").unwrap();
    // Killed between a commit's chmod and its rename.
    let chmod = b"between chmod and rename";
    fs::create_dir(dir_of("chmod")).unwrap();
    fs::write(dir_of("chmod").join("ref"), "chmod").unwrap();
    fs::write(dir_of("chmod").join("data"), chmod).unwrap();
    fs::set_permissions(
        dir_of("chmod").join("data"),
        fs::Permissions::from_mode(0o444),
    )
    .unwrap();
    // Killed between a commit's rename and the ingest's removal.
    let renamed = Digest::of(b"committed before the crash");
    fs::create_dir(dir_of("renamed")).unwrap();
    fs::write(dir_of("renamed").join("ref"), "renamed").unwrap();
    fs::write(dir_of("renamed").join("expected"), renamed.as_str()).unwrap();

    let store = ContentStore::open(root.path()).unwrap();
    assert!(!dir_of("meta").join(".tmp-total").exists());
    assert_eq!(check_blobs(root.path()), 1);
    let mut st = store.list_statuses().unwrap();
    st.sort_by(|a, b| a.r#ref.cmp(&b.r#ref));
    let got: Vec<(&str, u64)> = st.iter().map(|s| (s.r#ref.as_str(), s.offset)).collect();
    // "bare" lost its ref; its writer can still resume it by name.
    assert_eq!(
        got,
        [
            ("big", (1 << 20) + 10),
            ("chmod", chmod.len() as u64),
            ("meta", 3),
            ("renamed", 0),
            ("small", 0)
        ]
    );
    assert_eq!(st[2].total, 0);

    // Resume each from what reached the disk.
    let mut w = store.writer("big", None, None).unwrap();
    assert_eq!(w.offset(), (1 << 20) + 10);
    assert_eq!(w.digest(), Digest::of(&big[..(1 << 20) + 10]));
    feed(&mut w, &big, 1 << 20);
    assert_eq!(w.commit(0, None).unwrap(), Digest::of(&big));

    let mut w = store.writer("small", None, None).unwrap();
    assert_eq!((w.offset(), w.status().total), (0, small.len() as i64));
    feed(&mut w, &small, 999);
    assert_eq!(
        w.commit(5000, Some(Digest::of(&small))).unwrap(),
        Digest::of(&small)
    );

    let mut w = store.writer("meta", None, None).unwrap();
    w.write_at(3, b"def").unwrap();
    assert_eq!(w.commit(6, None).unwrap(), Digest::of(b"abcdef"));

    let mut w = store.writer("chmod", None, None).unwrap();
    assert_eq!(w.digest(), Digest::of(chmod));
    w.write_at(chmod.len() as u64, b"!").unwrap();
    w.commit(0, None).unwrap();

    assert!(matches!(
        store.writer("renamed", None, Some(renamed)),
        Err(ContentError::AlreadyExists(_))
    ));

    let mut w = store.writer("bare", None, None).unwrap();
    w.write_at(0, b"bare").unwrap();
    w.commit(4, None).unwrap();

    assert_eq!(check_blobs(root.path()), 6);
    assert_eq!(ingest_dirs(root.path()), 0);
}

/// Environment variables that turn `crash_child` into the process `kill_9_at_random_points`
/// kills: the store's root, and the digests of the blobs to write (computed once by the parent,
/// so that the child spends its time in the store).
const CRASH_ROOT: &str = "BERTH_CONTENT_CRASH_ROOT";
const CRASH_DIGESTS: &str = "BERTH_CONTENT_CRASH_DIGESTS";
const CRASH_BLOBS: u64 = 24;

fn crash_blob(i: u64) -> Vec<u8> {
    // Sizes from empty to 1.2 MiB, so kills land in buffered, direct and commit phases.
    bytes(
        1000 + i,
        ((i * 7919) % 25) as usize * (50 << 10) + (i as usize % 3),
    )
}

/// Writes (or resumes) every crash blob, checking each resumed prefix.
fn write_crash_blobs(store: &ContentStore, digests: &[Digest]) {
    for (i, expected) in (0..).zip(digests) {
        let data = crash_blob(i);
        let mut w = match store.writer(
            &format!("r-{i}"),
            Some(data.len() as i64),
            Some(expected.clone()),
        ) {
            Ok(w) => w,
            Err(ContentError::AlreadyExists(_)) => continue,
            Err(e) => panic!("r-{i}: {e}"),
        };
        let off = usize::try_from(w.offset()).unwrap();
        if off > 0 {
            assert_eq!(
                w.digest(),
                Digest::of(&data[..off]),
                "r-{i}: resumed data is not a prefix"
            );
        }
        feed(
            &mut w,
            &data,
            [4096, 100_000, 1 << 20, 3 << 20][i as usize % 4],
        );
        match w.commit(data.len() as i64, None) {
            Ok(d) => assert_eq!(&d, expected),
            Err(ContentError::AlreadyExists(_)) => {}
            Err(e) => panic!("r-{i}: {e}"),
        }
    }
}

/// Not a test on its own: the child process of `kill_9_at_random_points`.
#[test]
fn crash_child() {
    let (Some(root), Ok(digests)) = (std::env::var_os(CRASH_ROOT), std::env::var(CRASH_DIGESTS))
    else {
        return;
    };
    let digests: Vec<Digest> = digests.split(',').map(|d| d.parse().unwrap()).collect();
    let store = ContentStore::open(Path::new(&root)).unwrap();
    write_crash_blobs(&store, &digests);
}

#[test]
fn kill_9_at_random_points() {
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let digests: Vec<Digest> = (0..CRASH_BLOBS)
        .map(|i| Digest::of(&crash_blob(i)))
        .collect();
    let joined = digests
        .iter()
        .map(Digest::as_str)
        .collect::<Vec<_>>()
        .join(",");
    // Fixed points plus a little jitter, so that runs cover different moments.
    let jitter = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 20;
    for base_ms in [5, 15, 30, 50, 70, 95, 120, 150, 185, 225, 270, 320] {
        let delay_ms = u64::from(base_ms + jitter);
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--test-threads=1", "--quiet"])
            .env(CRASH_ROOT, root.path())
            .env(CRASH_DIGESTS, &joined)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_millis(delay_ms);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "child failed: {status}");
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();

        // Whatever the moment of death: blobs are whole, ingests readable and resumable.
        check_blobs(root.path());
        let store = ContentStore::open(root.path()).unwrap();
        for st in store.list_statuses().unwrap() {
            let i: u64 = st.r#ref.strip_prefix("r-").unwrap().parse().unwrap();
            let data = crash_blob(i);
            assert!(
                st.offset <= data.len() as u64,
                "killed after {delay_ms} ms: {st:?}"
            );
            let w = store.writer(&st.r#ref, None, None).unwrap();
            let prefix = &data[..usize::try_from(w.offset()).unwrap()];
            assert_eq!(
                w.digest(),
                Digest::of(prefix),
                "killed after {delay_ms} ms: {st:?}"
            );
        }
    }
    let store = ContentStore::open(root.path()).unwrap();
    write_crash_blobs(&store, &digests);
    assert_eq!(check_blobs(root.path()), CRASH_BLOBS as usize);
    assert_eq!(ingest_dirs(root.path()), 0);
    assert_eq!(store.list().unwrap().len(), CRASH_BLOBS as usize);
}

/// A failed commit does not bind the ingest: a wrong digest named by one writer (at open, or
/// by its commit) is checked against that writer's commits only; a later writer of the same ref
/// that names none commits what it has (containerd's store checks only the digest given). The
/// digest stays in the ingest's status.
#[test]
fn a_wrong_expected_digest_binds_only_its_own_writer() {
    let (_d, store) = store();
    let data = bytes(29, 10_000);
    let wrong = Digest::of(b"something else");
    let mut w = store
        .writer("r1", Some(data.len() as i64), Some(wrong.clone()))
        .unwrap();
    feed(&mut w, &data, 4096);
    let e = w.commit(data.len() as i64, None).unwrap_err();
    assert!(matches!(e, ContentError::FailedPrecondition(_)), "{e:?}");
    let w = store.writer("r1", None, None).unwrap();
    assert_eq!(w.status().expected, Some(wrong.clone()));
    assert_eq!(
        w.commit(data.len() as i64, None).unwrap(),
        Digest::of(&data)
    );

    // A wrong digest given to a commit, then a commit without one by a new writer.
    let data = bytes(30, 5_000);
    let mut w = store.writer("r2", None, None).unwrap();
    feed(&mut w, &data, 4096);
    let e = w.commit(0, Some(wrong)).unwrap_err();
    assert!(matches!(e, ContentError::FailedPrecondition(_)), "{e:?}");
    let w = store.writer("r2", None, None).unwrap();
    assert_eq!(w.commit(0, None).unwrap(), Digest::of(&data));
}

/// An ingest's update time is its last accepted write's, also after a reopen (the write was
/// buffered and reached the file later).
#[test]
fn updated_at_is_the_last_accepted_write_after_a_reopen() {
    let (_root, store) = store();
    let mut w = store.writer("r", None, None).unwrap();
    w.write_at(0, b"buffered").unwrap();
    let written = w.status().updated_at;
    thread::sleep(Duration::from_millis(100));
    drop(w);
    let st = store.status("r").unwrap();
    let w = store.writer("r", None, None).unwrap();
    for t in [st.updated_at, w.status().updated_at] {
        let off = t.duration_since(written).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_millis(50), "{t:?} vs {written:?}");
    }
}

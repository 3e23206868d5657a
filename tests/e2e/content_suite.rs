//! The content store as containerd's Go client sees it through the gRPC API (its proxy writer:
//! one Write stream per writer, a Stat to open it, writes at the writer's own offset, a commit
//! that ends the stream), checked against the semantics of containerd's content test suite:
//! statuses and timestamps across a reopen, resume by truncation, by discarding and by copying,
//! commit of existing content and after failed commits, labels, short reads, and content shared
//! across namespaces. Each check runs against berthd and against Debian's containerd.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{
    Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use berth_api::containerd::services::leases::v1::CreateRequest;
use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_e2e::{Daemon, sha256};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

const LEASE: &str = "content-suite";

/// A request in namespace `ns` under [`LEASE`], as a client holding a lease sends it.
fn req<T>(ns: &str, msg: T) -> tonic::Request<T> {
    let mut r = berth_e2e::with_ns(ns, msg);
    r.metadata_mut()
        .insert("containerd-lease", LEASE.parse().expect("header value"));
    r
}

async fn lease(ch: &Channel, ns: &str) {
    let made = LeasesClient::new(ch.clone())
        .create(berth_e2e::with_ns(
            ns,
            CreateRequest {
                id: LEASE.into(),
                labels: Default::default(),
            },
        ))
        .await;
    if let Err(e) = made {
        assert_eq!(e.code(), Code::AlreadyExists, "lease in {ns}: {e:?}");
    }
}

fn time(t: &Option<prost_types::Timestamp>) -> SystemTime {
    let t = (*t).expect("a timestamp");
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

/// `t` lies in [a, b] (a reported time falls between two clock readings around its event).
#[track_caller]
fn between(what: &str, t: SystemTime, a: SystemTime, b: SystemTime) {
    assert!(
        a <= t && t <= b,
        "{what}: {t:?} not between {a:?} and {b:?}"
    );
}

/// Deterministic content of `size` bytes, different for each `seed`.
fn content(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The Go client's proxy writer: one Write stream, its own offset, the digest of the last answer.
struct Writer {
    tx: Option<tokio::sync::mpsc::Sender<WriteContentRequest>>,
    rx: tonic::Streaming<WriteContentResponse>,
    offset: i64,
    digest: String,
}

impl Writer {
    async fn open(
        ch: &Channel,
        ns: &str,
        r: &str,
        total: i64,
        expected: &str,
    ) -> Result<Writer, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: r.into(),
            total,
            expected: expected.into(),
            ..Default::default()
        })
        .await
        .expect("open stream");
        let mut rx = ContentClient::new(ch.clone())
            .write(req(ns, tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await?
            .into_inner();
        let first = rx
            .next()
            .await
            .unwrap_or_else(|| Err(tonic::Status::unknown("stream ended")))?;
        Ok(Writer {
            tx: Some(tx),
            rx,
            offset: first.offset,
            digest: String::new(),
        })
    }

    async fn send(
        &mut self,
        m: WriteContentRequest,
    ) -> Result<WriteContentResponse, tonic::Status> {
        self.tx
            .as_ref()
            .expect("writer open")
            .send(m)
            .await
            .map_err(|_| tonic::Status::unknown("stream closed"))?;
        let r = self
            .rx
            .next()
            .await
            .unwrap_or_else(|| Err(tonic::Status::unknown("stream ended")))?;
        if !r.digest.is_empty() {
            self.digest = r.digest.clone();
        }
        Ok(r)
    }

    async fn status(&mut self) -> WriteContentResponse {
        self.send(WriteContentRequest {
            action: WriteAction::Stat as i32,
            ..Default::default()
        })
        .await
        .expect("status")
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), tonic::Status> {
        let r = self
            .send(WriteContentRequest {
                action: WriteAction::Write as i32,
                offset: self.offset,
                data: data.to_vec(),
                ..Default::default()
            })
            .await?;
        assert_eq!(r.offset, self.offset + data.len() as i64, "short write");
        self.offset = r.offset;
        Ok(())
    }

    async fn write_in(&mut self, data: &[u8], chunk: usize) {
        for c in data.chunks(chunk) {
            self.write(c).await.expect("write");
        }
    }

    /// Commits and ends the stream, whatever the answer (as the Go client's Commit does).
    async fn commit(
        mut self,
        size: i64,
        expected: &str,
        labels: &HashMap<String, String>,
    ) -> Result<String, tonic::Status> {
        let r = self
            .send(WriteContentRequest {
                action: WriteAction::Commit as i32,
                total: size,
                offset: self.offset,
                expected: expected.into(),
                labels: labels.clone(),
                ..Default::default()
            })
            .await;
        self.close();
        let r = r?;
        if size != 0 {
            assert_eq!(r.offset, size, "committed size");
        }
        if !expected.is_empty() {
            assert_eq!(r.digest, expected, "committed digest");
        }
        Ok(r.digest)
    }

    /// The Go client's Truncate: only its own offset; the next write says where it goes.
    fn truncate(&mut self, at: i64) {
        self.offset = at;
    }

    fn close(&mut self) {
        self.tx = None;
    }
}

async fn info(ch: &Channel, ns: &str, digest: &str) -> Info {
    ContentClient::new(ch.clone())
        .info(req(
            ns,
            InfoRequest {
                digest: digest.into(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("info {digest} in {ns}: {e:?}"))
        .into_inner()
        .info
        .expect("info")
}

#[track_caller]
fn check_info(
    i: &Info,
    size: i64,
    labels: &HashMap<String, String>,
    (c1, c2): (SystemTime, SystemTime),
    (u1, u2): (SystemTime, SystemTime),
) {
    assert_eq!(i.size, size, "{}", i.digest);
    between("created_at", time(&i.created_at), c1, c2);
    between("updated_at", time(&i.updated_at), u1, u2);
    assert_eq!(&i.labels, labels, "labels of {}", i.digest);
}

async fn read_all(ch: &Channel, ns: &str, digest: &str, size: i64) -> Vec<u8> {
    let mut s = ContentClient::new(ch.clone())
        .read(req(
            ns,
            ReadContentRequest {
                digest: digest.into(),
                offset: 0,
                size,
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("read {digest}: {e:?}"))
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        out.extend(r.expect("read").data);
    }
    out
}

/// `content.WriteBlob`: open with the descriptor, write what is missing, commit.
async fn write_blob(ch: &Channel, ns: &str, r: &str, data: &[u8]) {
    let d = sha256(data);
    let mut w = Writer::open(ch, ns, r, data.len() as i64, &d)
        .await
        .expect("open");
    let have = w.offset as usize;
    if have < data.len() {
        w.write(&data[have..]).await.expect("write");
    }
    match w.commit(data.len() as i64, &d, &HashMap::new()).await {
        Ok(_) => {}
        Err(e) if e.code() == Code::AlreadyExists => {}
        Err(e) => panic!("write blob {r}: {e:?}"),
    }
}

async fn suite(who: &str, ch: Channel) {
    let ns = "suite";
    lease(&ch, ns).await;
    let none = HashMap::new();
    let labels: HashMap<String, String> = [("name".to_string(), "value".to_string())].into();

    // Content shared across namespaces: a writer in another namespace on content the store has
    // starts complete, and commits it there; or appends to it and commits something new.
    let b = content(1000, 5);
    let d = sha256(&b);
    let t1 = SystemTime::now();
    let other = "suite-other";
    lease(&ch, other).await;
    write_blob(&ch, ns, "ref-1000", &b).await;
    let mut w = Writer::open(&ch, other, "ref-1000", 1000, &d)
        .await
        .unwrap_or_else(|e| panic!("{who}: open in another namespace: {e:?}"));
    let t2 = SystemTime::now();
    let st = w.status().await;
    assert_eq!((st.offset, st.total), (1000, 1000), "{who}: shared content");
    assert_eq!(w.digest, d, "{who}: shared content's digest");
    between("started_at", time(&st.started_at), t1, t2);
    between("updated_at", time(&st.updated_at), t1, t2);
    w.commit(1000, &d, &none)
        .await
        .unwrap_or_else(|e| panic!("{who}: commit shared: {e:?}"));
    let t3 = SystemTime::now();
    for n in [ns, other] {
        check_info(&info(&ch, n, &d).await, 1000, &none, (t1, t3), (t1, t3));
        assert_eq!(read_all(&ch, n, &d, 0).await, b, "{who}: in {n}");
    }
    let b = content(1000, 6);
    let d = sha256(&b);
    let t1 = SystemTime::now();
    write_blob(&ch, ns, "ref-append", &b).await;
    let mut b2 = b.clone();
    b2.extend_from_slice(b"appended bytes");
    let d2 = sha256(&b2);
    let mut w = Writer::open(&ch, other, "ref-append", 1000, &d)
        .await
        .unwrap_or_else(|e| panic!("{who}: open in another namespace: {e:?}"));
    assert_eq!(w.status().await.offset, 1000, "{who}");
    w.write(b"appended bytes").await.expect("append");
    w.commit(b2.len() as i64, &d2, &none)
        .await
        .unwrap_or_else(|e| panic!("{who}: commit appended: {e:?}"));
    let t3 = SystemTime::now();
    check_info(&info(&ch, ns, &d).await, 1000, &none, (t1, t3), (t1, t3));
    check_info(
        &info(&ch, other, &d2).await,
        1014,
        &none,
        (t1, t3),
        (t1, t3),
    );
    assert_eq!(read_all(&ch, other, &d2, 0).await, b2, "{who}");
    assert_eq!(read_all(&ch, ns, &d, 0).await, b, "{who}");

    // Writers opened with no descriptor, a size, a digest, both: written 32 bytes at a time,
    // committed with labels and no checks; the digest each commit names is the content's.
    for (i, (with_size, with_digest)) in
        [(false, false), (true, false), (false, true), (true, true)]
            .into_iter()
            .enumerate()
    {
        let c = content(256, 100 + i as u64);
        let d = sha256(&c);
        let mut w = Writer::open(
            &ch,
            ns,
            &format!("c{i}"),
            if with_size { 256 } else { 0 },
            if with_digest { &d } else { "" },
        )
        .await
        .unwrap_or_else(|e| panic!("{who}: open c{i}: {e:?}"));
        w.write_in(&c, 32).await;
        let pre = SystemTime::now();
        let got = w.commit(0, "", &labels).await;
        let post = SystemTime::now();
        assert_eq!(
            got.unwrap_or_else(|e| panic!("{who}: commit c{i}: {e:?}")),
            d
        );
        check_info(
            &info(&ch, ns, &d).await,
            256,
            &labels,
            (pre, post),
            (pre, post),
        );
    }

    // A writer's status as it is written: offset, total, the digest so far, started and
    // updated times; then its info after the commit.
    let c1 = content(256, 1);
    let d1 = sha256(&c1);
    let pre_start = SystemTime::now();
    let mut w = Writer::open(&ch, ns, "status", 256, &d1)
        .await
        .expect("open");
    let post_start = SystemTime::now();
    let st = w.status().await;
    assert_eq!((st.offset, st.total), (0, 256), "{who}");
    between("started_at", time(&st.started_at), pre_start, post_start);
    between("updated_at", time(&st.updated_at), pre_start, post_start);
    for (from, to) in [(0, 64), (64, 192), (192, 256)] {
        let pre = SystemTime::now();
        w.write(&c1[from..to]).await.expect("write");
        let post = SystemTime::now();
        let st = w.status().await;
        assert_eq!((st.offset, st.total), (to as i64, 256), "{who}");
        assert_eq!(
            w.digest,
            sha256(&c1[..to]),
            "{who}: digest after {to} bytes"
        );
        between("started_at", time(&st.started_at), pre_start, post_start);
        between("updated_at", time(&st.updated_at), pre, post);
    }
    let pre = SystemTime::now();
    w.commit(0, "", &labels).await.expect("commit");
    let post = SystemTime::now();
    check_info(
        &info(&ch, ns, &d1).await,
        256,
        &labels,
        (pre, post),
        (pre, post),
    );

    // Resume: half written, closed, reopened — the status is the one before the close (the
    // digest of what is there, the same start and update times), and the rest completes it.
    let cb = content(256, 2);
    let db = sha256(&cb);
    let pre_start = SystemTime::now();
    let mut w = Writer::open(&ch, ns, "cb", 256, &db).await.expect("open");
    let post_start = SystemTime::now();
    w.write(&cb[..128]).await.expect("write");
    let post_update = SystemTime::now();
    let before = w.status().await;
    w.close();
    let mut w = Writer::open(&ch, ns, "cb", 256, &db)
        .await
        .unwrap_or_else(|e| panic!("{who}: reopen: {e:?}"));
    assert_eq!(w.offset, 128, "{who}");
    let st = w.status().await;
    assert_eq!((st.offset, st.total), (128, 256), "{who}");
    assert_eq!(w.digest, sha256(&cb[..128]), "{who}: digest after a reopen");
    between("started_at", time(&st.started_at), pre_start, post_start);
    between("updated_at", time(&st.updated_at), post_start, post_update);
    assert_eq!(
        st.updated_at, before.updated_at,
        "{who}: a reopen is no update"
    );
    w.write(&cb[128..]).await.expect("write");
    let pre = SystemTime::now();
    w.commit(0, "", &none).await.expect("commit");
    let post = SystemTime::now();
    check_info(
        &info(&ch, ns, &db).await,
        256,
        &none,
        (pre, post),
        (pre, post),
    );

    // Committing content the store has: AlreadyExists, with the digest named or not.
    for (i, expected) in [d1.as_str(), ""].into_iter().enumerate() {
        let mut w = Writer::open(&ch, ns, &format!("exists-{i}"), 0, "")
            .await
            .expect("open");
        w.write(&c1).await.expect("write");
        let e = w.commit(256, expected, &none).await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{who}: {e:?}");
    }

    // Commit errors and the state they leave (containerd's CommitErrorState).
    let r = "commit-error-state";
    let d2 = sha256(&content(256, 3));
    let unavailable = |e: Result<Writer, tonic::Status>| match e {
        Ok(_) => panic!("{who}: a second writer on a held ref"),
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{who}: {e:?}"),
    };
    let mut w = Writer::open(&ch, ns, r, 0, "").await.expect("open");
    w.write(&c1).await.expect("write");
    unavailable(Writer::open(&ch, ns, r, 0, "").await);
    let e = w.commit(256, &d1, &none).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{who}: {e:?}");
    // The ingest went with that commit: a new writer starts from nothing.
    let mut w = Writer::open(&ch, ns, r, 0, "").await.expect("open");
    assert_eq!(w.offset, 0, "{who}: ingest after AlreadyExists");
    unavailable(Writer::open(&ch, ns, r, 0, "").await);
    w.write(&c1).await.expect("write");
    let e = w.commit(256, "", &none).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{who}: {e:?}");
    let mut more = c1.clone();
    more.extend_from_slice(b"more");
    let dm = sha256(&more);
    let mut w = Writer::open(&ch, ns, r, 0, "").await.expect("open");
    assert_eq!(w.offset, 0, "{who}");
    w.write(&more).await.expect("write");
    let e = w.commit(260, &d2, &none).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "{who}: wrong digest: {e:?}"
    );
    // A failed digest or size check keeps what was written.
    let w = Writer::open(&ch, ns, r, 0, "").await.expect("open");
    assert_eq!(w.offset, 260, "{who}");
    unavailable(Writer::open(&ch, ns, r, 0, "").await);
    let e = w.commit(256, "", &none).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "{who}: wrong size: {e:?}"
    );
    let w = Writer::open(&ch, ns, r, 0, "").await.expect("open");
    unavailable(Writer::open(&ch, ns, r, 0, "").await);
    assert_eq!(w.commit(260, "", &none).await.expect("commit"), dm, "{who}");
    let mut w = Writer::open(&ch, ns, r, 0, "").await.expect("open");
    assert_eq!(w.offset, 0, "{who}: ingest after a commit");
    w.write(&c1).await.expect("write");
    unavailable(Writer::open(&ch, ns, r, 0, "").await);
    let e = w.commit(256, &d1, &none).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{who}: {e:?}");
    let mut w = Writer::open(&ch, ns, r, 0, "").await.expect("open");
    unavailable(Writer::open(&ch, ns, r, 0, "").await);
    w.truncate(0);
    w.close();
    let mut w = Writer::open(&ch, ns, r, 0, "")
        .await
        .unwrap_or_else(|e| panic!("{who}: reopen after a discard: {e:?}"));
    w.truncate(0);
    w.close();

    // Labels: set by the commit, replaced whole by an update without paths, and changed
    // label by label with paths; each update moves updated_at, never created_at.
    let cl = content(256, 4);
    let dl = sha256(&cl);
    let mut w = Writer::open(&ch, ns, "labels", 256, &dl)
        .await
        .expect("open");
    w.write(&cl).await.expect("write");
    let root = "2026-01-01T00:00:00Z".to_string();
    let mut l: HashMap<String, String> = [
        ("k1", "v1"),
        ("k2", "v2"),
        ("containerd.io/gc.root", root.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c1t = SystemTime::now();
    w.commit(0, "", &l).await.expect("commit");
    let c2t = SystemTime::now();
    check_info(&info(&ch, ns, &dl).await, 256, &l, (c1t, c2t), (c1t, c2t));
    l.insert("k1".into(), "newvalue".into());
    l.remove("k2");
    l.insert("k3".into(), "v3".into());
    let update = |l: HashMap<String, String>, paths: Vec<&str>| {
        let ch = ch.clone();
        let dl = dl.clone();
        let paths = paths.into_iter().map(String::from).collect::<Vec<_>>();
        async move {
            let pre = SystemTime::now();
            ContentClient::new(ch)
                .update(req(
                    ns,
                    UpdateRequest {
                        info: Some(Info {
                            digest: dl,
                            size: 256,
                            labels: l,
                            ..Default::default()
                        }),
                        update_mask: (!paths.is_empty())
                            .then_some(prost_types::FieldMask { paths }),
                    },
                ))
                .await
                .expect("update");
            (pre, SystemTime::now())
        }
    };
    let u = update(l.clone(), vec![]).await;
    check_info(&info(&ch, ns, &dl).await, 256, &l, (c1t, c2t), u);
    let l2: HashMap<String, String> = [("k1", "v1"), ("containerd.io/gc.root", root.as_str())]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let u = update(l2.clone(), vec!["labels.k3", "labels.k1"]).await;
    check_info(&info(&ch, ns, &dl).await, 256, &l2, (c1t, c2t), u);

    // Resume after a close at 0, 10, 50, 90 and 100 %: by truncating and writing all again, by
    // writing only the rest, by copying (the offset read from the status).
    for (i, size) in [500usize, 5000, 50000].into_iter().enumerate() {
        for (j, part) in [0.0, 0.1, 0.5, 0.9, 1.0].into_iter().enumerate() {
            for (k, how) in ["truncate", "discard", "copy"].into_iter().enumerate() {
                let b = content(size, (1000 + i * 100 + j * 10 + k) as u64);
                let d = sha256(&b);
                let limit = (size as f64 * part) as usize;
                let r = format!("ref-{i}-{j}-{how}");
                let mut w = Writer::open(&ch, ns, &r, size as i64, &d)
                    .await
                    .expect("open");
                if limit > 0 {
                    w.write(&b[..limit]).await.expect("write");
                }
                w.close();
                let mut w = Writer::open(&ch, ns, &r, size as i64, &d)
                    .await
                    .unwrap_or_else(|e| panic!("{who}: reopen {r}: {e:?}"));
                let st = w.status().await;
                assert_eq!(st.offset, limit as i64, "{who}: {r}");
                let pre = SystemTime::now();
                match how {
                    "truncate" => {
                        w.truncate(0);
                        w.write_in(&b, 1024).await;
                    }
                    "discard" => w.write_in(&b[limit..], 1024).await,
                    _ => {
                        let at = w.status().await.offset as usize;
                        w.write_in(&b[at..], 1024).await;
                    }
                }
                w.commit(size as i64, &d, &none)
                    .await
                    .unwrap_or_else(|e| panic!("{who}: commit {r}: {e:?}"));
                let post = SystemTime::now();
                check_info(
                    &info(&ch, ns, &d).await,
                    size as i64,
                    &none,
                    (pre, post),
                    (pre, post),
                );
            }
        }
    }

    // A read asking for more than the blob holds gives the blob.
    let small = b"foobar";
    write_blob(&ch, ns, "small", small).await;
    assert_eq!(read_all(&ch, ns, &sha256(small), 7).await, small, "{who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_behaves_as_containerds_test_suite_says() {
    // The reference first: what it does is what the checks expect.
    let c = tokio::task::spawn_blocking(berth_e2e::Containerd::start)
        .await
        .unwrap();
    suite("containerd", berth_e2e::channel_to(&c.sock).await).await;
    let d = tokio::task::spawn_blocking(Daemon::start).await.unwrap();
    suite("berthd", d.channel().await).await;
}

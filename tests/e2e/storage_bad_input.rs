//! Bad input to the storage services: each gets containerd's code and leaves the store unchanged.

use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{
    AbortRequest, Info, ListContentRequest, ListStatusesRequest, ReadContentRequest, StatusRequest,
    UpdateRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use berth_api::containerd::services::images::v1::images_client::ImagesClient;
use berth_api::containerd::services::images::v1::{CreateImageRequest, Image, ListImagesRequest};
use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_api::containerd::services::leases::v1::{AddResourceRequest, CreateRequest, Resource};
use berth_api::containerd::types::Descriptor;
use berth_e2e::{Daemon, blobs_on_disk, fails, sha256, with_ns};
use tokio_stream::StreamExt;
use tonic::Code;

const NS: &str = "bad";

/// The lease every write of these tests is made under, as real clients write: what a write
/// commits stays until the test is done with it, whenever the daemon's collector runs.
const LEASE: &str = "bad-input-hold";

/// Runs one Write stream with `msgs` under [`LEASE`] (made by the caller); returns the answers,
/// or the status that ended it.
async fn write(
    d: &Daemon,
    msgs: Vec<WriteContentRequest>,
) -> Result<Vec<WriteContentResponse>, tonic::Status> {
    write_on(d.channel().await, msgs).await
}

/// [`write`] on any daemon's channel (berthd's or containerd's).
async fn write_on(
    ch: tonic::transport::Channel,
    msgs: Vec<WriteContentRequest>,
) -> Result<Vec<WriteContentResponse>, tonic::Status> {
    let mut c = ContentClient::new(ch);
    let mut req = with_ns(NS, tokio_stream::iter(msgs));
    req.metadata_mut()
        .insert("containerd-lease", LEASE.parse().expect("header value"));
    let mut out = c.write(req).await?.into_inner();
    let mut got = Vec::new();
    while let Some(r) = out.next().await {
        got.push(r?);
    }
    Ok(got)
}

/// Makes [`LEASE`] on a daemon's channel.
async fn hold_lease(ch: tonic::transport::Channel) {
    LeasesClient::new(ch)
        .create(with_ns(
            NS,
            CreateRequest {
                id: LEASE.into(),
                labels: Default::default(),
            },
        ))
        .await
        .unwrap();
}

fn msg(action: WriteAction, r: &str, offset: i64, data: &[u8]) -> WriteContentRequest {
    WriteContentRequest {
        action: action as i32,
        r#ref: r.into(),
        offset,
        data: data.to_vec(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_write_rejects_bad_input() {
    let d = tokio::task::spawn_blocking(Daemon::start).await.unwrap();
    hold_lease(d.channel().await).await;
    let data = b"0123456789".repeat(100);
    let right = sha256(&data);
    let wrong = sha256(b"something else");

    // No ref on the first message.
    let st = write(&d, vec![msg(WriteAction::Stat, "", 0, b"")])
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().contains("reference"), "{}", st.message());

    // Wrong digest: FailedPrecondition, nothing committed, the ingest kept for a retry.
    let mut commit = msg(WriteAction::Commit, "r-digest", 0, &data);
    commit.expected = wrong.clone();
    let st = write(&d, vec![commit]).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert!(st.message().contains("digest"), "{}", st.message());

    // Short write: the commit says 2000 bytes, 1000 arrived.
    let mut commit = msg(WriteAction::Commit, "r-short", 0, &data);
    commit.total = 2000;
    let st = write(&d, vec![commit]).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");

    // Offsets out of order.
    let st = write(
        &d,
        vec![
            msg(WriteAction::Write, "r-order", 0, &data[..10]),
            msg(WriteAction::Write, "r-order", 50, &data[50..60]),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(st.code(), Code::OutOfRange, "{st:?}");

    // Bad digests and algorithms.
    let mut stat = msg(WriteAction::Stat, "r-alg", 0, b"");
    stat.expected = "sha512:abcd".into();
    assert_eq!(
        write(&d, vec![stat]).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut c = ContentClient::new(d.channel().await);
    let st = c
        .read(with_ns(
            NS,
            ReadContentRequest {
                digest: "sha256:zz".into(),
                offset: 0,
                size: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);

    // Unknown refs and digests.
    assert_eq!(
        c.status(with_ns(
            NS,
            StatusRequest {
                r#ref: "nope".into()
            }
        ))
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        c.abort(with_ns(
            NS,
            AbortRequest {
                r#ref: "nope".into()
            }
        ))
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    let st = c
        .read(with_ns(
            NS,
            ReadContentRequest {
                digest: right.clone(),
                offset: 0,
                size: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);

    // Missing namespace header.
    let st = c
        .list_statuses(tonic::Request::new(ListStatusesRequest { filters: vec![] }))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert_eq!(st.message(), "namespace is required");

    // Malformed filters.
    let st = c
        .list(with_ns(
            NS,
            ListContentRequest {
                filters: vec!["labels.\"x==".into()],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);

    // A good write still works, and the failed ones are visible as resumable ingests.
    let mut commit = msg(WriteAction::Commit, "r-good", 0, &data);
    commit.expected = right.clone();
    let got = write(&d, vec![commit]).await.unwrap();
    assert_eq!(got.last().unwrap().digest, right);
    // Committing it again: AlreadyExists, which clients treat as success.
    let mut again = msg(WriteAction::Stat, "r-again", 0, b"");
    again.expected = right.clone();
    assert_eq!(
        write(&d, vec![again]).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let statuses = c
        .list_statuses(with_ns(NS, ListStatusesRequest { filters: vec![] }))
        .await
        .unwrap()
        .into_inner()
        .statuses;
    let refs: Vec<_> = statuses.iter().map(|s| s.r#ref.as_str()).collect();
    assert!(
        refs.contains(&"r-digest") && refs.contains(&"r-short"),
        "{refs:?}"
    );
    let only = c
        .list_statuses(with_ns(
            NS,
            ListStatusesRequest {
                filters: vec!["ref==r-short".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(only.len(), 1);

    // Oversized labels: refused, labels unchanged.
    let big = "x".repeat(4096);
    let st = c
        .update(with_ns(
            NS,
            UpdateRequest {
                info: Some(Info {
                    digest: right.clone(),
                    labels: [("k".to_string(), big)].into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels.k".into()],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let disk = blobs_on_disk(&d.root());
    assert_eq!(disk.len(), 1, "only the good blob is on disk: {disk:?}");
    assert!(disk.contains_key(&right));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_leases_reject_bad_input() {
    let d = tokio::task::spawn_blocking(Daemon::start).await.unwrap();
    let mut i = ImagesClient::new(d.channel().await);
    let img = |name: &str, digest: &str, mt: &str| CreateImageRequest {
        image: Some(Image {
            name: name.into(),
            target: Some(Descriptor {
                media_type: mt.into(),
                digest: digest.into(),
                size: 1,
                annotations: Default::default(),
            }),
            ..Default::default()
        }),
        source_date_epoch: None,
    };
    let good = sha256(b"x");
    let mt = "application/vnd.oci.image.manifest.v1+json";
    assert_eq!(
        i.create(with_ns(NS, img("", &good, mt)))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        i.create(with_ns(NS, img("a", "sha256:nothex", mt)))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        i.create(with_ns(NS, img("a", &good, "")))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let st = i
        .list(with_ns(
            NS,
            ListImagesRequest {
                filters: vec!["name~=(".into()],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    i.create(with_ns(NS, img("ok", &good, mt))).await.unwrap();
    assert_eq!(
        i.create(with_ns(NS, img("ok", &good, mt)))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        i.list(with_ns(NS, ListImagesRequest { filters: vec![] }))
            .await
            .unwrap()
            .into_inner()
            .images
            .len(),
        1
    );

    let mut l = LeasesClient::new(d.channel().await);
    let st = l
        .create(with_ns(
            NS,
            CreateRequest {
                id: "x".into(),
                labels: [(
                    "containerd.io/gc.expire".to_string(),
                    "tomorrow".to_string(),
                )]
                .into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    l.create(with_ns(
        NS,
        CreateRequest {
            id: "x".into(),
            labels: Default::default(),
        },
    ))
    .await
    .unwrap();
    let add = |ty: &str, id: &str| AddResourceRequest {
        id: "x".into(),
        resource: Some(Resource {
            id: id.into(),
            r#type: ty.into(),
        }),
    };
    assert_eq!(
        l.add_resource(with_ns(NS, add("bogus", "y")))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        l.add_resource(with_ns(NS, add("content", "nope")))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let missing = AddResourceRequest {
        id: "missing".into(),
        resource: Some(Resource {
            id: good.clone(),
            r#type: "content".into(),
        }),
    };
    assert_eq!(
        l.add_resource(with_ns(NS, missing))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    l.add_resource(with_ns(NS, add("snapshots/overlayfs", "k1")))
        .await
        .unwrap();

    // A namespace with objects in it cannot be deleted.
    let e = tokio::task::spawn_blocking(move || {
        let e = fails(d.ctr(&["namespaces", "rm", NS]));
        (d, e)
    })
    .await
    .unwrap()
    .1;
    assert!(e.contains("must be empty"), "{e}");
}

#[test]
fn hostile_archives_change_nothing() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", tar_with("../../etc/evil", b"x")),
        ("absolute", tar_with("/etc/evil", b"x")),
        ("garbage", vec![0xde; 4096]),
        ("empty", Vec::new()),
        ("bad-blob", {
            let mut v = tar_with("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
            v.truncate(v.len() - 1024);
            v.extend(
                tar_with(&format!("blobs/sha256/{}", &sha256(b"a")[7..]), b"not a").as_slice(),
            );
            v
        }),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(format!("{name}.tar"));
        std::fs::write(&p, bytes).unwrap();
        let e = fails(d.berthctl(&["-n", NS, "images", "import", &p.display().to_string()]));
        assert!(!e.contains("panicked"), "{name}: {e}");
        assert!(!e.trim().is_empty(), "{name}: no error message");
    }
    assert!(berth_e2e::ok(d.berthctl(&["-n", NS, "images", "ls", "-q"])).is_empty());
    assert!(!dir.path().join("../../etc/evil").exists());
}

fn tar_with(path: &str, data: &[u8]) -> Vec<u8> {
    // Built by hand so that any path (even `..` or absolute) lands in the header as given.
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    let size = format!("{:011o}", data.len());
    h[124..135].copy_from_slice(size.as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// One message on a Write stream, its answer read, and the stream let go without waiting for
/// the server's end of it: how containerd's Go client closes a writer.
async fn write_and_let_go(
    ch: tonic::transport::Channel,
    m: WriteContentRequest,
) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut req = with_ns(NS, tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("containerd-lease", LEASE.parse().expect("header value"));
    tx.send(m).await.expect("the stream is open");
    let mut answers = ContentClient::new(ch).write(req).await?.into_inner();
    answers.next().await.transpose()?;
    Ok(())
}

/// A ref used as containerd's Go client uses one: a Write stream closed and the same ref opened
/// again (or aborted) at once, 50 times back to back — the closing writer is waited for, never
/// answered `locked`; and a commit that failed on a wrong digest does not bind the next stream's
/// commit, which names none. The same against Debian's containerd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_refs_reopen_abort_and_commit_after_a_failure() {
    let d = tokio::task::spawn_blocking(Daemon::start).await.unwrap();
    go_client_ref_cycles("berthd", d.channel().await, true).await;
    let c = tokio::task::spawn_blocking(berth_e2e::Containerd::start)
        .await
        .unwrap();
    // containerd's Abort races a writer still closing (its RemoveAll answers "directory not
    // empty", Unknown): there, each abort follows a stream that has ended.
    go_client_ref_cycles("containerd", berth_e2e::channel_to(&c.sock).await, false).await;
}

async fn go_client_ref_cycles(who: &str, ch: tonic::transport::Channel, abort_at_once: bool) {
    hold_lease(ch.clone()).await;
    let mut data = Vec::new();
    for i in 0..50u8 {
        let r = write_on(ch.clone(), vec![msg(WriteAction::Stat, "go-1", 0, b"")])
            .await
            .unwrap_or_else(|e| panic!("{who}: reopen #{i}: {e:?}"));
        let offset = r[0].offset;
        assert_eq!(offset as usize, data.len(), "{who}: #{i}");
        write_and_let_go(
            ch.clone(),
            msg(WriteAction::Write, "go-1", offset, &[i; 100]),
        )
        .await
        .unwrap_or_else(|e| panic!("{who}: write #{i}: {e:?}"));
        data.extend_from_slice(&[i; 100]);
    }
    // A commit naming a wrong digest fails; the next stream's commit, naming none, succeeds.
    let mut wrong = msg(WriteAction::Commit, "go-1", data.len() as i64, b"");
    wrong.expected = sha256(b"not this");
    let e = write_on(ch.clone(), vec![wrong]).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{who}: {e:?}");
    let r = write_on(
        ch.clone(),
        vec![msg(WriteAction::Commit, "go-1", data.len() as i64, b"")],
    )
    .await
    .unwrap_or_else(|e| panic!("{who}: commit after the failed one: {e:?}"));
    assert_eq!(r.last().unwrap().digest, sha256(&data), "{who}");
    // Abort the moment a stream is let go.
    let mut c = ContentClient::new(ch.clone());
    for i in 0..20 {
        let partial = msg(WriteAction::Write, "go-2", 0, b"partial");
        if abort_at_once {
            write_and_let_go(ch.clone(), partial).await
        } else {
            write_on(ch.clone(), vec![partial]).await.map(drop)
        }
        .unwrap_or_else(|e| panic!("{who}: partial write #{i}: {e:?}"));
        c.abort(with_ns(
            NS,
            AbortRequest {
                r#ref: "go-2".into(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{who}: abort #{i}: {e:?}"));
    }
}

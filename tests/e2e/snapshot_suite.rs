//! The overlayfs snapshotter through the gRPC API, checked against the semantics of
//! containerd's snapshotter test suite: stat of active and committed snapshots and their
//! parents (keys that are paths, as the suite uses), keys taken twice, removal of a parent and
//! of a key to reuse it, updates (labels, paths, times, immutable fields), read-only views,
//! walks with filters and a stat inside a walk, and a chain of 128 layers mounted. Each check
//! runs against Debian's containerd first, then berthd; mounts are made by Berth's own mount
//! code, as its shim makes them.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, ViewSnapshotRequest,
};
use berth_api::containerd::types::Mount;
use berth_e2e::{Daemon, with_ns};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

const NS: &str = "snapshot-suite";
const SN: &str = "overlayfs";

struct Snap {
    c: SnapshotsClient<Channel>,
    who: &'static str,
}

fn root_label() -> HashMap<String, String> {
    [(
        "containerd.io/gc.root".to_string(),
        "snapshot-suite".to_string(),
    )]
    .into()
}

fn time(t: &Option<prost_types::Timestamp>) -> SystemTime {
    let t = (*t).expect("a timestamp");
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

impl Snap {
    async fn prepare(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
        self.prepare_with(key, parent, root_label()).await
    }

    async fn prepare_with(
        &mut self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, tonic::Status> {
        self.make(false, key, parent, labels).await
    }

    async fn view_with(
        &mut self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, tonic::Status> {
        self.make(true, key, parent, labels).await
    }

    /// Prepare (or, with `view`, View) `key` over `parent`: the mounts.
    async fn make(
        &mut self,
        view: bool,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, tonic::Status> {
        let (snapshotter, key, parent) = (SN.to_string(), key.to_string(), parent.to_string());
        Ok(if view {
            let r = ViewSnapshotRequest {
                snapshotter,
                key,
                parent,
                labels,
            };
            self.c.view(with_ns(NS, r)).await?.into_inner().mounts
        } else {
            let r = PrepareSnapshotRequest {
                snapshotter,
                key,
                parent,
                labels,
            };
            self.c.prepare(with_ns(NS, r)).await?.into_inner().mounts
        })
    }

    async fn view(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
        self.view_with(key, parent, root_label()).await
    }

    async fn commit_with(
        &mut self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), tonic::Status> {
        self.c
            .commit(with_ns(
                NS,
                CommitSnapshotRequest {
                    snapshotter: SN.into(),
                    name: name.into(),
                    key: key.into(),
                    labels,
                    ..Default::default()
                },
            ))
            .await
            .map(drop)
    }

    async fn commit(&mut self, name: &str, key: &str) -> Result<(), tonic::Status> {
        self.commit_with(name, key, root_label()).await
    }

    async fn stat(&mut self, key: &str) -> Info {
        self.c
            .stat(with_ns(
                NS,
                StatSnapshotRequest {
                    snapshotter: SN.into(),
                    key: key.into(),
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("{}: stat {key}: {e:?}", self.who))
            .into_inner()
            .info
            .expect("info")
    }

    async fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        self.c
            .remove(with_ns(
                NS,
                RemoveSnapshotRequest {
                    snapshotter: SN.into(),
                    key: key.into(),
                },
            ))
            .await
            .map(drop)
    }

    async fn update(&mut self, info: Info, paths: &[&str]) -> Result<Info, tonic::Status> {
        Ok(self
            .c
            .update(with_ns(
                NS,
                UpdateSnapshotRequest {
                    snapshotter: SN.into(),
                    info: Some(info),
                    update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
                        paths: paths.iter().map(|p| p.to_string()).collect(),
                    }),
                },
            ))
            .await?
            .into_inner()
            .info
            .expect("info"))
    }

    async fn walk(&mut self, filters: &[&str]) -> Vec<Info> {
        let mut s = self
            .c
            .list(with_ns(
                NS,
                ListSnapshotsRequest {
                    snapshotter: SN.into(),
                    filters: filters.iter().map(|f| f.to_string()).collect(),
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("{}: list {filters:?}: {e:?}", self.who))
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            out.extend(r.expect("list").info);
        }
        out
    }
}

/// Mounts a snapshot's mounts on `dir` with Berth's mount code; unmounted on drop.
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn new(mounts: &[Mount], dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).expect("mount point");
        for m in mounts {
            berth_mount::mount(&m.r#type, &m.source, &m.options, dir)
                .unwrap_or_else(|e| panic!("mount on {}: {e}", dir.display()));
        }
        Mounted(dir.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let p = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

async fn suite(who: &'static str, ch: Channel, work: &Path) {
    let mut s = Snap {
        c: SnapshotsClient::new(ch),
        who,
    };
    let key = |n: &str| work.join(n).to_string_lossy().into_owned();

    // Stat of active and committed snapshots, and the parent of a parent. The active one is
    // written through its mount.
    let preparing = key("preparing");
    let m = s.prepare(&preparing, "").await.expect("prepare");
    assert!(!m.is_empty(), "{who}: mounts");
    {
        let _m = Mounted::new(&m, &work.join("mnt-preparing"));
        std::fs::write(work.join("mnt-preparing/foo"), "foo\n").expect("write");
    }
    let i = s.stat(&preparing).await;
    assert_eq!(
        (i.name.as_str(), i.kind, i.parent.as_str()),
        (preparing.as_str(), Kind::Active as i32, ""),
        "{who}"
    );
    let snap_a = key("snapA");
    s.commit(&snap_a, &preparing).await.expect("commit");
    let i = s.stat(&snap_a).await;
    assert_eq!(
        (i.name.as_str(), i.kind, i.parent.as_str()),
        (snap_a.as_str(), Kind::Committed as i32, ""),
        "{who}"
    );
    let next = key("next");
    let m = s.prepare(&next, &snap_a).await.expect("prepare");
    {
        let _m = Mounted::new(&m, &work.join("mnt-next"));
        assert_eq!(
            std::fs::read_to_string(work.join("mnt-next/foo")).expect("foo"),
            "foo\n",
            "{who}"
        );
        std::fs::write(work.join("mnt-next/foo"), "foo bar\n").expect("write");
    }
    let snap_b = key("snapB");
    s.commit(&snap_b, &next).await.expect("commit");
    let b = s.stat(&snap_b).await;
    assert_eq!(b.parent, snap_a, "{who}");
    assert_eq!(s.stat(&b.parent).await.parent, "", "{who}");

    // A key taken twice, whatever the kinds.
    let new_layer = key("newlayer");
    s.prepare(&new_layer, &snap_a).await.expect("prepare");
    for (what, e) in [
        (
            "view on a prepared key",
            s.view(&new_layer, &snap_a).await.err(),
        ),
        (
            "prepare on a prepared key",
            s.prepare(&new_layer, &snap_a).await.err(),
        ),
    ] {
        let e = e.unwrap_or_else(|| panic!("{who}: {what} succeeded"));
        assert_eq!(e.code(), Code::AlreadyExists, "{who}: {what}: {e:?}");
    }
    let view_layer = key("viewLayer");
    s.view(&view_layer, &snap_a).await.expect("view");
    let e = s.view(&view_layer, &snap_a).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{who}: {e:?}");
    let e = s.commit(&snap_a, &new_layer).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::AlreadyExists,
        "{who}: commit to a taken name: {e:?}"
    );
    let e = s
        .prepare(&key("orphan"), &key("missing"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{who}: a missing parent: {e:?}");
    let e = s
        .prepare(&key("child-of-active"), &new_layer)
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "{who}: an active parent: {e:?}"
    );

    // A parent goes only after its children, from the top down.
    let base = key("base");
    s.prepare(&base, "").await.expect("prepare");
    let committed_base = key("committed-base");
    s.commit(&committed_base, &base).await.expect("commit");
    let inter = key("intermediate");
    s.prepare(&inter, &committed_base).await.expect("prepare");
    let committed_inter = key("committed-inter");
    s.commit(&committed_inter, &inter).await.expect("commit");
    let top = key("toplayer");
    s.prepare(&top, &committed_inter).await.expect("prepare");
    let e = s.remove(&committed_inter).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{who}: {e:?}");
    for k in [&top, &committed_inter, &committed_base] {
        s.remove(k)
            .await
            .unwrap_or_else(|e| panic!("{who}: remove {k}: {e:?}"));
    }
    let e = s.remove(&committed_base).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{who}: {e:?}");

    // Keys and names free again once removed.
    s.prepare("committed-a", "").await.expect("prepare");
    s.commit("committed-1", "committed-a")
        .await
        .expect("commit");
    s.prepare("reuse-1", "committed-1").await.expect("prepare");
    s.remove("reuse-1").await.expect("remove");
    s.view("reuse-1", "committed-1").await.expect("view again");
    s.remove("reuse-1").await.expect("remove");
    s.prepare("reuse-1", "").await.expect("prepare again");
    s.remove("committed-1").await.expect("remove");
    s.commit("committed-1", "reuse-1")
        .await
        .unwrap_or_else(|e| panic!("{who}: commit to a freed name: {e:?}"));

    // Updates: labels replaced whole, or path by path; times; immutable fields.
    let t1 = SystemTime::now();
    s.prepare("c1-a", "").await.unwrap();
    s.commit("c1", "c1-a").await.unwrap();
    s.prepare("c2-a", "c1").await.unwrap();
    s.commit("c2", "c2-a").await.unwrap();
    s.prepare("a1", "c2").await.unwrap();
    s.prepare("a2", "").await.unwrap();
    s.view("v1", "c2").await.unwrap();
    s.view("v2", "").await.unwrap();
    let t2 = SystemTime::now();
    for (name, kind, parent) in [
        ("c1", Kind::Committed, ""),
        ("c2", Kind::Committed, "c1"),
        ("a1", Kind::Active, "c2"),
        ("a2", Kind::Active, ""),
        ("v1", Kind::View, "c2"),
        ("v2", Kind::View, ""),
    ] {
        let mut st = s.stat(name).await;
        let created = time(&st.created_at);
        assert!(
            t1 <= created && created <= t2,
            "{who}: {name} created {created:?}"
        );
        assert_eq!(st.created_at, st.updated_at, "{who}: {name}");
        let same = |i: &Info| {
            assert_eq!(
                (i.name.as_str(), i.kind, i.parent.as_str()),
                (name, kind as i32, parent),
                "{who}"
            )
        };
        same(&st);
        let root = root_label()["containerd.io/gc.root"].clone();
        let mut expected: HashMap<String, String> = [
            ("l1", "v1"),
            ("l2", "v2"),
            ("l3", "v3"),
            ("containerd.io/gc.root", root.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        st.parent = "doesnotexist".into();
        st.labels = expected.clone();
        let u1 = SystemTime::now();
        let got = s.update(st.clone(), &[]).await.expect("update");
        let u2 = SystemTime::now();
        assert_eq!(got.created_at, st.created_at, "{who}: {name}");
        let updated = time(&got.updated_at);
        assert!(
            u1 <= updated && updated <= u2,
            "{who}: {name} updated {updated:?}"
        );
        same(&got);
        assert_eq!(got.labels, expected, "{who}: {name}");
        expected = [
            ("l1", "updated"),
            ("l3", "v3"),
            ("containerd.io/gc.root", root.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        st.labels = [("l1", "updated"), ("l4", "v4")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let got = s
            .update(st.clone(), &["labels.l1", "labels.l2"])
            .await
            .expect("update");
        assert_eq!(got.labels, expected, "{who}: {name}");
        expected = [("l4", "v4"), ("containerd.io/gc.root", root.as_str())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        st.labels = expected.clone();
        let got = s.update(st.clone(), &["labels"]).await.expect("update");
        assert_eq!(got.labels, expected, "{who}: {name}");
        assert_eq!(s.stat(name).await.labels, expected, "{who}: {name}");
        let e = s.update(st.clone(), &["parent"]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{who}: {name}: {e:?}");
    }

    // A view mounts read-only.
    s.prepare(&key("ro-preparing"), "").await.unwrap();
    s.commit(&key("ro-committed"), &key("ro-preparing"))
        .await
        .unwrap();
    let m = s.view(&key("ro-view"), &key("ro-committed")).await.unwrap();
    {
        let _m = Mounted::new(&m, &work.join("mnt-view"));
        let w = std::fs::write(work.join("mnt-view/testfile"), "testcontent");
        assert!(w.is_err(), "{who}: a view is writable");
    }
    s.remove(&key("ro-view")).await.expect("remove view");
    s.remove(&key("ro-committed")).await.expect("remove");

    // Walks with filters, and a stat inside a walk.
    let walk = |l: &[(&str, &str)]| -> HashMap<String, String> {
        let mut m: HashMap<String, String> = l
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.insert("containerd.io/gc.root".into(), "check-walk".into());
        m
    };
    s.prepare_with("a-np", "", walk(&[])).await.unwrap();
    s.prepare_with("p-tmp", "", walk(&[])).await.unwrap();
    s.commit_with("p", "p-tmp", walk(&[])).await.unwrap();
    s.prepare_with("a", "p", walk(&[])).await.unwrap();
    s.view_with("v", "p", walk(&[])).await.unwrap();
    s.prepare_with("p-wl-tmp", "", walk(&[])).await.unwrap();
    s.commit_with("p-wl", "p-wl-tmp", walk(&[("l", "1")]))
        .await
        .unwrap();
    s.prepare_with("a-wl", "p-wl", walk(&[("l", "2")]))
        .await
        .unwrap();
    s.view_with("v-wl", "p-wl", walk(&[("l", "3")]))
        .await
        .unwrap();
    s.prepare_with("a-np-wl", "", walk(&[("l", "2")]))
        .await
        .unwrap();
    let root = r#"labels."containerd.io/gc.root"==check-walk"#;
    for (filters, matches) in [
        (
            vec![root.to_string()],
            vec!["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
        ),
        (
            vec![format!("kind==active,{root}")],
            vec!["a-np", "a", "a-wl", "a-np-wl"],
        ),
        (vec![format!("kind==view,{root}")], vec!["v", "v-wl"]),
        (vec![format!("kind==committed,{root}")], vec!["p", "p-wl"]),
        (
            vec!["name==p".into(), "name==a-np-wl".into()],
            vec!["p", "a-np-wl"],
        ),
        (vec!["name==a-wl,labels.l".into()], vec!["a-wl"]),
        (vec!["parent==p".into()], vec!["a", "v"]),
        (
            vec![format!(r#"parent!="",{root}"#)],
            vec!["a", "v", "a-wl", "v-wl"],
        ),
        (
            vec!["labels.l".into()],
            vec!["p-wl", "a-wl", "v-wl", "a-np-wl"],
        ),
        (vec!["labels.l==2".into()], vec!["a-wl", "a-np-wl"]),
    ] {
        let f: Vec<&str> = filters.iter().map(String::as_str).collect();
        let mut got: Vec<String> = s.walk(&f).await.into_iter().map(|i| i.name).collect();
        got.sort();
        let mut want: Vec<String> = matches.iter().map(|m| m.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "{who}: walk {filters:?}");
    }
    for i in s.walk(&[root]).await {
        assert_eq!(s.stat(&i.name).await, i, "{who}: stat in a walk");
    }

    // 128 layers, each changing a file and adding one; a view of the top sees them all.
    let mut parent = String::new();
    for i in 0..128 {
        let k = key(&format!("prepare-layer-{i}"));
        let m = s.prepare(&k, &parent).await.expect("prepare");
        {
            let dir = work.join(format!("mnt-layer-{i}"));
            let _m = Mounted::new(&m, &dir);
            std::fs::write(dir.join("overwriteme"), format!("{i} WAS HERE!\n")).unwrap();
            std::fs::create_dir_all(dir.join("addhere")).unwrap();
            std::fs::write(dir.join(format!("addhere/file-{i}")), "same\n").unwrap();
        }
        let c = key(&format!("committed-{i}"));
        s.commit(&c, &k).await.expect("commit");
        parent = c;
    }
    let m = s.view(&key("fullview"), &parent).await.expect("view");
    let dir = work.join("mnt-fullview");
    let _m = Mounted::new(&m, &dir);
    assert_eq!(
        std::fs::read_to_string(dir.join("overwriteme")).unwrap(),
        "127 WAS HERE!\n",
        "{who}"
    );
    assert_eq!(
        std::fs::read_dir(dir.join("addhere")).unwrap().count(),
        128,
        "{who}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_behave_as_containerds_test_suite_says() {
    let work = tempfile::tempdir().expect("tempdir");
    // The reference first: what it does is what the checks expect.
    let c = tokio::task::spawn_blocking(berth_e2e::Containerd::start)
        .await
        .unwrap();
    suite(
        "containerd",
        berth_e2e::channel_to(&c.sock).await,
        &work.path().join("containerd"),
    )
    .await;
    let d = tokio::task::spawn_blocking(Daemon::start).await.unwrap();
    suite("berthd", d.channel().await, &work.path().join("berthd")).await;
}

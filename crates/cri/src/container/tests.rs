use std::sync::Arc;

use super::*;
use crate::fake::{Fake, FakeTask};
use crate::meta::{Container, ContainerState};

fn container(id: &str, sandbox: &str, created_at: i64, started: bool, app: &str) -> Container {
    Container {
        id: id.into(),
        config: cri::ContainerConfig {
            labels: [("app".to_string(), app.to_string())].into(),
            ..Default::default()
        },
        st: ContainerState {
            name: format!("{id}_name"),
            sandbox_id: sandbox.into(),
            created_at,
            started_at: i64::from(started),
            ..Default::default()
        },
    }
}

/// ListContainers as the kubelet filters it: by id or pod id prefix, state and labels (all
/// must match), oldest first.
#[tokio::test]
async fn list_filters_by_id_pod_state_and_labels() {
    let fake = Arc::new(Fake::default());
    let (_t, cri) = crate::fake::cri(&fake);
    cri.meta.with(|ix| {
        for c in [
            container("c3", "podb", 30, false, "web"),
            container("c1", "poda", 10, true, "web"),
            container("c2", "poda", 20, false, "db"),
        ] {
            ix.containers.insert(c.id.clone(), c);
        }
    });
    let ids = |f: Option<cri::ContainerFilter>| -> Vec<String> {
        cri.list_containers(f.as_ref())
            .into_iter()
            .map(|c| c.id)
            .collect()
    };
    assert_eq!(ids(None), ["c1", "c2", "c3"]);
    let f = |g: fn(&mut cri::ContainerFilter)| {
        let mut f = cri::ContainerFilter::default();
        g(&mut f);
        Some(f)
    };
    assert_eq!(ids(f(|f| f.id = "c2".into())), ["c2"]);
    assert_eq!(ids(f(|f| f.pod_sandbox_id = "poda".into())), ["c1", "c2"]);
    assert_eq!(
        ids(f(|f| f.pod_sandbox_id = "pod".into())),
        ["c1", "c2", "c3"]
    );
    assert_eq!(
        ids(f(|f| {
            f.state = Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            })
        })),
        ["c1"]
    );
    assert_eq!(
        ids(f(
            |f| f.label_selector = [("app".to_string(), "web".to_string())].into()
        )),
        ["c1", "c3"]
    );
    assert_eq!(
        ids(f(|f| {
            f.pod_sandbox_id = "podb".into();
            f.label_selector = [("app".to_string(), "db".to_string())].into();
        })),
        Vec::<String>::new()
    );
}

/// StopContainer of a task that ignores its stop signal: SIGTERM, the grace period, then
/// SIGKILL to every process; the exit is recorded (137, Error) and the task deleted.
/// RemoveContainer then takes the record, the snapshot and the name.
#[tokio::test]
async fn stop_escalates_to_sigkill_and_remove_takes_everything() {
    let fake = Arc::new(Fake::default());
    let (_t, cri) = crate::fake::cri(&fake);
    let name = "web_pod_ns_uid_0";
    let c = Container {
        id: "c".into(),
        config: cri::ContainerConfig::default(),
        st: ContainerState {
            name: name.into(),
            started_at: 1,
            pid: 42,
            ..Default::default()
        },
    };
    cri.meta.reserve(name, "c", "container").unwrap();
    cri.meta
        .with(|ix| ix.containers.insert("c".into(), c.clone()));
    fake.containers.lock().unwrap().insert(
        "c".into(),
        ctrd::Container {
            id: "c".into(),
            ..Default::default()
        },
    );
    fake.tasks.lock().unwrap().insert(
        "c".into(),
        FakeTask {
            ignores_term: true,
            ..Default::default()
        },
    );

    cri.stop_container("c", 1).await.unwrap();
    assert_eq!(
        *fake.kills.lock().unwrap(),
        [
            ("c".to_string(), libc::SIGTERM as u32, false),
            ("c".to_string(), libc::SIGKILL as u32, true)
        ]
    );
    let c = cri.meta.find_container("c").unwrap();
    assert_eq!(c.state(), cri::ContainerState::ContainerExited);
    assert_eq!((c.st.exit_code, c.st.reason.as_str()), (137, "Error"));
    assert_eq!(c.st.pid, 0);
    assert!(fake.tasks.lock().unwrap().is_empty(), "the task is deleted");
    // Stopping again does nothing.
    cri.stop_container("c", 1).await.unwrap();
    assert_eq!(fake.kills.lock().unwrap().len(), 2);

    cri.remove_container("c").await.unwrap();
    assert!(fake.containers.lock().unwrap().is_empty());
    assert_eq!(*fake.snapshots_removed.lock().unwrap(), ["c"]);
    assert!(cri.meta.find_container("c").is_err());
    cri.meta.reserve(name, "next", "container").unwrap();
    // Removing what is gone is fine.
    cri.remove_container("c").await.unwrap();
}

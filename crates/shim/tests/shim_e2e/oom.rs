//! The memory cgroup's OOM notification becomes `/tasks/oom`; Checkpoint goes through the
//! runtime's `checkpoint` (CRIU).

use std::time::Duration;

use berth_api::containerd::events::{TaskExit, TaskOom};
use berth_api::containerd::task::v2::CheckpointTaskRequest;
use berth_api::containerd::v1::types::Status as TaskStatus;

use crate::harness::*;

fn limit_memory(bundle: &std::path::Path, bytes: u64) {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["linux"]["resources"]["memory"] = serde_json::json!({"limit": bytes, "swap": bytes});
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_is_reported() {
    let mut w = World::new("oom");
    // busybox tail keeps its current line in memory; /dev/zero has no newline.
    bundle(&w.bundle, &["tail", "/dev/zero"], false, &w.cgroup);
    limit_memory(&w.bundle, 16 << 20);
    let task = w.start_shim().await;
    w.create_plain(&task).await;
    task.start(&opts(), &w.start_req("")).await.unwrap();
    let waited = task.wait(&opts(), &w.wait_req("")).await.unwrap();
    assert_eq!(waited.exit_status, 137, "killed by the OOM killer");
    // The kernel may notify more than one OOM (a dying task can hit the limit again):
    // everything up to the exit.
    let mut evs = w.events.next(3).await;
    while !evs.iter().any(|e| e.topic == "/tasks/exit") {
        assert!(evs.len() < 16, "no exit event: {:?}", topics(&evs));
        evs.extend(w.events.next(1).await);
    }
    let topics = topics(&evs);
    assert_eq!(&topics[..2], ["/tasks/create", "/tasks/start"]);
    let oom = evs
        .iter()
        .find(|e| e.topic == "/tasks/oom")
        .expect("an OOM event");
    let o: TaskOom = payload(oom);
    assert_eq!(o.container_id, w.id);
    let exit = evs
        .iter()
        .find(|e| e.topic == "/tasks/exit")
        .unwrap_or_else(|| panic!("an exit event: {topics:?}"));
    assert_eq!(payload::<TaskExit>(exit).exit_status, 137);
    task.delete(&opts(), &w.delete_req("")).await.unwrap();
    w.events.expect(&["/tasks/delete"]).await;
    w.shutdown(&task).await;
    w.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_goes_through_criu() {
    let mut w = World::new("ckpt");
    // berth-runc has no CRIU support (it says so; see the runtime's tests): checkpoints go
    // through Debian's runc.
    w.runtime = "runc".into();
    bundle(&w.bundle, &["sleep", "1000"], false, &w.cgroup);
    let task = w.start_shim().await;
    w.create_plain(&task).await;
    task.start(&opts(), &w.start_req("")).await.unwrap();
    w.events.expect(&["/tasks/create", "/tasks/start"]).await;
    let image = w.t().join("checkpoint");
    let r = task
        .checkpoint(
            &opts(),
            &CheckpointTaskRequest {
                id: w.id.clone(),
                path: image.display().to_string(),
                options: None,
            },
        )
        .await;
    match r {
        Ok(()) => {
            // CRIU works here: an image was written and announced; the task kept running.
            assert!(
                std::fs::read_dir(&image).unwrap().count() > 0,
                "empty checkpoint image"
            );
            w.events.expect(&["/tasks/checkpointed"]).await;
        }
        Err(st) => {
            // CRIU cannot dump on this kernel (e.g. an unknown vDSO layout): the runtime's
            // words come back, and the task is unharmed.
            assert!(st.message().contains("criu"), "{st}");
        }
    }
    let state = task.state(&opts(), &w.state_req("")).await.unwrap();
    assert_eq!(state.status, TaskStatus::Running as i32);
    task.kill(&opts(), &w.kill_req("", 9, false)).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task.wait(&opts(), &w.wait_req("")))
        .await
        .expect("exit after kill");
    task.delete(&opts(), &w.delete_req("")).await.unwrap();
    w.shutdown(&task).await;
    w.assert_clean();
}

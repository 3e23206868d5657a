//! A long-running container: exec (with stdin), pids, pause/resume, stats, update, kill, and the
//! error codes of each misuse.

use std::time::Duration;

use berth_api::containerd::events::{TaskExecStarted, TaskExit};
use berth_api::containerd::runc::v1::ProcessDetails;
use berth_api::containerd::task::v2::{
    CloseIoRequest, ExecProcessRequest, PauseRequest, PidsRequest, ResumeRequest, StatsRequest,
    UpdateTaskRequest,
};
use berth_api::containerd::v1::types::Status as TaskStatus;
use berth_api::io::containerd::cgroups::v1::Metrics;
use berth_api::io::containerd::cgroups::v2::Metrics as MetricsV2;
use berth_ttrpc::Code;
use prost::Message;
use tokio::io::AsyncWriteExt;

use crate::harness::*;

fn exec_req(
    w: &World,
    exec_id: &str,
    args: &[&str],
    stdin: &str,
    stdout: &str,
) -> ExecProcessRequest {
    ExecProcessRequest {
        id: w.id.clone(),
        exec_id: exec_id.into(),
        terminal: false,
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: String::new(),
        spec: Some(process_spec(&w.bundle, args, false)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_pause_resume_stats_kill() {
    let mut w = World::new("ctl");
    bundle(&w.bundle, &["sleep", "1000"], false, &w.cgroup);
    let task = w.start_shim().await;
    let init = w.create_plain(&task).await;
    task.start(&opts(), &w.start_req("")).await.unwrap();
    w.events.expect(&["/tasks/create", "/tasks/start"]).await;

    // An exec that reads stdin and echoes it; CloseIO ends its input.
    let in_path = mkfifo(&w.t().join("exec-in"));
    let out_path = mkfifo(&w.t().join("exec-out"));
    let out_r = open_output(&out_path);
    task.exec(
        &opts(),
        &exec_req(&w, "cat", &["sh", "-c", "cat; exit 5"], &in_path, &out_path),
    )
    .await
    .unwrap();
    let st = task
        .exec(&opts(), &exec_req(&w, "cat", &["true"], "", ""))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::AlreadyExists, "{st}");
    let exec_pid = task.start(&opts(), &w.start_req("cat")).await.unwrap().pid;
    assert!(exec_pid > 0 && exec_pid != init);
    let out = collect(out_r);
    let mut stdin = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(&in_path)
        .unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    // Pids knows the exec by its id.
    let pids = task
        .pids(&opts(), &PidsRequest { id: w.id.clone() })
        .await
        .unwrap()
        .processes;
    assert!(
        pids.iter().any(|p| p.pid == init && p.info.is_none()),
        "{pids:?}"
    );
    let ep = pids
        .iter()
        .find(|p| p.pid == exec_pid)
        .expect("exec in pids");
    let info = ep.info.as_ref().expect("exec details");
    assert_eq!(info.type_url, "containerd.runc.v1.ProcessDetails");
    assert_eq!(
        ProcessDetails::decode(info.value.as_slice())
            .unwrap()
            .exec_id,
        "cat"
    );
    task.close_io(
        &opts(),
        &CloseIoRequest {
            id: w.id.clone(),
            exec_id: "cat".into(),
            stdin: true,
        },
    )
    .await
    .unwrap();
    let waited = task.wait(&opts(), &w.wait_req("cat")).await.unwrap();
    assert_eq!(waited.exit_status, 5);
    assert_eq!(out.await.unwrap(), b"ping\n");
    let evs = w
        .events
        .expect(&["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"])
        .await;
    let s: TaskExecStarted = payload(&evs[1]);
    assert_eq!((s.exec_id.as_str(), s.pid), ("cat", exec_pid));
    let e: TaskExit = payload(&evs[2]);
    assert_eq!((e.id.as_str(), e.pid, e.exit_status), ("cat", exec_pid, 5));
    let d = task.delete(&opts(), &w.delete_req("cat")).await.unwrap();
    assert_eq!((d.pid, d.exit_status), (exec_pid, 5));
    let st = task.state(&opts(), &w.state_req("cat")).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st}");
    let st = task
        .kill(&opts(), &w.kill_req("nope", 9, false))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st}");

    // An exec of a missing binary fails at Start with the runtime's own words.
    task.exec(
        &opts(),
        &exec_req(&w, "missing", &["/no/such/binary"], "", ""),
    )
    .await
    .unwrap();
    let st = task
        .start(&opts(), &w.start_req("missing"))
        .await
        .unwrap_err();
    assert!(
        st.message().contains("no such file") || st.message().contains("not found"),
        "{st}"
    );
    w.events.expect(&["/tasks/exec-added"]).await;

    // Pause and resume.
    task.pause(&opts(), &PauseRequest { id: w.id.clone() })
        .await
        .unwrap();
    let state = task.state(&opts(), &w.state_req("")).await.unwrap();
    assert_eq!(state.status, TaskStatus::Paused as i32);
    let st = task
        .pause(&opts(), &PauseRequest { id: w.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st}");
    task.resume(&opts(), &ResumeRequest { id: w.id.clone() })
        .await
        .unwrap();
    let state = task.state(&opts(), &w.state_req("")).await.unwrap();
    assert_eq!(state.status, TaskStatus::Running as i32);
    w.events.expect(&["/tasks/paused", "/tasks/resumed"]).await;

    // Update: a memory limit, visible in the stats.
    let resources = serde_json::json!({"memory": {"limit": 64 * 1024 * 1024}});
    task.update(
        &opts(),
        &UpdateTaskRequest {
            id: w.id.clone(),
            resources: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources).unwrap(),
            }),
            annotations: Default::default(),
        },
    )
    .await
    .unwrap();
    let stats = task
        .stats(&opts(), &StatsRequest { id: w.id.clone() })
        .await
        .unwrap();
    let any = stats.stats.expect("stats");
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // A cgroup v2-only host: containerd's v2 metrics.
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = MetricsV2::decode(any.value.as_slice()).unwrap();
        assert_eq!(
            m.memory.expect("memory stats").usage_limit,
            64 * 1024 * 1024
        );
        assert!(m.pids.expect("pids stats").current >= 1);
        assert!(m.cpu.expect("cpu stats").usage_usec > 0);
    } else {
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = Metrics::decode(any.value.as_slice()).unwrap();
        let mem = m.memory.expect("memory stats");
        assert_eq!(mem.usage.expect("memory usage").limit, 64 * 1024 * 1024);
        assert!(m.pids.expect("pids stats").current >= 1);
        assert!(m.cpu.expect("cpu stats").usage.expect("cpu usage").total > 0);
    }

    // Kill (all) ends the container; a second kill finds nothing.
    task.kill(&opts(), &w.kill_req("", 9, true)).await.unwrap();
    let waited = task.wait(&opts(), &w.wait_req("")).await.unwrap();
    assert_eq!(waited.exit_status, 137);
    let st = task
        .kill(&opts(), &w.kill_req("", 9, false))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st}");
    let st = task
        .exec(&opts(), &exec_req(&w, "late", &["true"], "", ""))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st}");
    task.delete(&opts(), &w.delete_req("")).await.unwrap();
    w.events.expect(&["/tasks/exit", "/tasks/delete"]).await;
    w.shutdown(&task).await;
    assert!(!alive(init as i32) && !alive(exec_pid as i32));
    w.assert_clean();
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Without its own pid namespace a container's execs would outlive its init: the shim ends them
/// when the init exits, and reports both exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_exit_ends_execs_in_the_host_pid_namespace() {
    let mut w = World::new("hostpid");
    bundle(&w.bundle, &["sleep", "1000"], false, &w.cgroup);
    let path = w.bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "pid");
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let task = w.start_shim().await;
    w.create_plain(&task).await;
    task.start(&opts(), &w.start_req("")).await.unwrap();
    task.exec(&opts(), &exec_req(&w, "long", &["sleep", "1000"], "", ""))
        .await
        .unwrap();
    let exec_pid = task.start(&opts(), &w.start_req("long")).await.unwrap().pid;
    task.kill(&opts(), &w.kill_req("", 9, false)).await.unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        task.wait(&opts(), &w.wait_req("long")),
    )
    .await
    .expect("the exec ends with its init")
    .unwrap();
    assert_eq!(e.exit_status, 137);
    assert!(wait_gone(exec_pid as i32, Duration::from_secs(5)).await);
    let evs = w.events.next(6).await;
    assert_eq!(
        topics(&evs)[..4],
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started"
        ]
    );
    task.delete(&opts(), &w.delete_req("long")).await.unwrap();
    task.delete(&opts(), &w.delete_req("")).await.unwrap();
    w.shutdown(&task).await;
    w.assert_clean();
}

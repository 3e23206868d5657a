//! Our ttrpc client against Debian's `containerd-shim-runc-v2` (with Debian's runc), and the shim's
//! Go ttrpc client against our `Events/Forward` server.
//!
//! The 1.6 shim hard-codes its socket directory under `/run/containerd`, so it runs in a private
//! mount namespace with a temporary directory bound over `/run`. Its socket is reachable from here
//! through that directory: a unix socket is the same inode under every path.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_api::containerd::services::events::ttrpc::v1::ForwardRequest;
use berth_api::containerd::services::events::ttrpc::v1::events_ttrpc::{Events, EventsServer};
use berth_api::containerd::task::v2::task_ttrpc::TaskClient;
use berth_api::containerd::task::v2::{
    ConnectRequest, CreateTaskRequest, DeleteRequest, ShutdownRequest, StartRequest, StateRequest,
    WaitRequest,
};
use berth_ttrpc::{CallOptions, Client, Code, Context, PeerCheck, Server, Status};
use prost::Message;
use tokio::sync::mpsc;

const NS: &str = "berth-e2e";

struct Forwarded(mpsc::UnboundedSender<ForwardRequest>);

impl Events for Forwarded {
    async fn forward(&self, _ctx: Context, req: ForwardRequest) -> Result<(), Status> {
        let _ = self.0.send(req);
        Ok(())
    }
}

/// Kills what the test started (by PID) and removes the container's runc state and cgroup,
/// whatever happened.
struct Cleanup {
    shim_pid: Option<i32>,
    bundle: PathBuf,
    runc_root: PathBuf,
    id: String,
    cgroup: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .args(["delete", "--force", &self.id])
            .output();
        if let Some(pid) = self.shim_pid {
            // The PID the shim reported for itself via Connect, if it still names a process
            // working in our bundle.
            berth_e2e::signal_if(pid, libc::SIGKILL, |p| {
                berth_e2e::cwd_under(p, &self.bundle)
            });
        }
        berth_e2e::remove_cgroup(&self.cgroup);
    }
}

fn open_log_fifo(bundle: &Path) {
    let fifo = bundle.join("log");
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    // O_RDWR never blocks on a FIFO; drain it so the shim never blocks writing its log.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&fifo)
        .expect("open log fifo");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_containerd_shim_runc_v2_over_ttrpc() {
    let tmp = tempfile::Builder::new()
        .prefix("berth-shim-")
        .tempdir()
        .unwrap();
    let t = tmp.path();
    let id = format!("shim-interop-{}", std::process::id());
    let cgroup = format!("/berth-e2e-{id}");
    let bundle = t.join("bundle");
    std::fs::create_dir_all(t.join("run")).unwrap();
    berth_e2e::busybox_bundle(&bundle, &["sh", "-c", "echo started; exit 3"], &cgroup);
    open_log_fifo(&bundle);
    let mut cleanup = Cleanup {
        shim_pid: None,
        bundle: bundle.clone(),
        runc_root: t.join("run/containerd/runc").join(NS),
        id: id.clone(),
        cgroup,
    };

    // Our events endpoint, which the shim dials through TTRPC_ADDRESS.
    let events_sock = t.join("events.sock");
    let (tx, mut events) = mpsc::unbounded_channel();
    let listener = tokio::net::UnixListener::bind(&events_sock).unwrap();
    let events_server = Server::new()
        .register(EventsServer::new(Forwarded(tx)))
        .peer_check(PeerCheck::SameUser)
        .start(listener);

    // `start`, as containerd 1.6 runs it: flags before the action, runc options Any on stdin.
    let script = format!(
        "mount --bind {run} /run && exec containerd-shim-runc-v2 -namespace {NS} -address {addr} -publish-binary /bin/false -id {id} start",
        run = t.join("run").display(),
        addr = t.join("containerd.sock").display(),
    );
    let options = prost_types::Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: berth_api::containerd::runc::v1::Options::default().encode_to_vec(),
    };
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", &events_sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting containerd-shim-runc-v2 (apt-get install containerd)");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&options.encode_to_vec())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "shim start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let in_ns = address.strip_prefix("unix://").expect("a unix:// address");
    let sock = t
        .join("run")
        .join(in_ns.strip_prefix("/run/").expect("under /run"));
    assert_eq!(
        std::fs::read_to_string(bundle.join("address"))
            .unwrap()
            .trim(),
        address
    );

    let task = TaskClient::new(Client::connect(&sock).await.expect("dial the shim"));
    let opts = CallOptions::with_timeout(Duration::from_secs(20))
        .metadata("containerd-namespace-ttrpc", NS);

    let c = task
        .connect(&opts, &ConnectRequest { id: id.clone() })
        .await
        .unwrap();
    assert!(c.shim_pid > 0);
    cleanup.shim_pid = Some(c.shim_pid as i32);

    let st = task
        .state(
            &opts,
            &StateRequest {
                id: "no-such-task".into(),
                exec_id: String::new(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st}");

    let created = task
        .create(
            &opts,
            &CreateTaskRequest {
                id: id.clone(),
                bundle: bundle.display().to_string(),
                options: Some(options.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(created.pid > 0);
    let state = task
        .state(
            &opts,
            &StateRequest {
                id: id.clone(),
                exec_id: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        state.status,
        berth_api::containerd::v1::types::Status::Created as i32
    );

    // Wait before Start, as ctr does: it must block until the process exits.
    let waiter = {
        let task = task.clone();
        let opts = opts.clone();
        let id = id.clone();
        tokio::spawn(async move {
            task.wait(
                &opts,
                &WaitRequest {
                    id,
                    exec_id: String::new(),
                },
            )
            .await
        })
    };
    task.start(
        &opts,
        &StartRequest {
            id: id.clone(),
            exec_id: String::new(),
        },
    )
    .await
    .unwrap();
    let waited = waiter.await.unwrap().unwrap();
    assert_eq!(waited.exit_status, 3);
    let deleted = task
        .delete(
            &opts,
            &DeleteRequest {
                id: id.clone(),
                exec_id: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(deleted.exit_status, 3);
    assert_eq!(deleted.pid, created.pid);
    let _ = task
        .shutdown(
            &opts,
            &ShutdownRequest {
                id: id.clone(),
                now: false,
            },
        )
        .await;

    // The Go shim forwards /tasks/create, start, exit and delete, in order, to our server.
    let mut topics = Vec::new();
    while topics.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("events from the shim")
            .expect("channel open");
        let env = ev.envelope.expect("envelope");
        assert_eq!(env.namespace, NS);
        let any = env.event.expect("event");
        if env.topic == "/tasks/exit" {
            assert_eq!(any.type_url, "containerd.events.TaskExit");
            let exit =
                berth_api::containerd::events::TaskExit::decode(any.value.as_slice()).unwrap();
            assert_eq!(exit.exit_status, 3);
            assert_eq!(exit.container_id, id);
        }
        topics.push(env.topic);
    }
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );

    // After Shutdown the shim exits; no process of ours is left behind.
    let pid = cleanup.shim_pid.unwrap();
    for _ in 0..100 {
        // SAFETY: signal 0 only checks whether the PID exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            cleanup.shim_pid = None;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cleanup.shim_pid.is_none(),
        "shim {pid} still running after Shutdown"
    );
    events_server.shutdown(Duration::from_secs(2)).await;
}

//! Warm shims: one of Berth's own shims started ahead of need (`[runtime] warm_shims`), taken
//! by the next Tasks.Create of an `io.containerd.berth.v2` task and refilled in the background.

use super::*;

impl Runtimes {
    /// Keeps `n` warm shims from now on (started in the background, refilled as they are taken).
    /// Removes what warm shims of an earlier daemon left (those ended with it).
    pub(crate) fn keep_warm(self: &Arc<Self>, n: usize) {
        let _ = std::fs::remove_dir_all(&self.warm_root);
        self.warm_target
            .store(n, std::sync::atomic::Ordering::SeqCst);
        if n == 0 {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(me) = me.upgrade() else { return };
                let want = me.warm_target.load(std::sync::atomic::Ordering::SeqCst);
                let have = me.warm.lock().unwrap_or_else(|e| e.into_inner()).len();
                if have < want {
                    match me.start_warm().await {
                        Ok(w) => me.warm.lock().unwrap_or_else(|e| e.into_inner()).push(w),
                        Err(e) => {
                            // Not on PATH, or failing: tasks start their shims on demand.
                            tracing::warn!(error = %e, "no warm shim");
                            return;
                        }
                    }
                    continue;
                }
                // Waits without keeping the manager alive (a permit stored meanwhile counts).
                let taken = me.warm_taken.clone();
                drop(me);
                taken.notified().await;
            }
        });
    }

    /// Starts one warm shim.
    async fn start_warm(&self) -> Result<WarmShim, String> {
        let binary = shim_binary(WARM_RUNTIME).map_err(|e| e.to_string())?;
        let id = format!("warm-{}", uuid::Uuid::new_v4().simple());
        let dir = self.warm_root.join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let started = async {
            let mut cmd = self.action(&binary, WARM_NAMESPACE, &id, &dir, "start", &["-warm"]);
            cmd.env("BERTH_WARM_DAEMON_PID", std::process::id().to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let out =
                tokio::time::timeout(ACTION_TIMEOUT, tokio::process::Command::from(cmd).output())
                    .await
                    .map_err(|_| "start: timed out".to_string())?
                    .map_err(|e| format!("start: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "start failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let path = parse_start_output(&printed)?;
            let client = dial(&path).await.map_err(|e| e.to_string())?;
            Ok(WarmShim {
                dir: dir.clone(),
                binary: binary.clone(),
                address: format!("unix://{}", path.display()),
                client,
            })
        }
        .await;
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        started.map_err(|e| format!("{}: {e}", binary.display()))
    }

    /// Ends the warm shims (the daemon is stopping).
    pub(crate) async fn stop_warm(&self) {
        self.warm_target
            .store(0, std::sync::atomic::Ordering::SeqCst);
        let idle: Vec<WarmShim> =
            std::mem::take(&mut *self.warm.lock().unwrap_or_else(|e| e.into_inner()));
        for w in idle {
            shutdown_now(&w.client).await;
            let _ = std::fs::remove_dir_all(&w.dir);
        }
    }

    /// Task `id` of namespace `ns` gets a warm shim, if one is idle and the task can have it
    /// (Berth's shim, no shim cgroup asked for). The bundle holds config.json and its log is
    /// followed already; `None` when the caller must start a shim.
    pub(super) async fn adopt_warm(
        &self,
        ns: &str,
        id: &str,
        binary: &Path,
        bundle: &Path,
        options: Option<&prost_types::Any>,
    ) -> Option<Arc<Shim>> {
        use berth_api::containerd::runc::v1::Options;
        let plain = match options {
            None => true,
            Some(a) if a.type_url.ends_with("containerd.runc.v1.Options") => {
                Options::decode(a.value.as_slice()).is_ok_and(|o| o.shim_cgroup.is_empty())
            }
            Some(_) => false,
        };
        if !plain {
            return None;
        }
        let w = {
            let mut idle = self.warm.lock().unwrap_or_else(|e| e.into_inner());
            let i = idle.iter().position(|w| w.binary == binary)?;
            idle.swap_remove(i)
        };
        self.warm_taken.notify_one();
        let dir = w.dir;
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&dir);
        });
        if let Err(e) = std::fs::write(bundle.join("address"), &w.address) {
            tracing::warn!(error = %e, "writing a warm shim's address into its bundle");
            shutdown_now(&w.client).await;
            return None;
        }
        // A warm shim killed while idle does not answer: the caller starts one.
        self.attach(ns, id, bundle, binary, w.client, Duration::from_secs(2))
            .await
            .ok()
    }
}

/// The runtime whose shim can be started ahead of need: Berth's own.
const WARM_RUNTIME: &str = "io.containerd.berth.v2";

/// The placeholder namespace a warm shim is started in.
const WARM_NAMESPACE: &str = "berth-warm";

/// An idle shim of Berth's own, started with `-warm` before any task needed it. Tasks.Create of
/// an `io.containerd.berth.v2` task takes it instead of running the shim's `start`: the shim
/// becomes that task's on its first Create (which names the namespace, the id and the bundle;
/// see the shim's `Shim::adopt`). An unadopted warm shim ends with the daemon that started it.
#[derive(Debug)]
pub(super) struct WarmShim {
    dir: PathBuf,
    binary: PathBuf,
    /// As the shim's `start` printed it.
    address: String,
    client: TaskClient,
}

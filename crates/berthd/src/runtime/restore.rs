//! Start-up: the shims of every bundle found again (in parallel), or cleaned up after and their
//! exits published.

use super::*;

impl Runtimes {
    /// Start-up: reconnects to the shims of every bundle (in parallel); cleans up after those
    /// that are gone and publishes their exit.
    pub(crate) async fn restore(self: &Arc<Self>) {
        let mut found = Vec::new();
        let Ok(nss) = std::fs::read_dir(&self.root) else {
            return;
        };
        for ns in nss.flatten() {
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            let Ok(ids) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for id in ids.flatten() {
                found.push((
                    ns_name.clone(),
                    id.file_name().to_string_lossy().into_owned(),
                    id.path(),
                ));
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for (ns, id, bundle) in found {
            let me = self.clone();
            set.spawn(async move { me.restore_one(&ns, &id, &bundle).await });
        }
        let (mut live, mut dead) = (0, 0);
        while let Some(r) = set.join_next().await {
            match r {
                Ok(true) => live += 1,
                Ok(false) => dead += 1,
                Err(_) => dead += 1,
            }
        }
        if live + dead > 0 {
            tracing::info!(live, dead, "reconnected to shims");
        }
    }

    async fn restore_one(&self, ns: &str, id: &str, bundle: &Path) -> bool {
        let binary = std::fs::read(bundle.join("shim-binary-path"))
            .ok()
            .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()));
        let address = std::fs::read_to_string(bundle.join("address"))
            .ok()
            .and_then(|a| parse_start_output(&a).ok());
        if let (Some(binary), Some(address)) = (&binary, &address)
            && let Ok(shim) = self.connect(ns, id, bundle, binary, address).await
        {
            // Read the shim's log again: while nobody did, its lines were dropped.
            if let Err(e) = self.start_log(bundle, ns, id) {
                tracing::warn!(namespace = %ns, id = %id, error = %e, "reopening the shim's log");
            }
            // An exit while we were down may not have reached us: report it (once; the
            // exchange drops a second report), after subscribers have had a moment to return.
            if let Ok(st) = shim
                .client
                .state(
                    &shim.opts(Some(CALL_TIMEOUT)),
                    &berth_api::containerd::task::v2::StateRequest {
                        id: id.to_string(),
                        exec_id: String::new(),
                    },
                )
                .await
                && st.status == berth_api::containerd::v1::types::Status::Stopped as i32
            {
                let events = self.events.clone();
                let (ns, id) = (ns.to_string(), id.to_string());
                tokio::spawn(async move {
                    tokio::time::sleep(RECOVERED_EXIT_DELAY).await;
                    events.publish(
                        &ns,
                        "/tasks/exit",
                        &TaskExit {
                            container_id: id.clone(),
                            id,
                            pid: st.pid,
                            exit_status: st.exit_status,
                            exited_at: st.exited_at,
                        },
                    );
                });
            }
            return true;
        }
        tracing::warn!(namespace = %ns, id = %id, "shim is gone; cleaning up its bundle");
        let resp = match &binary {
            Some(b) => self.cleanup_bundle(ns, id, bundle, b).await,
            None => {
                let _ = std::fs::remove_dir_all(bundle);
                None
            }
        };
        let (pid, status, exited_at) = match resp {
            Some(r) => (r.pid, r.exit_status, r.exited_at),
            None => (0, 255, crate::pb::sys_ts(std::time::SystemTime::now())),
        };
        self.events.publish(
            ns,
            "/tasks/exit",
            &TaskExit {
                container_id: id.to_string(),
                id: id.to_string(),
                pid,
                exit_status: status,
                exited_at,
            },
        );
        self.events.publish(
            ns,
            "/tasks/delete",
            &TaskDelete {
                container_id: id.to_string(),
                pid,
                exit_status: status,
                exited_at: crate::pb::sys_ts(std::time::SystemTime::now()),
                id: id.to_string(),
            },
        );
        false
    }
}

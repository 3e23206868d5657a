//! `containerd.services.introspection.v1.Introspection`.

use berth_api::containerd::services::introspection::v1::{
    Plugin, PluginInfoRequest, PluginInfoResponse, PluginsRequest, PluginsResponse, ServerResponse,
    introspection_server,
};
use berth_store::Store;
use berth_store::filters;
use tonic::{Request, Response, Status};

use crate::errors::to_status;

#[derive(Debug)]
pub(crate) struct Introspection {
    store: Store,
    plugins: Vec<Plugin>,
}

impl Introspection {
    pub(crate) fn new(store: Store, plugins: Vec<Plugin>) -> Self {
        Introspection { store, plugins }
    }
}

/// The inode of this process's pid namespace, as `stat -L /proc/self/ns/pid` shows it.
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0)
}

#[tonic::async_trait]
impl introspection_server::Introspection for Introspection {
    async fn plugins(
        &self,
        req: Request<PluginsRequest>,
    ) -> Result<Response<PluginsResponse>, Status> {
        let filter = filters::parse_all(&req.into_inner().filters)
            .map_err(|e| Status::invalid_argument(format!("filters: {e}")))?;
        let plugins = self
            .plugins
            .iter()
            .filter(|p| {
                filter.matches(&|path: &[String]| match path.first().map(String::as_str) {
                    Some("type") => Some(p.r#type.clone()).filter(|s| !s.is_empty()),
                    Some("id") => Some(p.id.clone()).filter(|s| !s.is_empty()),
                    _ => None,
                })
            })
            .cloned()
            .collect();
        Ok(Response::new(PluginsResponse { plugins }))
    }

    async fn server(&self, _: Request<()>) -> Result<Response<ServerResponse>, Status> {
        let uuid = self.store.server_uuid().map_err(to_status)?;
        Ok(Response::new(ServerResponse {
            uuid,
            pid: u64::from(std::process::id()),
            pidns: pid_namespace(),
            deprecations: Vec::new(),
        }))
    }

    async fn plugin_info(
        &self,
        req: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        let req = req.into_inner();
        let plugin = self
            .plugins
            .iter()
            .find(|p| p.r#type == req.r#type && p.id == req.id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!("plugin {}.{}: not found", req.r#type, req.id))
            })?;
        Ok(Response::new(PluginInfoResponse {
            plugin: Some(plugin),
            extra: None,
        }))
    }
}

//! `containerd.services.version.v1.Version`.

use berth_api::containerd::services::version::v1::{VersionResponse, version_server};
use tonic::{Request, Response, Status};

/// The version this daemon reports: the containerd API level it implements, with Berth's own
/// version as semver build metadata (clients such as nerdctl parse it as semver).
pub(crate) const VERSION: &str = concat!("v1.7.24+berth.", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Default)]
pub(crate) struct Version;

#[tonic::async_trait]
impl version_server::Version for Version {
    async fn version(&self, _: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: VERSION.to_string(),
            revision: env!("BERTH_REVISION").to_string(),
        }))
    }
}

/// `<version> (<revision>)`, for `--version`.
pub(crate) fn version_string() -> &'static str {
    concat!(
        "v1.7.24+berth.",
        env!("CARGO_PKG_VERSION"),
        " ",
        env!("BERTH_REVISION")
    )
}

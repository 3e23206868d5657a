//! `berthctl version`.

use berth_api::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use berth_api::containerd::services::version::v1::version_client::VersionClient;

use crate::client::Conn;

pub(crate) async fn run(conn: &Conn) -> anyhow::Result<()> {
    let v = VersionClient::new(conn.channel.clone())
        .version(conn.req(()))
        .await?
        .into_inner();
    let s = IntrospectionClient::new(conn.channel.clone())
        .server(conn.req(()))
        .await?
        .into_inner();
    println!("Client:");
    println!("  Version:  {}", env!("CARGO_PKG_VERSION"));
    println!();
    println!("Server:");
    println!("  Version:  {}", v.version);
    println!("  Revision: {}", v.revision);
    println!("  UUID: {}", s.uuid);
    println!("  PID: {}", s.pid);
    Ok(())
}

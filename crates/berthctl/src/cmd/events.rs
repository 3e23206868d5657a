//! `berthctl events`: print the daemon's events as they happen.

use berth_api::containerd::services::events::v1::SubscribeRequest;
use berth_api::containerd::services::events::v1::events_client::EventsClient;
use tokio_stream::StreamExt;

use super::rfc3339_nanos;
use crate::client::Conn;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Filters (containerd syntax), e.g. `topic~=/images/` or `namespace==default`.
    filters: Vec<String>,
}

pub(crate) async fn run(conn: &Conn, args: Args) -> anyhow::Result<()> {
    let mut c = EventsClient::new(conn.channel.clone());
    let mut stream = c
        .subscribe(conn.req(SubscribeRequest {
            filters: args.filters,
        }))
        .await?
        .into_inner();
    while let Some(env) = stream.next().await {
        let env = env?;
        let ts = env
            .timestamp
            .map(|t| rfc3339_nanos(t.seconds, t.nanos))
            .unwrap_or_default();
        let ty = env.event.map(|e| e.type_url).unwrap_or_default();
        println!("{ts} {} {} {ty}", env.namespace, env.topic);
    }
    Ok(())
}

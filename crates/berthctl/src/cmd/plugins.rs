//! `berthctl plugins ls`.

use berth_api::containerd::services::introspection::v1::PluginsRequest;
use berth_api::containerd::services::introspection::v1::introspection_client::IntrospectionClient;

use crate::client::Conn;
use crate::table::Table;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// List plugins, optionally filtered (containerd filter syntax, e.g. `type==io.containerd.grpc.v1`).
    #[command(alias = "list")]
    Ls {
        /// Print requirements, exports and errors too.
        #[arg(short, long)]
        detailed: bool,
        /// Filters (containerd's syntax, e.g. `labels."k"==v`); an item matching any is shown.
        filters: Vec<String>,
    },
}

pub(crate) async fn run(conn: &Conn, action: Action) -> anyhow::Result<()> {
    let Action::Ls { detailed, filters } = action;
    let plugins = IntrospectionClient::new(conn.channel.clone())
        .plugins(conn.req(PluginsRequest { filters }))
        .await?
        .into_inner()
        .plugins;
    if detailed {
        for p in plugins {
            println!("Type:          {}", p.r#type);
            println!("ID:            {}", p.id);
            if !p.requires.is_empty() {
                println!("Requires:      {}", p.requires.join(", "));
            }
            let mut exports: Vec<_> = p.exports.into_iter().collect();
            exports.sort();
            for (k, v) in exports {
                println!("Export:        {k}={v}");
            }
            if !p.capabilities.is_empty() {
                println!("Capabilities:  {}", p.capabilities.join(", "));
            }
            if let Some(e) = p.init_err {
                println!("Error:         {} ({})", e.message, e.code);
            }
            println!();
        }
        return Ok(());
    }
    let mut t = Table::new(&["TYPE", "ID", "PLATFORMS", "STATUS"], 4);
    for p in plugins {
        let platforms = if p.platforms.is_empty() {
            "-".to_string()
        } else {
            p.platforms
                .iter()
                .map(|pl| {
                    let mut s = format!("{}/{}", pl.os, pl.architecture);
                    if !pl.variant.is_empty() {
                        s.push('/');
                        s.push_str(&pl.variant);
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let status = if p.init_err.is_some() { "error" } else { "ok" };
        t.row(vec![p.r#type, p.id, platforms, status.into()]);
    }
    print!("{}", t.render());
    Ok(())
}

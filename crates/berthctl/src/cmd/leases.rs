//! `berthctl leases ls|create|rm`.

use std::time::Duration;

use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_api::containerd::services::leases::v1::{CreateRequest, DeleteRequest, ListRequest};

use super::ListArgs;
use super::{format_labels, parse_labels, rfc3339};
use crate::client::Conn;
use crate::table::{Table, quiet_or};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// List leases.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Create a lease (a generated id unless --id).
    Create {
        /// The lease's id.
        #[arg(long)]
        id: Option<String>,
        /// Expiry, e.g. `24h`, `30m`, `90s` (sets containerd.io/gc.expire); 0 for none.
        #[arg(short = 'x', long, default_value = "24h")]
        expires: String,
        /// Labels, `key=value`.
        labels: Vec<String>,
    },
    /// Delete leases.
    #[command(alias = "delete", alias = "remove")]
    Rm {
        /// The leases.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Collect garbage before returning.
        #[arg(long)]
        sync: bool,
    },
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("expires: {s:?} is not a duration like 24h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => anyhow::bail!("expires: {s:?} is not a duration like 24h (units s, m, h)"),
    };
    Ok(Duration::from_secs(secs))
}

pub(crate) async fn run(conn: &Conn, action: Action) -> anyhow::Result<()> {
    let mut c = LeasesClient::new(conn.channel.clone());
    match action {
        Action::Ls(ListArgs { quiet, filters }) => {
            let leases = c
                .list(conn.req(ListRequest { filters }))
                .await?
                .into_inner()
                .leases;
            let t = Table::new(&["ID", "CREATED AT", "LABELS"], 1);
            let Some(mut t) = quiet_or(quiet, &leases, |l| &l.id, t) else {
                return Ok(());
            };
            for l in leases {
                let created = l.created_at.map(|t| rfc3339(t.seconds)).unwrap_or_default();
                t.row(vec![l.id, created, format_labels(&l.labels)]);
            }
            print!("{}", t.render());
        }
        Action::Create {
            id,
            expires,
            labels,
        } => {
            let mut labels = parse_labels(&labels)?;
            let d = parse_duration(&expires)?;
            if !d.is_zero() {
                let at = std::time::SystemTime::now() + d;
                let secs = at.duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
                labels.insert("containerd.io/gc.expire".into(), rfc3339(secs));
            }
            let lease = c
                .create(conn.req(CreateRequest {
                    id: id.unwrap_or_default(),
                    labels,
                }))
                .await?
                .into_inner()
                .lease
                .unwrap_or_default();
            println!("{}", lease.id);
        }
        Action::Rm { ids, sync } => {
            for id in ids {
                c.delete(conn.req(DeleteRequest {
                    id: id.clone(),
                    sync,
                }))
                .await?;
                println!("{id}");
            }
        }
    }
    Ok(())
}

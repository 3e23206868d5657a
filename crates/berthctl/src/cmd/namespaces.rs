//! `berthctl namespaces ls|create|rm|label`.

use berth_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, GetNamespaceRequest, ListNamespacesRequest,
    Namespace, UpdateNamespaceRequest,
};

use super::{format_labels, labels_mask, parse_labels};
use crate::client::Conn;
use crate::table::{Table, quiet_or};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// List namespaces.
    #[command(alias = "list")]
    Ls {
        /// Print only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create a namespace, with optional `key=value` labels.
    Create {
        /// The namespace.
        name: String,
        /// Labels, `key=value`.
        labels: Vec<String>,
    },
    /// Remove empty namespaces.
    #[command(alias = "remove", alias = "delete")]
    Rm {
        /// The namespaces.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set (`key=value`) or remove (`key`) labels; with none, print the labels.
    Label {
        /// The namespace.
        name: String,
        /// Labels: `key=value` sets one, `key` alone removes it.
        labels: Vec<String>,
    },
}

pub(crate) async fn run(conn: &Conn, action: Action) -> anyhow::Result<()> {
    let mut c = NamespacesClient::new(conn.channel.clone());
    match action {
        Action::Ls { quiet } => {
            let list = c
                .list(conn.req(ListNamespacesRequest::default()))
                .await?
                .into_inner()
                .namespaces;
            let t = Table::new(&["NAME", "LABELS"], 1);
            let Some(mut t) = quiet_or(quiet, &list, |n| &n.name, t) else {
                return Ok(());
            };
            for n in list {
                t.row(vec![n.name.clone(), format_labels(&n.labels)]);
            }
            print!("{}", t.render());
        }
        Action::Create { name, labels } => {
            let labels = parse_labels(&labels)?;
            c.create(conn.req(CreateNamespaceRequest {
                namespace: Some(Namespace { name, labels }),
            }))
            .await?;
        }
        Action::Rm { names } => {
            let mut failed = 0;
            for name in names {
                match c
                    .delete(conn.req(DeleteNamespaceRequest { name: name.clone() }))
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(st) => {
                        eprintln!(
                            "berthctl: unable to delete {name}: {} ({:?})",
                            st.message(),
                            st.code()
                        );
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} namespace(s) not removed");
            }
        }
        Action::Label { name, labels } => {
            if labels.is_empty() {
                let ns = c
                    .get(conn.req(GetNamespaceRequest { name }))
                    .await?
                    .into_inner()
                    .namespace
                    .unwrap_or_default();
                let mut pairs: Vec<_> = ns.labels.into_iter().collect();
                pairs.sort();
                for (k, v) in pairs {
                    println!("{k}={v}");
                }
                return Ok(());
            }
            let labels = parse_labels(&labels)?;
            let update_mask = labels_mask(&labels);
            c.update(conn.req(UpdateNamespaceRequest {
                namespace: Some(Namespace { name, labels }),
                update_mask,
            }))
            .await?;
        }
    }
    Ok(())
}

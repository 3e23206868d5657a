//! `berthctl content ls|get|ingest|rm|label`.

use std::io::{Read, Write};

use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{
    DeleteContentRequest, Info, InfoRequest, ListContentRequest, ReadContentRequest, UpdateRequest,
    WriteAction, WriteContentRequest,
};
use tokio_stream::StreamExt;

use super::ListArgs;
use super::{age, format_labels, human_size, labels_mask, parse_labels};
use crate::client::Conn;
use crate::table::{Table, quiet_or};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// List blobs in the namespace.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Write a blob to stdout.
    Get {
        /// The blob's digest (`sha256:...`).
        digest: String,
    },
    /// Store stdin as a blob under an ingest ref (resumes an interrupted ingest of that ref).
    Ingest {
        /// The ingest's ref: an interrupted ingest of the same ref resumes.
        r#ref: String,
        /// Expected size in bytes.
        #[arg(long)]
        expected_size: Option<i64>,
        /// Expected digest.
        #[arg(long)]
        expected_digest: Option<String>,
        /// Hold the blob with this lease (until it is labelled or referenced, GC may remove it).
        #[arg(long)]
        lease: Option<String>,
    },
    /// Remove blobs from the namespace.
    #[command(alias = "del", alias = "remove", alias = "delete")]
    Rm {
        /// The blobs' digests.
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Set (`key=value`) or remove (`key`) labels of a blob.
    Label {
        /// The blob's digest (`sha256:...`).
        digest: String,
        /// Labels: `key=value` sets one, `key` alone removes it.
        labels: Vec<String>,
    },
}

/// Writes blob `digest` to stdout.
pub(crate) async fn write_blob(conn: &Conn, digest: String) -> anyhow::Result<()> {
    let mut c = ContentClient::new(conn.channel.clone()).max_decoding_message_size(64 << 20);
    let (offset, size) = (0, 0);
    let read = ReadContentRequest {
        digest,
        offset,
        size,
    };
    let mut stream = c.read(conn.req(read)).await?.into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk?.data)?;
    }
    out.flush()?;
    Ok(())
}

pub(crate) async fn run(conn: &Conn, action: Action) -> anyhow::Result<()> {
    let mut c = ContentClient::new(conn.channel.clone()).max_decoding_message_size(64 << 20);
    match action {
        Action::Ls(ListArgs { quiet, filters }) => {
            let mut stream = c
                .list(conn.req(ListContentRequest { filters }))
                .await?
                .into_inner();
            let mut infos: Vec<Info> = Vec::new();
            while let Some(batch) = stream.next().await {
                infos.extend(batch?.info);
            }
            let t = Table::new(&["DIGEST", "SIZE", "AGE", "LABELS"], 1);
            let Some(mut t) = quiet_or(quiet, &infos, |i| &i.digest, t) else {
                return Ok(());
            };
            for i in infos {
                t.row(vec![
                    i.digest,
                    human_size(i.size),
                    age(i.created_at),
                    format_labels(&i.labels),
                ]);
            }
            print!("{}", t.render());
        }
        Action::Get { digest } => write_blob(conn, digest).await?,
        Action::Ingest {
            r#ref,
            expected_size,
            expected_digest,
            lease,
        } => {
            let handle = tokio::runtime::Handle::current();
            let conn = conn.clone();
            let (d, _) = tokio::task::spawn_blocking(move || {
                ingest_blocking(
                    &handle,
                    &conn,
                    &r#ref,
                    lease.as_deref(),
                    expected_size.unwrap_or(0),
                    &expected_digest.unwrap_or_default(),
                    &mut std::io::stdin().lock(),
                )
            })
            .await??;
            println!("{d}");
        }
        Action::Rm { digests } => {
            for d in digests {
                c.delete(conn.req(DeleteContentRequest { digest: d.clone() }))
                    .await?;
                println!("{d}");
            }
        }
        Action::Label { digest, labels } => {
            let labels = parse_labels(&labels)?;
            let update_mask = labels_mask(&labels);
            let info = c
                .update(conn.req(UpdateRequest {
                    info: Some(Info {
                        digest: digest.clone(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask,
                }))
                .await?
                .into_inner()
                .info
                .unwrap_or_default();
            let _ = c.info(conn.req(InfoRequest { digest })).await?;
            println!("{}", format_labels(&info.labels));
        }
    }
    Ok(())
}

/// Streams `input` into the content store under `ref` (with `lease`, if any), resuming from the
/// ingest's current offset; returns the committed digest and size. Blocking: call it from a
/// blocking thread; it drives the async client with `handle`. A blob the namespace already has
/// (`AlreadyExists`) counts as success.
pub(crate) fn ingest_blocking(
    handle: &tokio::runtime::Handle,
    conn: &Conn,
    r#ref: &str,
    lease: Option<&str>,
    total: i64,
    expected: &str,
    input: &mut dyn Read,
) -> anyhow::Result<(String, i64)> {
    let mut c = ContentClient::new(conn.channel.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(8);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let request = match lease {
        Some(l) => conn.req_lease(stream, l)?,
        None => conn.req(stream),
    };
    let send = |m: WriteContentRequest| {
        handle
            .block_on(tx.send(m))
            .map_err(|_| anyhow::anyhow!("write stream closed"))
    };
    send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: r#ref.to_string(),
        total,
        expected: expected.to_string(),
        ..Default::default()
    })?;
    let mut responses = match handle.block_on(c.write(request)) {
        Ok(r) => r.into_inner(),
        Err(st) if st.code() == tonic::Code::AlreadyExists => {
            return Ok((expected.to_string(), total));
        }
        Err(st) => return Err(st.into()),
    };
    let mut next = || handle.block_on(responses.next());
    let stat = match next() {
        Some(Ok(s)) => s,
        Some(Err(st)) if st.code() == tonic::Code::AlreadyExists => {
            return Ok((expected.to_string(), total));
        }
        Some(Err(st)) => return Err(st.into()),
        None => anyhow::bail!("write stream closed before STAT answered"),
    };
    // Resume: skip what the daemon already has.
    let mut offset = stat.offset;
    if offset > 0 {
        let skipped = std::io::copy(&mut input.take(offset as u64), &mut std::io::sink())?;
        if skipped != offset as u64 {
            anyhow::bail!(
                "input is shorter ({skipped} bytes) than the ingest already stored ({offset} bytes)"
            );
        }
    }
    let mut pending = 0usize;
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        send(WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: r#ref.to_string(),
            offset,
            data: buf,
            ..Default::default()
        })?;
        offset += filled as i64;
        pending += 1;
        // Keep a few writes in flight; read their answers as they come.
        while pending > 4 {
            match next() {
                Some(Ok(_)) => pending -= 1,
                Some(Err(st)) => return Err(st.into()),
                None => anyhow::bail!("write stream closed early"),
            }
        }
    }
    send(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: r#ref.to_string(),
        offset,
        total: if total > 0 { total } else { offset },
        expected: expected.to_string(),
        ..Default::default()
    })?;
    drop(tx);
    let mut digest = String::new();
    while let Some(r) = next() {
        match r {
            Ok(resp) if resp.action == WriteAction::Commit as i32 => digest = resp.digest,
            Ok(_) => {}
            Err(st) if st.code() == tonic::Code::AlreadyExists => {
                return Ok((expected.to_string(), offset));
            }
            Err(st) => return Err(st.into()),
        }
    }
    if digest.is_empty() {
        anyhow::bail!("commit was not acknowledged");
    }
    Ok((digest, offset))
}

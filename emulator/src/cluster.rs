//! Cluster mode: several primaries of a real `redis-server` cluster, each behind its own
//! enforcing proxy.
//!
//! Every node announces its proxy's address (`cluster-announce-ip` / `cluster-announce-port`)
//! and its real cluster-bus port (`cluster-announce-bus-port`), so `CLUSTER SLOTS`,
//! `CLUSTER SHARDS`, `CLUSTER NODES` and every `MOVED` / `ASK` redirection name the proxies:
//! a cluster client never learns a backend address and every connection it opens must
//! authenticate (and re-authenticate) with a token. The nodes meet over their real bus ports.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy::{free_port, start_redis_server_with, RedisServer};
use crate::Error;

/// Total hash slots of a Redis cluster.
const SLOTS: u32 = 16_384;

/// One started node: its process, its real address and its cluster-bus port.
pub(crate) struct Node {
    pub(crate) server: RedisServer,
    pub(crate) bus_port: u16,
}

/// Starts `proxy_ports.len()` cluster-enabled nodes, node `i` announcing `proxy_ports[i]`.
pub(crate) async fn start_nodes(
    bin: &Path,
    work_dir: &Path,
    proxy_ports: &[u16],
) -> Result<Vec<Node>, Error> {
    let mut nodes = Vec::with_capacity(proxy_ports.len());
    for (i, proxy_port) in proxy_ports.iter().enumerate() {
        let bus_port = free_port()?;
        let conf = work_dir.join(format!("cluster-node-{i}-{bus_port}.conf"));
        let dir = work_dir.display().to_string();
        let proxy_port = *proxy_port;
        let server = start_redis_server_with(bin, move |_port| {
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf.display().to_string(),
                "--dir",
                &dir,
                "--cluster-port",
                &bus_port.to_string(),
                "--cluster-announce-ip",
                "127.0.0.1",
                "--cluster-announce-port",
                &proxy_port.to_string(),
                "--cluster-announce-bus-port",
                &bus_port.to_string(),
                "--cluster-node-timeout",
                "5000",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
        })
        .await?;
        nodes.push(Node { server, bus_port });
    }
    form(&nodes).await?;
    Ok(nodes)
}

/// Splits the slots evenly, introduces the nodes and waits for `cluster_state:ok` everywhere.
async fn form(nodes: &[Node]) -> Result<(), Error> {
    let n = nodes.len() as u32;
    for (i, node) in nodes.iter().enumerate() {
        let i = i as u32;
        let first = SLOTS * i / n;
        let last = SLOTS * (i + 1) / n - 1;
        expect_ok(
            node.server.addr,
            &[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ],
        )
        .await?;
    }
    for node in &nodes[1..] {
        expect_ok(
            nodes[0].server.addr,
            &[
                "CLUSTER",
                "MEET",
                "127.0.0.1",
                &node.server.addr.port().to_string(),
                &node.bus_port.to_string(),
            ],
        )
        .await?;
    }
    let started = Instant::now();
    'wait: while started.elapsed() < Duration::from_secs(30) {
        for node in nodes {
            let info = command(node.server.addr, &["CLUSTER", "INFO"]).await?;
            let known = format!("cluster_known_nodes:{}", nodes.len());
            if !info.contains("cluster_state:ok") || !info.contains(&known) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'wait;
            }
        }
        return Ok(());
    }
    Err(Error::RedisServerStart(
        "the redis cluster did not reach cluster_state:ok within 30 s".into(),
    ))
}

async fn expect_ok(addr: SocketAddr, args: &[&str]) -> Result<(), Error> {
    let reply = command(addr, args).await?;
    if reply.starts_with("+OK") {
        Ok(())
    } else {
        Err(Error::RedisServerStart(format!(
            "{} answered {}",
            args.join(" "),
            reply.trim()
        )))
    }
}

/// Sends one command straight to a node and returns its whole reply as text.
async fn command(addr: SocketAddr, args: &[&str]) -> Result<String, Error> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(out.as_bytes()).await?;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .map_err(|_| Error::RedisServerStart(format!("{} timed out", args.join(" "))))??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if complete(&buf) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Whether `buf` holds one whole simple reply (status, error, integer or bulk string).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match buf.first() {
        Some(b'$') => {
            let len: i64 = std::str::from_utf8(&buf[1..end])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            len < 0 || buf.len() >= end + 2 + len as usize + 2
        }
        _ => true,
    }
}

//! Cluster mode: every node behind its own enforcing proxy, and only proxies announced.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeSet;

use common::start;
use redis_entraid_emulator::Emulator;

fn authed(emu: &Emulator, addr: std::net::SocketAddr) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    redis::cmd("AUTH")
        .arg(emu.default_oid())
        .arg(emu.redis_token())
        .query::<()>(&mut con)
        .unwrap();
    con
}

#[test]
fn cluster_topology_and_redirections_name_only_the_proxies() {
    let emu = start(Emulator::builder().cluster(3));
    let proxies: BTreeSet<u16> = emu.cluster_addrs().iter().map(|a| a.port()).collect();
    assert_eq!(proxies.len(), 3);
    assert!(emu
        .env()
        .iter()
        .any(|(k, v)| k == "REDIS_CLUSTER_ENDPOINTS" && v.split(',').count() == 3));

    // Unauthenticated connections are refused like any other proxy connection.
    let client = redis::Client::open(format!("redis://{}/", emu.cluster_addrs()[0])).unwrap();
    let mut anon = client.get_connection().unwrap();
    let err = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query::<redis::Value>(&mut anon);
    assert!(err.is_err());

    let mut con = authed(&emu, emu.cluster_addrs()[0]);
    let slots: Vec<(i64, i64, (String, i64))> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query::<Vec<redis::Value>>(&mut con)
        .unwrap()
        .into_iter()
        .map(|v| {
            let redis::Value::Array(items) = v else {
                panic!("{v:?}")
            };
            let start: i64 = redis::from_redis_value(items[0].clone()).unwrap();
            let end: i64 = redis::from_redis_value(items[1].clone()).unwrap();
            let redis::Value::Array(node) = items[2].clone() else {
                panic!()
            };
            let host: String = redis::from_redis_value(node[0].clone()).unwrap();
            let port: i64 = redis::from_redis_value(node[1].clone()).unwrap();
            (start, end, (host, port))
        })
        .collect();
    assert_eq!(slots.len(), 3);
    assert_eq!(slots.iter().map(|s| s.1 - s.0 + 1).sum::<i64>(), 16_384);
    let announced: BTreeSet<u16> = slots.iter().map(|s| s.2 .1 as u16).collect();
    assert_eq!(announced, proxies);
    assert!(slots.iter().all(|s| s.2 .0 == "127.0.0.1"));

    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con).unwrap();
    for port in &proxies {
        assert!(nodes.contains(&format!("127.0.0.1:{port}@")), "{nodes}");
    }
    let shards: redis::Value = redis::cmd("CLUSTER").arg("SHARDS").query(&mut con).unwrap();
    for port in &proxies {
        assert!(
            format!("{shards:?}").contains(&format!("int({port})")),
            "{shards:?}"
        );
    }

    // A key owned by another node answers MOVED with that node's proxy.
    let mut moved = 0;
    for i in 0..50 {
        match redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(1)
            .query::<()>(&mut con)
        {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.code(), Some("MOVED"), "{e}");
                let target = e.redirect_node().unwrap().0.to_owned();
                let port: u16 = target.rsplit(':').next().unwrap().parse().unwrap();
                assert!(proxies.contains(&port), "{target}");
                moved += 1;
            }
        }
    }
    assert!(moved > 0);
}

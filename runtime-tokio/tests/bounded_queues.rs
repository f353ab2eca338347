//! Bounded queues on tokio: a slow RESP2 pub/sub reader against a real Redis (the emulator)

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::TokenSource as Flow;
use redis_entraid_emulator::Emulator;
use redis_entraid_tokio::http::HttpClient;
use redis_entraid_tokio::redis_async::{EntraClient, Resp2Subscriber};
use redis_entraid_tokio::{Identity, Provider, Startup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_resp2_reader_loses_the_oldest_messages_and_they_are_counted() {
    let emu = Emulator::builder().start().await.unwrap();
    let env: BTreeMap<String, String> = emu.env().into_iter().collect();
    let client = HttpClient::builder()
        .ignore_ssl_cert_file()
        .add_root_certificates_pem(emu.ca_cert_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let provider = Provider::builder()
        .startup(Startup::Wait(Duration::from_secs(10)))
        .build_with_fetcher(Identity::with_client(
            Flow::DefaultChain(DefaultChain::from_env(&env)),
            client,
        ))
        .await
        .unwrap();
    let url = format!("redis://{}", emu.redis_addr().unwrap());
    let mut sub = Resp2Subscriber::connect_with_capacity(
        redis::Client::open(url.as_str()).unwrap(),
        provider.clone(),
        8,
    )
    .await
    .unwrap();
    sub.subscribe("slow").await.unwrap();
    let mut publisher =
        EntraClient::new(redis::Client::open(url.as_str()).unwrap(), provider.clone())
            .get_multiplexed_connection()
            .await
            .unwrap();
    for n in 0..100u32 {
        let receivers: i64 = publisher.publish("slow", n).await.unwrap();
        assert_eq!(receivers, 1);
    }
    // Let every message reach the subscriber's queue before reading any.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = Vec::new();
    while let Ok(Some(msg)) =
        tokio::time::timeout(Duration::from_millis(300), sub.next_message()).await
    {
        got.push(msg.get_payload::<u32>().unwrap());
    }
    // The newest 8 survive, in order; the 92 oldest were dropped and counted.
    assert_eq!(got, (92..100).collect::<Vec<u32>>());
    assert_eq!(sub.dropped_messages(), 92);
}

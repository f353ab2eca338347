//! The AMR-like proxy enforces Entra ID authentication and token expiry.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{claims, now_f64, with_lifetime, Raw};
use redis_entraid_emulator::{Alg, ClientCertificate, Emulator, TokenSpec};

const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

fn redis_conn(emu: &Emulator) -> redis::Connection {
    let addr = emu.redis_addr().unwrap();
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    client.get_connection().unwrap()
}

#[test]
fn raw_client_is_closed_right_after_token_expiry() {
    let emu = with_lifetime(2);
    let mut con = redis_conn(&emu);
    let token = emu.redis_token();
    let exp = claims(&token)["exp"].as_f64().unwrap();
    redis::cmd("AUTH")
        .arg(emu.default_oid())
        .arg(&token)
        .query::<()>(&mut con)
        .unwrap();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    // Blocks until the proxy closes the connection.
    let r: redis::RedisResult<Option<(String, String)>> =
        redis::cmd("BLPOP").arg("never").arg(0).query(&mut con);
    let closed_at = now_f64();
    assert!(r.is_err(), "connection must be closed, got {r:?}");
    let delta = closed_at - exp;
    eprintln!("closed {delta:.3} s after expiry");
    assert!(
        (-0.01..1.0).contains(&delta),
        "closed {delta:.3} s after exp"
    );
    assert_eq!(emu.counters().redis_closed_for_expiry, 1);
    assert_eq!(emu.counters().redis_auth_ok, 1);
}

#[test]
fn raw_client_that_reauths_in_time_is_never_closed() {
    let emu = with_lifetime(3);
    let mut con = redis_conn(&emu);
    let oid = emu.default_oid().to_string();
    let started = Instant::now();
    let first = emu.redis_token();
    let first_exp = claims(&first)["exp"].as_f64().unwrap();
    redis::cmd("AUTH")
        .arg(&oid)
        .arg(&first)
        .query::<()>(&mut con)
        .unwrap();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(4500) {
        std::thread::sleep(Duration::from_millis(500));
        let fresh = emu.redis_token();
        redis::cmd("AUTH")
            .arg(&oid)
            .arg(&fresh)
            .query::<()>(&mut con)
            .unwrap();
        let v: i64 = redis::cmd("INCR").arg("reauth").query(&mut con).unwrap();
        n += 1;
        assert_eq!(v, n);
    }
    assert!(
        now_f64() > first_exp + 1.5,
        "outlived the first token by over 1.5 s"
    );
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(emu.counters().redis_closed_for_expiry, 0);
    eprintln!(
        "re-authenticated {n} times over {:.1} s, never closed",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn commands_before_auth_get_noauth() {
    let emu = with_lifetime(60);
    let mut raw = Raw::connect(emu.redis_addr().unwrap());
    assert_eq!(raw.call(&["PING"]), "-NOAUTH Authentication required.\r\n");
    assert_eq!(
        raw.call(&["GET", "k"]),
        "-NOAUTH Authentication required.\r\n"
    );
    assert!(raw
        .call(&["HELLO", "3"])
        .starts_with("-NOAUTH HELLO must be called"));
    let before = emu.counters();
    assert_eq!(before.redis_commands_rejected, 3);
    assert_eq!(before.redis_commands_forwarded, 0);
    let token = emu.redis_token();
    assert_eq!(raw.call(&["AUTH", emu.default_oid(), &token]), "+OK\r\n");
    assert_eq!(raw.call(&["PING"]), "+PONG\r\n");
    assert_eq!(emu.counters().redis_commands_forwarded, 1);
}

#[test]
fn bad_tokens_get_wrongpass() {
    let emu = with_lifetime(60);
    let oid = emu.default_oid().to_string();
    let good = emu.redis_token();
    let forger = ClientCertificate::generate("forger").unwrap();
    let forged = forger.assertion_with_claims(Alg::Rs256, claims(&good));
    let mut tampered = good.clone();
    tampered.truncate(tampered.len() - 4);
    tampered.push_str("AAAA");
    let cases: Vec<(&str, String, String)> = vec![
        ("signature by another key", oid.clone(), forged),
        ("tampered signature", oid.clone(), tampered),
        (
            "username is not the oid",
            "someone-else".into(),
            good.clone(),
        ),
        (
            "expired token",
            oid.clone(),
            emu.mint_token(&TokenSpec::for_oid(&oid).expired()),
        ),
        (
            "wrong audience",
            oid.clone(),
            emu.mint_token(&TokenSpec::for_oid(&oid).audience("https://storage.azure.com")),
        ),
        (
            "no oid",
            oid.clone(),
            emu.mint_token(&TokenSpec::for_oid(&oid).without_oid()),
        ),
        ("not a JWT", oid.clone(), "not-a-jwt".into()),
    ];
    let mut raw = Raw::connect(emu.redis_addr().unwrap());
    for (what, user, token) in &cases {
        assert_eq!(raw.call(&["AUTH", user, token]), WRONGPASS, "{what}");
        assert_eq!(
            raw.call(&["HELLO", "3", "AUTH", user, token]),
            WRONGPASS,
            "HELLO with {what}"
        );
    }
    assert_eq!(
        raw.call(&["AUTH", &good]),
        WRONGPASS,
        "AUTH without user name"
    );
    let other = common::start(Emulator::builder().without_redis().fresh_signing_key());
    let foreign = other.mint_token(&TokenSpec::for_oid(&oid));
    assert_eq!(
        raw.call(&["AUTH", &oid, &foreign]),
        WRONGPASS,
        "another emulator's key"
    );
    assert_eq!(
        raw.call(&["GET", "k"]),
        "-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(emu.counters().redis_auth_failed, 2 * cases.len() as u64 + 2);
    assert_eq!(raw.call(&["AUTH", &oid, &good]), "+OK\r\n");
}

#[test]
fn hello_with_auth_authenticates_and_selects_the_protocol() {
    let emu = with_lifetime(60);
    let oid = emu.default_oid().to_string();
    let token = emu.redis_token();

    let mut r3 = Raw::connect(emu.redis_addr().unwrap());
    r3.resp3 = true;
    let hello = r3.call(&["HELLO", "3", "AUTH", &oid, &token, "SETNAME", "e2e"]);
    assert!(hello.starts_with('%'), "RESP3 map reply, got {hello:?}");
    assert!(hello.contains("proto\r\n:3\r\n"));
    assert_eq!(r3.call(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(r3.call(&["GET", "missing"]), "_\r\n", "RESP3 null");
    assert_eq!(r3.call(&["CLIENT", "GETNAME"]), "$3\r\ne2e\r\n");

    let mut r2 = Raw::connect(emu.redis_addr().unwrap());
    let hello = r2.call(&["HELLO", "2", "AUTH", &oid, &token]);
    assert!(hello.starts_with('*'), "RESP2 array reply, got {hello:?}");
    assert_eq!(r2.call(&["GET", "missing"]), "$-1\r\n", "RESP2 null");

    // The redis crate's own RESP3 handshake goes through too.
    let addr = emu.redis_addr().unwrap();
    let client =
        redis::Client::open(format!("redis://{oid}:{token}@{addr}/?protocol=resp3")).unwrap();
    let mut con = client.get_connection().unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
    assert_eq!(emu.counters().redis_auth_ok, 3);
}

#[test]
fn resp3_subscriber_can_reauth_while_subscribed() {
    let emu = with_lifetime(2);
    let oid = emu.default_oid().to_string();
    let first = emu.redis_token();
    let first_exp = claims(&first)["exp"].as_f64().unwrap();
    let mut sub = Raw::connect(emu.redis_addr().unwrap());
    sub.resp3 = true;
    assert!(sub
        .call(&["HELLO", "3", "AUTH", &oid, &first])
        .starts_with('%'));
    assert_eq!(
        sub.call(&["SUBSCRIBE", "news"]),
        ">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    let longer = emu.mint_token(&TokenSpec::for_oid(&oid).lifetime(Duration::from_secs(6)));
    assert_eq!(sub.call(&["AUTH", &oid, &longer]), "+OK\r\n");
    while now_f64() < first_exp + 0.5 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut publisher = Raw::connect(emu.redis_addr().unwrap());
    assert_eq!(publisher.call(&["AUTH", &oid, &longer]), "+OK\r\n");
    assert_eq!(publisher.call(&["PUBLISH", "news", "hello"]), ":1\r\n");
    assert_eq!(
        sub.read_text(),
        ">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    assert_eq!(sub.call(&["PING"]), "+PONG\r\n");
    assert_eq!(emu.counters().redis_closed_for_expiry, 0);
}

#[test]
fn resp2_subscriber_auth_is_refused_as_redis_refuses_it_and_closed_at_expiry() {
    let emu = with_lifetime(2);
    let oid = emu.default_oid().to_string();
    let token = emu.redis_token();
    let exp = claims(&token)["exp"].as_f64().unwrap();
    let mut sub = Raw::connect(emu.redis_addr().unwrap());
    assert_eq!(sub.call(&["AUTH", &oid, &token]), "+OK\r\n");
    assert_eq!(
        sub.call(&["SUBSCRIBE", "a", "b"]),
        "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
    );
    assert_eq!(
        sub.read_text(),
        "*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
    );
    let fresh = emu.redis_token();
    assert_eq!(
        sub.call(&["AUTH", &oid, &fresh]),
        "-ERR Can't execute 'auth': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    assert_eq!(sub.call(&["PING"]), "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert!(sub.wait_closed(Duration::from_secs(4)));
    let delta = now_f64() - exp;
    eprintln!("RESP2 subscriber closed {delta:.3} s after expiry");
    assert!((-0.01..1.0).contains(&delta));

    // Once unsubscribed from everything, AUTH is accepted again.
    let mut c = Raw::connect(emu.redis_addr().unwrap());
    let token = emu.mint_token(&TokenSpec::for_oid(&oid).lifetime(Duration::from_secs(30)));
    assert_eq!(c.call(&["AUTH", &oid, &token]), "+OK\r\n");
    assert_eq!(
        c.call(&["SUBSCRIBE", "a"]),
        "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
    );
    assert_eq!(
        c.call(&["UNSUBSCRIBE"]),
        "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
    );
    assert_eq!(c.call(&["AUTH", &oid, &token]), "+OK\r\n");
}

#[test]
fn pipelined_commands_keep_their_order() {
    let emu = with_lifetime(60);
    let oid = emu.default_oid().to_string();
    let token = emu.redis_token();
    let mut raw = Raw::connect(emu.redis_addr().unwrap());
    let mut batch = Vec::new();
    for args in [
        vec!["GET", "x"],
        vec!["AUTH", oid.as_str(), token.as_str()],
        vec!["SET", "x", "1"],
        vec!["INCR", "x"],
        vec!["AUTH", oid.as_str(), token.as_str()],
        vec!["INCR", "x"],
        vec!["AUTH", oid.as_str(), "bad"],
        vec!["GET", "x"],
        vec!["HELLO", "3"],
        vec!["GET", "nothing"],
        vec!["HELLO", "2"],
        vec!["GET", "nothing"],
        vec!["PING"],
    ] {
        batch.extend(Raw::encode(&args));
    }
    raw.send_raw(&batch);
    let mut replies = Vec::new();
    for i in 0..13 {
        raw.resp3 = (8..=9).contains(&i);
        replies.push(raw.read_text());
    }
    assert_eq!(replies[0], "-NOAUTH Authentication required.\r\n");
    assert_eq!(replies[1], "+OK\r\n");
    assert_eq!(replies[2], "+OK\r\n");
    assert_eq!(replies[3], ":2\r\n");
    assert_eq!(replies[4], "+OK\r\n");
    assert_eq!(replies[5], ":3\r\n");
    assert_eq!(replies[6], WRONGPASS);
    assert_eq!(replies[7], "$1\r\n3\r\n");
    assert!(replies[8].starts_with('%'));
    assert_eq!(replies[9], "_\r\n");
    assert!(replies[10].starts_with('*'));
    assert_eq!(replies[11], "$-1\r\n");
    assert_eq!(replies[12], "+PONG\r\n");

    // The redis crate's pipeline API, 1000 commands at once.
    let mut con = redis_conn(&emu);
    redis::cmd("AUTH")
        .arg(&oid)
        .arg(&token)
        .query::<()>(&mut con)
        .unwrap();
    let mut p = redis::pipe();
    for i in 0..1000 {
        p.cmd("RPUSH").arg("list").arg(i);
    }
    let lens: Vec<i64> = p.query(&mut con).unwrap();
    assert_eq!(lens, (1..=1000).collect::<Vec<i64>>());
}

#[test]
fn five_hundred_concurrent_connections_work() {
    let emu = with_lifetime(60);
    let oid = emu.default_oid().to_string();
    let token = emu.redis_token();
    let addr = emu.redis_addr().unwrap();
    let started = Instant::now();
    let mut conns: Vec<Raw> = (0..500).map(|_| Raw::connect(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let mut batch = Raw::encode(&["AUTH", &oid, &token]);
        batch.extend(Raw::encode(&["SET", &format!("key:{i}"), &i.to_string()]));
        c.send_raw(&batch);
    }
    for c in conns.iter_mut() {
        assert_eq!(c.read_text(), "+OK\r\n");
        assert_eq!(c.read_text(), "+OK\r\n");
    }
    std::thread::scope(|s| {
        for (t, chunk) in conns.chunks_mut(50).enumerate() {
            s.spawn(move || {
                for (j, c) in chunk.iter_mut().enumerate() {
                    let i = t * 50 + j;
                    assert_eq!(
                        c.call(&["GET", &format!("key:{i}")]),
                        format!("${}\r\n{i}\r\n", i.to_string().len())
                    );
                    assert_eq!(c.call(&["INCR", "shared"]).chars().next(), Some(':'));
                }
            });
        }
    });
    let mut check = Raw::connect(addr);
    assert_eq!(check.call(&["AUTH", &oid, &token]), "+OK\r\n");
    assert_eq!(check.call(&["GET", "shared"]), "$3\r\n500\r\n");
    let c = emu.counters();
    assert_eq!(c.redis_connections_accepted, 501);
    assert_eq!(c.redis_auth_ok, 501);
    eprintln!(
        "500 concurrent connections served in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn malformed_resp_closes_only_that_connection() {
    let emu = with_lifetime(60);
    let oid = emu.default_oid().to_string();
    let token = emu.redis_token();
    let addr = emu.redis_addr().unwrap();
    let mut good = Raw::connect(addr);
    assert_eq!(good.call(&["AUTH", &oid, &token]), "+OK\r\n");
    let bad_inputs: [&[u8]; 5] = [
        b"*1\r\n$99999999999\r\n",
        b"*1\r\n*1\r\n*1\r\n*1\r\n",
        b"*99999999999999999999999999\r\n",
        b"INLINE PING\r\n",
        b"*1\r\n$4\r\nPINGXX\r\n",
    ];
    for input in bad_inputs {
        let mut bad = Raw::connect(addr);
        assert_eq!(bad.call(&["AUTH", &oid, &token]), "+OK\r\n");
        bad.send_raw(input);
        let reply = bad.read_text();
        assert!(
            reply.starts_with("-ERR Protocol error"),
            "{input:?} -> {reply:?}"
        );
        assert!(
            bad.wait_closed(Duration::from_secs(2)),
            "{input:?} closes the connection"
        );
    }
    // A deep nesting bomb is refused without reaching the decoder.
    // The proxy may refuse and close before all 800 KB are written, so a broken pipe or a reset
    // is an acceptable end of the write and of the read; what must not happen is a reply other
    // than the protocol error, or harm to other connections.
    let mut bomb = Raw::connect(addr);
    let _ = std::io::Write::write_all(&mut bomb.stream, &b"*1\r\n".repeat(200_000));
    let mut first = [0u8; 64];
    if let Ok(n @ 1..) = std::io::Read::read(&mut bomb.stream, &mut first) {
        let reply = String::from_utf8_lossy(&first[..n]);
        assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");
    }
    assert_eq!(good.call(&["PING"]), "+PONG\r\n");
}

#[test]
fn missing_redis_server_gives_a_clear_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(
            Emulator::builder()
                .redis_server_path("/nonexistent/redis-server")
                .start(),
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("apt-get install redis-server"), "{text}");
}

#[test]
fn tls_proxy_authenticates_like_the_plain_one() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    let emu = with_lifetime(60);
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::pem::PemObject as _;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(emu.ca_cert_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = std::net::TcpStream::connect(emu.redis_tls_addr().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(&Raw::encode(&[
        "AUTH",
        emu.default_oid(),
        &emu.redis_token(),
    ]))
    .unwrap();
    tls.write_all(&Raw::encode(&["PING"])).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 12 {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"+OK\r\n+PONG\r\n");
}

#[test]
fn refused_auths_get_wrongpass_then_valid_tokens_work_again() {
    let emu = with_lifetime(60);
    let oid = emu.default_oid().to_string();
    let token = emu.redis_token();
    let mut raw = Raw::connect(emu.redis_addr().unwrap());
    emu.refuse_next_auths(2);
    assert_eq!(raw.call(&["AUTH", &oid, &token]), WRONGPASS);
    assert_eq!(emu.auths_to_refuse(), 1);
    assert!(raw
        .call(&["HELLO", "3", "AUTH", &oid, &token])
        .starts_with("-WRONGPASS"));
    assert_eq!(emu.auths_to_refuse(), 0);
    assert_eq!(raw.call(&["AUTH", &oid, &token]), "+OK\r\n");
    assert_eq!(raw.call(&["PING"]), "+PONG\r\n");
    let counters = emu.counters();
    assert_eq!((counters.redis_auth_failed, counters.redis_auth_ok), (2, 1));
}

//! Cost of one machine step and of a full token lifecycle
#![allow(missing_docs)]
// A benchmark measures real time; the sans-IO rule binds the library, not its benches.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]
//!
//! Run: `cargo bench -p redis-entraid-core --features testing --bench machine`

use std::hint::black_box;
use std::time::{Duration, Instant, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use redis_entraid_core::config::Config;
use redis_entraid_core::event::{Action, RequestId};
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::testing::{sequence, unsigned_token, Harness, Reply, WALL_START};
use redis_entraid_core::token::TokenResponse;

fn drain(machine: &mut TokenManager) -> usize {
    let mut n = 0;
    while !matches!(machine.poll_action(), Action::Wait { .. }) {
        n += 1;
    }
    n
}

fn token() -> TokenResponse {
    // A realistically sized Entra token payload (~1.2 KB JWT).
    let claims = format!(
        r#"{{"aud":"https://redis.azure.com","iss":"https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/","iat":{iat},"nbf":{iat},"exp":{exp},"aio":"{aio}","appid":"0f0c1d7e-1c1e-4d3e-9a7e-3b2f6d5c4a1b","appidacr":"2","idp":"https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/","oid":"6e1f8b2c-3d4a-4b5c-9d8e-7f6a5b4c3d2e","rh":"0.AAAA","sub":"6e1f8b2c-3d4a-4b5c-9d8e-7f6a5b4c3d2e","tid":"72f988bf-86f1-41af-91ab-2d7cd011db47","uti":"abcdefghijklmnop","ver":"1.0","xms_mirid":"/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app-identity"}}"#,
        iat = WALL_START,
        exp = WALL_START + 3600,
        aio = "E2RgYJg".repeat(20),
    );
    TokenResponse::new(unsigned_token(&claims)).with_expires_in(3600)
}

fn bench_step(c: &mut Criterion) {
    let wall = UNIX_EPOCH + Duration::from_secs(WALL_START);
    let mut group = c.benchmark_group("machine step");
    group.bench_function("handle_response(token) + drain", |b| {
        b.iter_batched(
            || {
                let now = Instant::now();
                let mut machine = TokenManager::new(Config::default(), now);
                drain(&mut machine);
                (machine, token(), now)
            },
            |(mut machine, token, now)| {
                machine.handle_response(
                    RequestId(1),
                    Ok(token),
                    wall,
                    now + Duration::from_millis(30),
                );
                black_box(drain(&mut machine));
                machine
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("handle_timeout(refresh due) + drain", |b| {
        b.iter_batched(
            || {
                let now = Instant::now();
                let mut machine = TokenManager::new(Config::default(), now);
                drain(&mut machine);
                machine.handle_response(RequestId(1), Ok(token()), wall, now);
                drain(&mut machine);
                let due = machine.poll_timeout().expect("a refresh is planned");
                (machine, due)
            },
            |(mut machine, due)| {
                machine.handle_timeout(due);
                black_box(drain(&mut machine));
                machine
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("jwt::decode_claims alone (1.2 KB token)", |b| {
        let token = token();
        b.iter(|| {
            black_box(redis_entraid_core::jwt::decode_claims(black_box(
                token.access_token.expose_secret(),
            )))
        })
    });
    group.bench_function("spurious handle_timeout + drain", |b| {
        let now = Instant::now();
        let mut machine = TokenManager::new(Config::default(), now);
        drain(&mut machine);
        machine.handle_response(RequestId(1), Ok(token()), wall, now);
        drain(&mut machine);
        let t = now + Duration::from_secs(1);
        b.iter(|| {
            machine.handle_timeout(black_box(t));
            black_box(drain(&mut machine))
        })
    });
    group.finish();
}

fn bench_lifecycle(c: &mut Criterion) {
    c.bench_function("24 h of 1 h tokens, every second fetch answered 503", |b| {
        b.iter(|| {
            let mut n = 0usize;
            let mut h = Harness::new(Instant::now(), Config::default(), move |_| {
                n += 1;
                if n.is_multiple_of(2) {
                    Reply::fail(
                        redis_entraid_core::error::ResponseError::new("busy", true)
                            .with_status(503),
                    )
                } else {
                    Reply::token(3600)
                }
            });
            h.run_for(Duration::from_secs(24 * 3600));
            black_box(h.reauths.len())
        })
    });
    c.bench_function(
        "token lifecycle: fetch, push, refresh (one rotation)",
        |b| {
            b.iter(|| {
                let mut h = Harness::new(
                    Instant::now(),
                    Config::default(),
                    sequence(vec![Reply::token(3600)]),
                );
                h.run_for(Duration::from_secs(2600));
                black_box(h.reauths.len())
            })
        },
    );
}

criterion_group!(benches, bench_step, bench_lifecycle);
criterion_main!(benches);

//! `redis-entraid-emulator`: runs the emulator and prints the environment a client needs.

use std::time::Duration;

use redis_entraid_emulator::Emulator;

const USAGE: &str =
    "usage: redis-entraid-emulator [--token-lifetime SECS] [--http-port N] [--https-port N]
                              [--redis-port N] [--redis-tls-port N] [--tenant-id ID] [--no-redis]
                              [--work-dir DIR]

Prints `export NAME=value` lines for the client, then serves until interrupted.
Control API (on the http port): GET /_emulator/counters, GET|POST|DELETE /_emulator/faults,
POST /_emulator/token, GET /_emulator/signing-key.";

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run() {
        eprintln!("redis-entraid-emulator: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut b = Emulator::builder();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        b = match arg.as_str() {
            "--token-lifetime" => b.token_lifetime(Duration::from_secs(value()?.parse()?)),
            "--http-port" => b.http_port(value()?.parse()?),
            "--https-port" => b.https_port(value()?.parse()?),
            "--redis-port" => b.redis_port(value()?.parse()?),
            "--redis-tls-port" => b.redis_tls_port(value()?.parse()?),
            "--tenant-id" => b.tenant_id(value()?),
            "--work-dir" => b.work_dir(value()?),
            "--no-redis" => b.without_redis(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let emu = b.start().await?;
        for (k, v) in emu.env() {
            println!("export {k}='{v}'");
        }
        println!("# control API: {}/_emulator/counters", emu.http_base());
        tokio::signal::ctrl_c().await?;
        eprintln!("counters: {:?}", emu.counters());
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

//! [`Resp2Subscriber`]: RESP2 pub/sub that stays authenticated by swapping connections

use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use redis::{ErrorKind, RedisError, RedisResult};
use redis_entraid_core::event::Generation;
use redis_entraid_core::token::Credentials;
use tokio::sync::{broadcast, mpsc};

/// How many messages a [`Resp2Subscriber`] queues for a slow reader before it drops the oldest
pub const RESP2_DEFAULT_CAPACITY: usize = 4096;

use crate::provider::{Provider, WeakProvider};

/// A RESP2 pub/sub subscriber that stays authenticated by swapping connections
///
/// A RESP2 connection in subscribed mode accepts no `AUTH`, so it cannot be re-authenticated
/// in place. For every new credential generation (well before the old token expires, on the
/// provider's schedule) this subscriber:
/// 1. opens a new connection with the new credentials and subscribes it to every channel and
///    pattern (waiting for each confirmation);
/// 2. meanwhile keeps forwarding messages from the old connection;
/// 3. unsubscribes the old connection, forwards every message that reached it before the
///    unsubscribe was confirmed, and closes it.
///
/// **Guarantee**: every message Redis delivers to this subscriber's channels while either
/// connection is subscribed is forwarded; none published during a swap is lost. Messages
/// published while both connections are subscribed (the overlap between steps 1 and 3) are
/// delivered **twice**, once per connection; nothing is deduplicated (Redis messages carry no
/// id). Ordering holds per connection, not across the swap. If a swap fails (no new
/// connection), the subscriber keeps the old one and retries every second until the old token
/// expires, publishing nothing lost while the old connection lives.
///
/// **Slow consumers**: messages wait in a queue of [`RESP2_DEFAULT_CAPACITY`] messages (or the
/// capacity given to [`connect_with_capacity`](Self::connect_with_capacity)). When the
/// application reads more slowly than Redis publishes and the queue is full, the **oldest**
/// queued message is dropped and counted in [`dropped_messages`](Self::dropped_messages) (and
/// logged), so memory stays bounded and the newest messages get through. Pushing back on the
/// connection instead is not possible: redis-rs reads a subscribed connection eagerly into a
/// queue of its own, and Redis would then disconnect the client at its
/// `client-output-buffer-limit pubsub`, losing messages anyway. The guarantee above holds for
/// every message not counted as dropped.
///
/// ```no_run
/// # use redis_entraid_tokio::{Provider, redis_async::Resp2Subscriber};
/// # async fn demo(provider: Provider) -> redis::RedisResult<()> {
/// let client = redis::Client::open("redis://my-cache.example:10000")?;
/// let mut subscriber = Resp2Subscriber::connect(client, provider).await?;
/// subscriber.subscribe("news").await?;
/// while let Some(msg) = subscriber.next_message().await {
///     let payload: String = msg.get_payload()?;
///     println!("{payload}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Resp2Subscriber {
    messages: broadcast::Receiver<redis::Msg>,
    dropped: u64,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
    swaps: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

enum Control {
    Subscribe(String, bool, tokio::sync::oneshot::Sender<RedisResult<()>>),
    Unsubscribe(String, bool, tokio::sync::oneshot::Sender<RedisResult<()>>),
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl Drop for Resp2Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open_pubsub(
    client: &redis::Client,
    credentials: &Credentials,
) -> RedisResult<redis::aio::PubSub> {
    redis_entraid_redis_async::client_with_credentials(client, credentials)?
        .get_async_pubsub()
        .await
}

struct Subscriptions {
    channels: BTreeSet<String>,
    patterns: BTreeSet<String>,
}

impl Subscriptions {
    async fn apply(&self, sink: &mut redis::aio::PubSubSink) -> RedisResult<()> {
        for c in &self.channels {
            sink.subscribe(c).await?;
        }
        for p in &self.patterns {
            sink.psubscribe(p).await?;
        }
        Ok(())
    }
}

impl Resp2Subscriber {
    /// Connects with the provider's latest credentials (waiting up to 30 s for the first)
    ///
    /// # Errors
    /// `AuthenticationFailed` when the provider has no credentials; the connection error
    /// otherwise.
    pub async fn connect(client: redis::Client, provider: Provider) -> RedisResult<Self> {
        Self::connect_with_capacity(client, provider, RESP2_DEFAULT_CAPACITY).await
    }

    /// As [`connect`](Self::connect), queueing up to `capacity` messages (at least 1) for a
    /// slow reader before the oldest are dropped
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_with_capacity(
        client: redis::Client,
        provider: Provider,
        capacity: usize,
    ) -> RedisResult<Self> {
        let mut creds = provider.subscribe();
        let Some((generation, credentials)) = creds.wait_changed(Duration::from_secs(30)).await
        else {
            return Err(RedisError::from((
                ErrorKind::AuthenticationFailed,
                "the redis-entraid provider has no credentials",
            )));
        };
        let pubsub = open_pubsub(&client, &credentials).await?;
        // A broadcast channel with one receiver is a ring buffer: the sender never waits and a
        // full queue overwrites its oldest message, which the receiver learns as `Lagged(n)`.
        let (messages_tx, messages) = broadcast::channel(capacity.max(1));
        // Control calls take `&mut self` and wait for their answer: one at a time.
        let (control, control_rx) = mpsc::channel(1);
        let swaps = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(run_subscriber(
            client,
            provider.downgrade(),
            creds,
            generation,
            pubsub,
            messages_tx,
            control_rx,
            std::sync::Arc::clone(&swaps),
        ));
        Ok(Self {
            messages,
            dropped: 0,
            control,
            task,
            swaps,
        })
    }

    async fn control(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<RedisResult<()>>) -> Control,
    ) -> RedisResult<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let closed = || RedisError::from((ErrorKind::Io, "the subscriber task has ended"));
        self.control.send(make(tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Subscribes to `channel` (kept across connection swaps)
    ///
    /// # Errors
    /// The server's answer, or `Io` when the subscriber task has ended.
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        self.control(|tx| Control::Subscribe(channel.to_owned(), false, tx))
            .await
    }

    /// Subscribes to `pattern` (kept across connection swaps)
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn psubscribe(&mut self, pattern: &str) -> RedisResult<()> {
        self.control(|tx| Control::Subscribe(pattern.to_owned(), true, tx))
            .await
    }

    /// Unsubscribes from `channel`
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        self.control(|tx| Control::Unsubscribe(channel.to_owned(), false, tx))
            .await
    }

    /// Unsubscribes from `pattern`
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn punsubscribe(&mut self, pattern: &str) -> RedisResult<()> {
        self.control(|tx| Control::Unsubscribe(pattern.to_owned(), true, tx))
            .await
    }

    /// The next message; `None` once the subscriber has ended (provider stopped, or the
    /// connection lost and not replaceable)
    pub async fn next_message(&mut self) -> Option<redis::Msg> {
        loop {
            match self.messages.recv().await {
                Ok(msg) => return Some(msg),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.dropped += n;
                    tracing::warn!(
                        dropped = n,
                        "RESP2 subscriber queue full: the oldest messages were dropped"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Messages dropped so far because the queue was full (the oldest go first); counted
    /// when [`next_message`](Self::next_message) reaches the gap
    pub fn dropped_messages(&self) -> u64 {
        self.dropped
    }

    /// How many times the subscriber swapped to a freshly authenticated connection
    pub fn swaps(&self) -> u64 {
        self.swaps.load(std::sync::atomic::Ordering::Relaxed)
    }
}

type MsgStream = Pin<Box<dyn Stream<Item = redis::Msg> + Send>>;

#[allow(clippy::too_many_arguments)]
async fn run_subscriber(
    client: redis::Client,
    provider: WeakProvider,
    mut creds: crate::provider::Subscription,
    mut generation: Generation,
    pubsub: redis::aio::PubSub,
    out: broadcast::Sender<redis::Msg>,
    mut control: mpsc::Receiver<Control>,
    swaps: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut subs = Subscriptions {
        channels: BTreeSet::new(),
        patterns: BTreeSet::new(),
    };
    let (mut sink, stream) = pubsub.split();
    let mut stream: MsgStream = Box::pin(stream);
    let mut pending: Option<(Generation, Credentials)> = None;
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => { if out.send(msg).is_err() { return; } }
                None => {
                    // The connection closed: reconnect at once with the latest credentials.
                    tracing::warn!("RESP2 subscriber connection closed; reconnecting");
                    match provider.state.borrow().latest().cloned() {
                        Some(latest) => pending = Some(latest),
                        None => return,
                    }
                    stream = Box::pin(futures_util::stream::pending());
                }
            },
            cmd = control.recv() => {
                let Some(cmd) = cmd else { return };
                match cmd {
                    Control::Subscribe(name, pattern, reply) => {
                        let r = if pattern { sink.psubscribe(&name).await } else { sink.subscribe(&name).await };
                        if r.is_ok() {
                            if pattern { subs.patterns.insert(name); } else { subs.channels.insert(name); }
                        }
                        let _ = reply.send(r);
                    }
                    Control::Unsubscribe(name, pattern, reply) => {
                        let r = if pattern { sink.punsubscribe(&name).await } else { sink.unsubscribe(&name).await };
                        if pattern { subs.patterns.remove(&name); } else { subs.channels.remove(&name); }
                        let _ = reply.send(r);
                    }
                }
            },
            next = creds.changed() => match next {
                Some(next) => pending = Some(next),
                None => return,
            },
            _ = retry.tick(), if pending.is_some() => {}
        }
        let Some((next_generation, credentials)) = pending.clone() else {
            continue;
        };
        // Step 1: a new connection with the new credentials, subscribed to everything,
        // while the old one keeps delivering.
        let opened = async {
            let (mut new_sink, new_stream) = open_pubsub(&client, &credentials).await?.split();
            subs.apply(&mut new_sink).await?;
            RedisResult::Ok((new_sink, Box::pin(new_stream) as MsgStream))
        };
        let mut opened = std::pin::pin!(opened);
        let result = loop {
            tokio::select! {
                r = &mut opened => break r,
                msg = stream.next() => if let Some(msg) = msg {
                    if out.send(msg).is_err() { return; }
                },
            }
        };
        let (new_sink, new_stream) = match result {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("RESP2 subscriber could not open a new connection: {e}; retrying");
                continue;
            }
        };
        // Step 3: unsubscribe the old one, forwarding from both meanwhile, then drain it.
        let mut old_sink = std::mem::replace(&mut sink, new_sink);
        let mut old_stream = std::mem::replace(&mut stream, new_stream);
        let unsubscribe = async {
            for c in &subs.channels {
                let _ = old_sink.unsubscribe(c).await;
            }
            for p in &subs.patterns {
                let _ = old_sink.punsubscribe(p).await;
            }
        };
        let mut unsubscribe = Box::pin(unsubscribe);
        loop {
            tokio::select! {
                () = &mut unsubscribe => break,
                msg = old_stream.next() => match msg {
                    Some(msg) => { if out.send(msg).is_err() { return; } }
                    None => break,
                },
                msg = stream.next() => if let Some(msg) = msg {
                    if out.send(msg).is_err() { return; }
                },
            }
        }
        while let Some(Some(msg)) = old_stream.next().now_or_never() {
            if out.send(msg).is_err() {
                return;
            }
        }
        drop(unsubscribe);
        drop((old_sink, old_stream));
        tracing::debug!(
            from = generation.0,
            to = next_generation.0,
            "RESP2 subscriber swapped to a freshly authenticated connection"
        );
        generation = next_generation;
        pending = None;
        swaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

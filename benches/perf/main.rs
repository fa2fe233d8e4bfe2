//! `perf`: a load generator in the spirit of RabbitMQ's PerfTest, for warren or any AMQP
//! 0-9-1 broker. Producers and consumers each have their own connection (the lean client in
//! client.rs); the send time travels in the first 8 bytes of the body, so consumers measure
//! end-to-end latency. It prints a table and, with --json, writes the results.
//!
//!     cargo bench --bench perf -- --url amqp://guest:guest@127.0.0.1:5672/%2f \
//!         --producers 1 --consumers 1 --size 16 --duration 10 --auto-ack
//!
//! Modes besides the timed run: --tx (1-message transactions), --fill N (queue N messages,
//! print READY, hold until stdin closes: for memory readings), --idle-connections N (N
//! connections each with a channel and a consumer, held the same way).
//! benches/compare.py runs the scenarios against warren and RabbitMQ side by side.

mod client;

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use client::{Client, Event, Url};
use hdrhistogram::Histogram;
use tokio::time::timeout_at;
use warren::protocol::{AMQPClass, AMQPValue, FieldTable, basic, confirm, exchange, queue, tx};

#[derive(Parser, Debug, Clone, serde::Serialize)]
#[command(about = "AMQP 0-9-1 load generator")]
struct Args {
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    url: String,
    /// Producers connect here instead of --url (a cluster: another node than the queue's).
    #[arg(long)]
    producer_url: Option<String>,
    /// Consumers connect here instead of --url.
    #[arg(long)]
    consumer_url: Option<String>,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Body bytes (the first 8 carry the send time when there is room).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// basic.qos prefetch per consumer (manual ack only; 0 = unlimited).
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    #[arg(long)]
    auto_ack: bool,
    /// Manual ack: one ack with `multiple` every N deliveries.
    #[arg(long, default_value_t = 1)]
    multiple_ack: u64,
    /// delivery_mode 2.
    #[arg(long)]
    persistent: bool,
    /// Declare the queues durable.
    #[arg(long)]
    durable: bool,
    /// Publisher confirms with this many outstanding per producer (0: no confirms).
    #[arg(long, default_value_t = 0)]
    confirm: u64,
    /// Total publish rate in msg/s across producers (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value = "perf")]
    queue: String,
    /// Queue argument, key=value (integers are sent as integers); repeatable.
    #[arg(long = "queue-arg")]
    queue_args: Vec<String>,
    /// Publish to a fanout exchange bound to this many queues, `consumers` on each.
    #[arg(long, default_value_t = 0)]
    fanout: usize,
    /// This many queues (`<queue>-<i>`): producers publish to each in turn (default
    /// exchange), and each consumer connection consumes from all of them.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Record consumed and confirmed counts every this many milliseconds (0: off), as the
    /// result's `timeline`: for throughput over time, as around a node killed mid-run.
    #[arg(long, default_value_t = 0)]
    timeline_ms: u64,
    /// 1-message transactions: publish, tx.commit, wait for commit-ok.
    #[arg(long)]
    tx: bool,
    /// Queue this many messages (no consumers), print READY, hold until stdin closes.
    #[arg(long, default_value_t = 0)]
    fill: u64,
    /// Open this many connections, each with a channel and a consumer; hold as for --fill.
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
    /// Runtime worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
}

fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

type Res<T> = std::io::Result<T>;

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn queue_names(a: &Args) -> Vec<String> {
    let n = a.fanout.max(if a.queues > 1 { a.queues } else { 0 });
    if n > 0 {
        (0..n).map(|i| format!("{}-{i}", a.queue)).collect()
    } else {
        vec![a.queue.clone()]
    }
}

fn exchange_name(a: &Args) -> &'static str {
    if a.fanout > 0 { "perf.fanout" } else { "" }
}

fn queue_arguments(a: &Args) -> Res<FieldTable> {
    let mut t = FieldTable::default();
    for kv in &a.queue_args {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| err(format!("--queue-arg {kv}: expected key=value")))?;
        let v = match v.parse::<i64>() {
            Ok(n) => AMQPValue::LongLongInt(n),
            Err(_) => AMQPValue::LongString(v.into()),
        };
        t.insert(k.into(), v);
    }
    Ok(t)
}

/// Declare (fresh) queues, and the fanout exchange with its bindings.
async fn setup(c: &mut Client, a: &Args) -> Res<()> {
    let args = queue_arguments(a)?;
    delete_queues(c, a).await?;
    for q in queue_names(a) {
        c.call(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: q.as_str().into(),
                passive: false,
                durable: a.durable,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: args.clone(),
            })),
        )
        .await?;
    }
    if a.fanout > 0 {
        c.call(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: exchange_name(a).into(),
                kind: "fanout".into(),
                passive: false,
                durable: false,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await?;
        for q in queue_names(a) {
            c.call(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: q.as_str().into(),
                    exchange: exchange_name(a).into(),
                    routing_key: "".into(),
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            )
            .await?;
        }
    }
    Ok(())
}

async fn delete_queues(c: &mut Client, a: &Args) -> Res<()> {
    for q in queue_names(a) {
        c.call(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: q.as_str().into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            })),
        )
        .await?;
    }
    Ok(())
}

async fn teardown(c: &mut Client, a: &Args) -> Res<()> {
    delete_queues(c, a).await?;
    if a.fanout > 0 {
        c.call(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: exchange_name(a).into(),
                if_unused: false,
                nowait: false,
            })),
        )
        .await?;
    }
    Ok(())
}

/// Publish until the deadline (or `limit` messages), keeping at most `confirm` unconfirmed.
async fn producer(
    url: Url,
    a: Arc<Args>,
    stats: Arc<Stats>,
    deadline: tokio::time::Instant,
    limit: u64,
) -> Res<()> {
    let mut c = Client::connect(&url).await?;
    if a.confirm > 0 {
        c.call(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await?;
    }
    if a.tx {
        c.call(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})))
            .await?;
    }
    let exchange = exchange_name(&a);
    let keys = match (a.fanout > 0, a.queues > 1) {
        (true, _) => vec![String::new()],
        (false, true) => queue_names(&a),
        (false, false) => vec![a.queue.clone()],
    };
    let mut next_key = 0usize;
    let key = keys[0].as_str();
    let mut body = vec![0x5au8; a.size];
    let rate = a.rate / a.producers as f64;
    let started = tokio::time::Instant::now();
    let (mut sent, mut confirmed) = (0u64, 0u64);
    loop {
        if tokio::time::Instant::now() >= deadline || (limit > 0 && sent >= limit) {
            break;
        }
        if a.tx {
            stamp(&mut body);
            c.publish(exchange, key, a.persistent, &body);
            c.send(1, &AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})));
            c.flush().await?;
            c.next_method().await?;
            sent += 1;
            stats.published.fetch_add(1, Ordering::Relaxed);
            stats.confirmed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut budget: u64 = 256;
        if limit > 0 {
            budget = budget.min(limit - sent);
        }
        if a.confirm > 0 {
            budget = budget.min(a.confirm - (sent - confirmed));
        }
        if rate > 0.0 {
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            if due <= sent {
                let next = started + Duration::from_secs_f64((sent + 1) as f64 / rate);
                tokio::time::sleep_until(next.min(deadline)).await;
                continue;
            }
            budget = budget.min(due - sent);
        }
        if budget > 0 {
            stamp(&mut body);
            for _ in 0..budget {
                c.publish(exchange, &keys[next_key], a.persistent, &body);
                next_key = (next_key + 1) % keys.len();
            }
            if timeout_at(deadline, c.flush()).await.is_err() {
                break;
            }
            sent += budget;
            stats.published.fetch_add(budget, Ordering::Relaxed);
        }
        if a.confirm > 0 {
            // Read acks: wait only when the window is full.
            let full = sent - confirmed >= a.confirm;
            if full {
                if timeout_at(deadline, c.fill()).await.is_err() {
                    break;
                }
            } else {
                c.try_fill()?;
            }
            take_confirms(&mut c, &mut confirmed, &stats)?;
        }
    }
    // --fill waits for every confirm.
    if limit > 0 && a.confirm > 0 {
        while confirmed < sent {
            c.fill().await?;
            take_confirms(&mut c, &mut confirmed, &stats)?;
        }
    }
    Ok(())
}

/// Count the acks and nacks in the read buffer; `confirmed` is the highest tag settled.
fn take_confirms(c: &mut Client, confirmed: &mut u64, stats: &Stats) -> Res<()> {
    while let Some(ev) = c.next()? {
        let (tag, multiple, nack) = match ev {
            Event::Ack { tag, multiple } => (tag, multiple, false),
            Event::Nack { tag, multiple } => (tag, multiple, true),
            Event::Method(_, m) => return Err(err(format!("unexpected {m:?}"))),
            _ => continue,
        };
        let n = if multiple { tag - *confirmed } else { 1 };
        *confirmed = if multiple { tag } else { (*confirmed).max(tag) };
        let counter = if nack {
            &stats.nacked
        } else {
            &stats.confirmed
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

fn stamp(body: &mut [u8]) {
    if body.len() >= 8 {
        body[..8].copy_from_slice(&now_ns().to_be_bytes());
    }
}

/// basic.qos (per consumer), then a basic.consume for each queue, all sent at once. The
/// consume-oks are not waited for with `call`, which skips deliveries: deliveries from the
/// first queues can come before the last consume-ok (`subscribe` reads them).
async fn consume(c: &mut Client, queues: &[String], a: &Args) -> Res<()> {
    if !a.auto_ack {
        c.call(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: a.prefetch,
                global: false,
            })),
        )
        .await?;
    }
    for q in queues {
        let m = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.as_str().into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack: a.auto_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        }));
        c.send(1, &m);
    }
    c.flush().await?;
    Ok(())
}

/// A consumer connection with a consumer on each queue, once every consume-ok is in: the
/// run starts only when all consumers are registered (registering 1,000 quorum queues'
/// consumers while producers already run would measure that, not the steady state). A
/// delivery during registration (left from before) is acked at once.
async fn subscribe(url: &Url, queues: &[String], a: &Args) -> Res<Client> {
    let mut c = Client::connect(url).await?;
    consume(&mut c, queues, a).await?;
    let mut oks = 0;
    while oks < queues.len() {
        c.fill().await?;
        while let Some(ev) = c.next()? {
            match ev {
                Event::Deliver { tag } if !a.auto_ack => c.ack(tag, false),
                Event::Method(_, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))) => oks += 1,
                Event::Method(_, m) => return Err(err(format!("unexpected {m:?}"))),
                _ => {}
            }
        }
        c.flush().await?;
    }
    Ok(c)
}

/// Consume until the deadline; returns the latency histogram (ns).
async fn consumer(
    mut c: Client,
    a: Arc<Args>,
    stats: Arc<Stats>,
    deadline: tokio::time::Instant,
) -> Res<()> {
    let mut hist = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(err)?;
    let (mut since_ack, mut first_body) = (0u64, false);
    loop {
        if timeout_at(deadline, c.fill()).await.is_err() {
            break;
        }
        let now = now_ns();
        let mut n = 0;
        while let Some(ev) = c.next()? {
            match ev {
                Event::Deliver { tag } => {
                    n += 1;
                    first_body = true;
                    if !a.auto_ack {
                        since_ack += 1;
                        if since_ack >= a.multiple_ack {
                            c.ack(tag, a.multiple_ack > 1);
                            since_ack = 0;
                        }
                    }
                }
                Event::Body { stamp } if first_body => {
                    first_body = false;
                    if let Some(sent) = stamp.filter(|_| a.size >= 8) {
                        let _ = hist.record(now.saturating_sub(sent).max(1_000));
                    }
                }
                Event::Method(_, m) => return Err(err(format!("unexpected {m:?}"))),
                _ => {}
            }
        }
        stats.consumed.fetch_add(n, Ordering::Relaxed);
        c.flush().await?;
    }
    let mut all = stats.latency.lock().unwrap();
    match all.as_mut() {
        Some(h) => h.add(&hist).map_err(err)?,
        None => *all = Some(hist),
    }
    Ok(())
}

/// Seconds of CPU this process has used (user + system), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0 // USER_HZ
}

fn wait_for_stdin_close() {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        if line.is_err() {
            break;
        }
    }
}

fn ready(what: &str) {
    println!("READY {what}");
    let _ = std::io::stdout().flush();
}

async fn run(a: Args) -> Res<serde_json::Value> {
    let url = Url::parse(&a.url).map_err(err)?;
    let producer_url = Url::parse(a.producer_url.as_deref().unwrap_or(&a.url)).map_err(err)?;
    let consumer_url = Url::parse(a.consumer_url.as_deref().unwrap_or(&a.url)).map_err(err)?;
    let a = Arc::new(a);
    let stats = Arc::new(Stats::default());
    let mut control = Client::connect(&url).await?;

    if a.idle_connections > 0 {
        setup(&mut control, &a).await?;
        let mut held = Vec::with_capacity(a.idle_connections);
        for _ in 0..a.idle_connections {
            held.push(subscribe(&url, std::slice::from_ref(&a.queue), &a).await?);
        }
        ready(&format!("{} connections", held.len()));
        tokio::task::spawn_blocking(wait_for_stdin_close)
            .await
            .map_err(err)?;
        drop(held);
        teardown(&mut control, &a).await?;
        return Ok(serde_json::json!({ "connections": a.idle_connections }));
    }

    setup(&mut control, &a).await?;
    if a.fill > 0 {
        let started = Instant::now();
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let per = a.fill / a.producers as u64;
        let tasks: Vec<_> = (0..a.producers)
            .map(|_| {
                tokio::spawn(producer(
                    producer_url.clone(),
                    a.clone(),
                    stats.clone(),
                    far,
                    per,
                ))
            })
            .collect();
        for t in tasks {
            t.await.map_err(err)??;
        }
        let secs = started.elapsed().as_secs_f64();
        ready(&format!("{} messages", per * a.producers as u64));
        tokio::task::spawn_blocking(wait_for_stdin_close)
            .await
            .map_err(err)?;
        teardown(&mut control, &a).await?;
        return Ok(serde_json::json!({
            "filled": per * a.producers as u64,
            "fill_per_sec": (per * a.producers as u64) as f64 / secs,
        }));
    }

    // One consumer connection per queue and --consumers; with --queues, each of them
    // consumes from all the queues.
    let mut subscribed = Vec::new();
    if !a.tx {
        let sets: Vec<Vec<String>> = match a.queues > 1 && a.fanout == 0 {
            true => vec![queue_names(&a)],
            false => queue_names(&a).into_iter().map(|q| vec![q]).collect(),
        };
        for qs in sets {
            for _ in 0..a.consumers {
                subscribed.push(subscribe(&consumer_url, &qs, &a).await?);
            }
        }
    }
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let timeline: Arc<Mutex<Vec<[u64; 4]>>> = Arc::default();
    // Where the timeline starts on the wall clock, for events another process times.
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.duration);
    let mut tasks = Vec::new();
    if a.timeline_ms > 0 {
        let (stats, every) = (stats.clone(), Duration::from_millis(a.timeline_ms));
        let timeline = timeline.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            while tokio::time::Instant::now() < deadline {
                tick.tick().await;
                let row = [
                    started.elapsed().as_millis() as u64,
                    stats.consumed.load(Ordering::Relaxed),
                    stats.confirmed.load(Ordering::Relaxed),
                    stats.nacked.load(Ordering::Relaxed),
                ];
                timeline.lock().unwrap().push(row);
            }
        });
    }
    for c in subscribed {
        tasks.push(tokio::spawn(consumer(
            c,
            a.clone(),
            stats.clone(),
            deadline,
        )));
    }
    for _ in 0..a.producers {
        tasks.push(tokio::spawn(producer(
            producer_url.clone(),
            a.clone(),
            stats.clone(),
            deadline,
            0,
        )));
    }
    for t in tasks {
        t.await.map_err(err)??;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    // The control connection's node may have been killed mid-run (benches/failover.py).
    if let Err(e) = teardown(&mut control, &a).await {
        eprintln!("perf: teardown failed: {e}");
    }
    let rate = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64 / secs;
    let lat = stats.latency.lock().unwrap().take();
    let pct = |q: f64| {
        lat.as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
    };
    Ok(serde_json::json!({
        "seconds": secs,
        "published_per_sec": rate(&stats.published),
        "confirmed_per_sec": rate(&stats.confirmed),
        "nacked": stats.nacked.load(Ordering::Relaxed),
        "consumed_per_sec": rate(&stats.consumed),
        "latency_us": {
            "p50": pct(0.5),
            "p99": pct(0.99),
            "p999": pct(0.999),
            "max": pct(1.0),
        },
        "generator_cpu_pct": 100.0 * cpu / secs,
        "timeline": timeline.lock().unwrap().clone(),
        "started_unix_ms": started_unix_ms,
    }))
}

fn main() {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let json = a.json.clone();
    let args = serde_json::to_value(&a).expect("args");
    let mut result = match rt.block_on(run(a)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("perf: {e}");
            std::process::exit(1);
        }
    };
    result["args"] = args;
    print_table(&result);
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&result).unwrap())
            .unwrap_or_else(|e| eprintln!("perf: cannot write {}: {e}", path.display()));
    }
}

fn print_table(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| match v.as_f64() {
        Some(x) => format!("{x:.0}"),
        None => "-".into(),
    };
    if let Some(s) = r.get("seconds") {
        println!(
            "{:<22} {:>12}",
            "seconds",
            format!("{:.2}", s.as_f64().unwrap_or(0.0))
        );
        for k in [
            "published_per_sec",
            "confirmed_per_sec",
            "consumed_per_sec",
            "nacked",
        ] {
            println!("{k:<22} {:>12}", f(&r[k]));
        }
        for k in ["p50", "p99", "p999", "max"] {
            let v = &r["latency_us"][k];
            println!(
                "{:<22} {:>12}",
                format!("latency {k} (us)"),
                match v.as_f64() {
                    Some(x) => format!("{x:.1}"),
                    None => "-".into(),
                }
            );
        }
        println!(
            "{:<22} {:>12}",
            "generator cpu %",
            f(&r["generator_cpu_pct"])
        );
    }
}

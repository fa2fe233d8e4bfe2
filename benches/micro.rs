//! Micro-benchmarks of the hot path, so that regressions show: frame parsing and content
//! assembly of publishes, topic routing over 10,000 bindings, and a queue task taking
//! publishes and dispatching them to a consumer.
//!
//!     cargo bench --bench micro

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::{mpsc, oneshot};
use warren::broker::consumer::{CONSUMER_CREDIT, ChannelLimit, ConsumerFlow};
use warren::broker::ids::{ChannelId, ConsumerId};
use warren::broker::memory::MemoryMonitor;
use warren::broker::message::Message;
use warren::broker::queue::{ConnEvent, ConsumerSpec, QueueCmd};
use warren::broker::routing::Dest;
use warren::broker::routing::topic::Topic;
use warren::broker::vhost::{QueueDecl, QueueSettings, VHost};
use warren::protocol::codec::{self, Frame, Method};
use warren::protocol::content::Assembler;
use warren::protocol::{AMQPClass, basic, encode};

const BATCH: usize = 1000;

/// BATCH publishes of 16-byte bodies, as a client would send them in one write.
fn publishes() -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..BATCH {
        encode::method(
            &mut buf,
            1,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "bench.queue".into(),
                mandatory: false,
                immediate: false,
            })),
        );
        encode::content(
            &mut buf,
            1,
            &[0x10, 0, 2],
            &(i as u128).to_be_bytes(),
            131_072,
        );
    }
    buf
}

const LIMITS: codec::Limits = codec::Limits {
    frame_max: 131_072,
    table_depth: 128,
};

fn parse(c: &mut Criterion) {
    let input = publishes();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("publish+header+body, 16 B", |b| {
        b.iter_batched(
            || input.clone(),
            |mut buf| {
                let mut asm = Assembler::default();
                let mut done = 0;
                while let Some(f) = codec::decode(&mut buf, LIMITS).unwrap() {
                    let content = match f {
                        Frame::Method(_, Method::Publish(p)) => {
                            asm.start(p);
                            None
                        }
                        Frame::Header {
                            class_id,
                            body_size,
                            properties,
                            ..
                        } => asm
                            .header(class_id, body_size, properties, 1 << 27)
                            .unwrap(),
                        Frame::Body(_, data) => asm.body(data).unwrap(),
                        other => panic!("{other:?}"),
                    };
                    done += content.is_some() as usize;
                }
                assert_eq!(done, BATCH);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn topic(c: &mut Criterion) {
    // 10,000 bindings in the shapes applications use: exact keys, one-word and tail wildcards.
    let mut t = Topic::default();
    for i in 0..10_000 {
        let pattern = match i % 4 {
            0 => format!("orders.region{}.created", i % 100),
            1 => format!("orders.*.shipped.{i}"),
            2 => format!("logs.app{i}.#"),
            _ => format!("#.audit{i}"),
        };
        t.bind(&pattern, i as u64, Dest::Exchange(format!("x{i}").into()));
    }
    let keys: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| match i % 4 {
            0 => format!("orders.region{}.created", i % 100),
            1 => format!("orders.eu.shipped.{}", i * 4 + 1),
            2 => format!("logs.app{}.error.disk", i * 4 + 2),
            _ => format!("misc.nothing.matches.{i}"),
        })
        .map(String::into_bytes)
        .collect();
    let mut g = c.benchmark_group("topic");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("route, 10k bindings", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            let mut n = 0;
            for k in &keys {
                out.clear();
                t.route(k, &mut out);
                n += out.len();
            }
            n
        })
    });
    g.finish();
}

fn message(i: usize) -> Arc<Message> {
    Arc::new(Message {
        exchange: Bytes::new(),
        routing_key: Bytes::from_static(b"q"),
        properties: Bytes::from_static(&[0, 0]),
        body: Bytes::copy_from_slice(&(i as u128).to_be_bytes()),
        persistent: false,
        stored: None,
    })
}

fn queue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = QueueSettings {
        inbox: 1024,
        memory_budget: 32 << 20,
        flow_messages: 1 << 20,
        quorum: Default::default(),
    };
    let vhost = VHost::new("/", settings, Arc::new(MemoryMonitor::new(0)), None, 0);
    let q = rt.block_on(async {
        let d = QueueDecl {
            name: "bench".into(),
            ..Default::default()
        };
        vhost
            .declare_queue(&d, warren::broker::ids::ConnId { node: 0, seq: 1 })
            .await
            .unwrap()
    });
    let (events, mut rx) = mpsc::unbounded_channel();
    let flow = Arc::new(ConsumerFlow::new(u64::from(CONSUMER_CREDIT)));
    let mut written = 0u64;
    rt.block_on(async {
        let (reply, ok) = oneshot::channel();
        let spec = ConsumerSpec {
            id: ConsumerId {
                channel: ChannelId {
                    conn: warren::broker::ids::ConnId { node: 0, seq: 1 },
                    channel: 1,
                },
                tag: "c".into(),
                serial: 1,
            },
            no_ack: true,
            exclusive: false,
            prefetch: 0,
            arguments: Default::default(),
            events,
            flow: flow.clone(),
            channel_limit: Arc::new(ChannelLimit::default()),
        };
        q.send(QueueCmd::Consume(spec, reply)).await;
        ok.await.unwrap().unwrap();
    });
    let msgs: Vec<Arc<Message>> = (0..BATCH).map(message).collect();
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("publish and dispatch to an auto-ack consumer", |b| {
        b.iter(|| {
            rt.block_on(async {
                for chunk in msgs.chunks(100) {
                    q.send(QueueCmd::Publish(chunk.to_vec(), None)).await;
                }
                let mut got = 0;
                while got < BATCH {
                    match rx.recv().await.unwrap() {
                        ConnEvent::Deliver { entries, .. } => {
                            got += entries.len();
                            written += entries.len() as u64;
                            if flow.grant(written + u64::from(CONSUMER_CREDIT)) {
                                q.wake();
                            }
                        }
                        other => panic!("{other:?}"),
                    }
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, parse, topic, queue);
criterion_main!(benches);

//! The declare rules of quorum queues: which declarations make one (x-queue-type, or the
//! default queue type), what a quorum queue must be (durable, shared, named by the client),
//! and the arguments it refuses or checks, all with RabbitMQ 3.10's reply codes and words.

use super::{QueueDecl, QueueRecord, Quorum, Topology, positive_int, show, text};
use crate::broker::queue::quorum::Locator;
use crate::error::{Error, code};
use crate::protocol::{AMQPValue, FieldTable};

/// Arguments other queue types take that a quorum queue refuses (RabbitMQ 3.10's list).
const REFUSED_QUORUM_ARGS: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// Asks for a quorum queue (x-queue-type is "quorum").
pub fn is_quorum(arguments: &FieldTable) -> bool {
    arguments
        .inner()
        .get("x-queue-type")
        .is_some_and(|v| text(v) == "quorum")
}

/// Two x-queue-type values name the same type: absent is "classic" (RabbitMQ's rule since
/// 3.8, so a client may name the type of a queue declared without it, and back).
pub fn same_type(a: Option<&AMQPValue>, b: Option<&AMQPValue>) -> bool {
    let name = |v: Option<&AMQPValue>| v.map(text).unwrap_or_else(|| "classic".into());
    name(a) == name(b)
}

/// With quorum as the default queue type: a declaration without x-queue-type that a quorum
/// queue can take (durable, not exclusive, not auto-delete, not passive) gets
/// `x-queue-type: quorum`, unless it names a queue that exists already as a classic one (it
/// was declared before the default changed, and stays as it is).
pub fn default_to_quorum(d: &mut QueueDecl, existing: Option<&QueueRecord>) {
    let shared = d.durable && !d.exclusive && !d.auto_delete && !d.passive;
    if !shared || d.arguments.inner().contains_key("x-queue-type") {
        return;
    }
    if existing.is_some_and(|q| q.quorum.is_none()) {
        return;
    }
    d.arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
}

impl Topology {
    /// A new queue's type from x-queue-type: None for classic, the placement for quorum,
    /// which must be durable, not exclusive, not auto-delete and named by the client (406
    /// otherwise, with RabbitMQ's words).
    pub(super) fn queue_type(
        &self,
        d: &QueueDecl,
        server_named: bool,
    ) -> Result<Option<Quorum>, Error> {
        let rs = format!("queue '{}' in vhost '{}'", d.name, self.vhost);
        if let Some(v) = d.arguments.inner().get("x-queue-leader-locator")
            && Locator::of(&d.arguments).is_none()
        {
            return Err(Error::precondition(format!(
                "invalid arg 'x-queue-leader-locator' for {rs}: {}",
                show(Some(v))
            )));
        }
        let kind = d.arguments.inner().get("x-queue-type").map(text);
        match kind.as_deref() {
            None | Some("classic") => return Ok(None),
            Some("quorum") => {}
            Some(other) => {
                return Err(Error::precondition(format!(
                    "invalid arg 'x-queue-type' for {rs}: unsupported queue type '{other}'"
                )));
            }
        }
        if server_named {
            return Err(Error::precondition(
                "Cannot declare a server-named queue for type rabbit_quorum_queue",
            ));
        }
        for (bad, property) in [
            (d.auto_delete, "auto-delete"),
            (d.exclusive, "exclusive-owner"),
            (!d.durable, "non-durable"),
        ] {
            if bad {
                return Err(Error::precondition(format!(
                    "invalid property '{property}' for {rs}"
                )));
            }
        }
        for arg in REFUSED_QUORUM_ARGS {
            if d.arguments.inner().contains_key(*arg) {
                return Err(Error::precondition(format!(
                    "invalid arg '{arg}' for {rs} of queue type rabbit_quorum_queue"
                )));
            }
        }
        for arg in ["x-quorum-initial-group-size", "x-delivery-limit"] {
            if let Some(v) = d.arguments.inner().get(arg)
                && !positive_int(v)
            {
                return Err(Error::precondition(format!(
                    "invalid arg '{arg}' for {rs}: {}",
                    show(Some(v))
                )));
            }
        }
        d.quorum.clone().map(Some).ok_or_else(|| {
            Error::channel(
                code::INTERNAL_ERROR,
                format!("no placement for quorum {rs}"),
            )
        })
    }
}

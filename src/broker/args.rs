//! Queue arguments (`x-…`) that change how a queue behaves, checked at declare the way
//! RabbitMQ checks them: a value of the wrong type or range is 406 PRECONDITION_FAILED.
//! Arguments warren does not act on are kept as given (and compared on redeclare).

use crate::protocol::{AMQPValue, FieldTable};

/// What a queue does when a publish would take it over its length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop the oldest ready messages (RabbitMQ's default).
    #[default]
    DropHead,
    /// Refuse the new message: nacked to a confirming publisher, dropped otherwise.
    /// `reject-publish-dlx` behaves the same (warren has no dead-lettering yet).
    RejectPublish,
}

/// Limits on a queue's ready messages (unacked deliveries do not count, as in RabbitMQ).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_length: Option<u64>,
    /// Sum of body sizes.
    pub max_bytes: Option<u64>,
    pub overflow: Overflow,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.max_length.is_some() || self.max_bytes.is_some()
    }

    /// Would a queue holding `len` ready messages of `bytes` be over the limits?
    pub fn exceeded(&self, len: usize, bytes: u64) -> bool {
        self.max_length.is_some_and(|m| len as u64 > m) || self.max_bytes.is_some_and(|m| bytes > m)
    }
}

/// A queue's arguments, parsed.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueArgs {
    pub limits: Limits,
    /// x-message-ttl: milliseconds a message may wait in the queue.
    pub message_ttl: Option<u64>,
    /// x-expires: milliseconds the queue may go unused before it is deleted.
    pub expires: Option<u64>,
}

impl QueueArgs {
    /// Parse and check `arguments`; the error is (argument, what is wrong with it).
    pub fn parse(arguments: &FieldTable) -> Result<QueueArgs, BadArg> {
        let mut a = QueueArgs::default();
        for (key, value) in arguments.inner() {
            let key = key.as_str();
            match key {
                "x-max-length" => a.limits.max_length = Some(non_negative(key, value)?),
                "x-max-length-bytes" => a.limits.max_bytes = Some(non_negative(key, value)?),
                "x-overflow" => {
                    a.limits.overflow = match string(value).as_deref() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") | Some("reject-publish-dlx") => {
                            Overflow::RejectPublish
                        }
                        Some(other) => {
                            return Err(invalid(key, &format!("unacceptable value '{other}'")));
                        }
                        None => return Err(invalid(key, "unacceptable type")),
                    }
                }
                "x-message-ttl" => a.message_ttl = Some(non_negative(key, value)?),
                "x-expires" => {
                    let n = non_negative(key, value)?;
                    positive(key, n)?;
                    a.expires = Some(n);
                }
                // Checked now so that a bad value fails at declare, as in RabbitMQ.
                "x-max-priority" => {
                    let n = non_negative(key, value)?;
                    at_most(key, n, 255)?;
                }
                _ => {}
            }
        }
        Ok(a)
    }
}

#[derive(Debug)]
pub struct BadArg {
    pub key: String,
    pub why: String,
}

fn invalid(key: &str, why: &str) -> BadArg {
    BadArg {
        key: key.to_string(),
        why: why.to_string(),
    }
}

/// An argument's value if it is an integer of any AMQP width.
pub fn integer(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

fn non_negative(key: &str, v: &AMQPValue) -> Result<u64, BadArg> {
    let n = integer(v).ok_or_else(|| invalid(key, "unacceptable type"))?;
    u64::try_from(n).map_err(|_| invalid(key, &format!("negative value {n}")))
}

fn positive(key: &str, n: u64) -> Result<(), BadArg> {
    match n {
        0 => Err(invalid(key, "value must be positive")),
        _ => Ok(()),
    }
}

fn at_most(key: &str, n: u64, max: u64) -> Result<(), BadArg> {
    match n {
        n if n > max => Err(invalid(key, &format!("value must be at most {max}"))),
        _ => Ok(()),
    }
}

fn string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn limits_parse_from_any_integer_type() {
        let a = QueueArgs::parse(&table(&[
            ("x-max-length", AMQPValue::ShortInt(3)),
            ("x-max-length-bytes", AMQPValue::LongLongInt(1 << 20)),
            ("x-overflow", AMQPValue::LongString("reject-publish".into())),
        ]))
        .unwrap();
        assert_eq!(a.limits.max_length, Some(3));
        assert_eq!(a.limits.max_bytes, Some(1 << 20));
        assert_eq!(a.limits.overflow, Overflow::RejectPublish);
        assert!(!a.limits.exceeded(3, 1 << 20));
        assert!(a.limits.exceeded(4, 0));
        assert!(a.limits.exceeded(0, (1 << 20) + 1));
    }

    #[test]
    fn bad_values_are_refused() {
        for (k, v) in [
            ("x-max-length", AMQPValue::LongInt(-1)),
            ("x-max-length", AMQPValue::LongString("10".into())),
            ("x-overflow", AMQPValue::LongString("drop-tail".into())),
            ("x-overflow", AMQPValue::LongInt(1)),
            ("x-expires", AMQPValue::LongInt(0)),
            ("x-message-ttl", AMQPValue::LongInt(-5)),
            ("x-max-priority", AMQPValue::LongInt(256)),
        ] {
            assert!(
                QueueArgs::parse(&table(&[(k, v.clone())])).is_err(),
                "{k} {v:?}"
            );
        }
        assert!(QueueArgs::parse(&table(&[("x-custom", AMQPValue::Boolean(true))])).is_ok());
    }
}

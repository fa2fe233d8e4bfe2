//! Content assembly: a `basic.publish` method frame, then a content header, then body frames
//! until the declared size is reached. Anything out of that order is 505 UNEXPECTED_FRAME.

use bytes::{Bytes, BytesMut};

use super::codec::Publish;
use crate::error::{Error, code};

/// A complete published message as it came off the wire.
#[derive(Debug, Clone)]
pub struct Content {
    pub publish: Publish,
    pub properties: Bytes,
    pub body: Bytes,
    /// delivery_mode 2, read while the properties were checked.
    pub persistent: bool,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    AwaitHeader(Publish),
    AwaitBody {
        publish: Publish,
        properties: Bytes,
        persistent: bool,
        body_size: u64,
        received: u64,
        parts: Vec<Bytes>,
    },
}

#[derive(Debug, Default)]
pub struct Assembler {
    state: State,
}

fn unexpected(text: &str) -> Error {
    Error::connection(code::UNEXPECTED_FRAME, text)
}

impl Assembler {
    /// True between a publish and the last body frame: a method now is out of sequence.
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Body bytes received for the message being assembled (what it holds in memory).
    pub fn buffered(&self) -> u64 {
        match &self.state {
            State::AwaitBody { received, .. } => *received,
            _ => 0,
        }
    }

    pub fn start(&mut self, publish: Publish) {
        self.state = State::AwaitHeader(publish);
    }

    pub fn header(
        &mut self,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
        max_size: u64,
    ) -> Result<Option<Content>, Error> {
        let State::AwaitHeader(publish) = std::mem::take(&mut self.state) else {
            return Err(unexpected(
                "content header without a preceding basic.publish",
            ));
        };
        if class_id != 60 {
            return Err(unexpected("content header class is not basic"));
        }
        let Some(mode) = super::properties::checked_delivery_mode(&properties) else {
            return Err(Error::connection(
                code::FRAME_ERROR,
                "malformed content header properties",
            ));
        };
        let persistent = mode == Some(2);
        if body_size > max_size {
            return Err(Error::precondition(format!(
                "message size {body_size} is larger than configured max size {max_size}"
            ))
            .during(60, 40));
        }
        if body_size == 0 {
            return Ok(Some(Content {
                publish,
                properties,
                body: Bytes::new(),
                persistent,
            }));
        }
        self.state = State::AwaitBody {
            publish,
            properties,
            persistent,
            body_size,
            received: 0,
            parts: Vec::new(),
        };
        Ok(None)
    }

    pub fn body(&mut self, data: Bytes) -> Result<Option<Content>, Error> {
        let State::AwaitBody {
            received,
            body_size,
            parts,
            ..
        } = &mut self.state
        else {
            return Err(unexpected("content body frame without a content header"));
        };
        *received += data.len() as u64;
        if *received > *body_size {
            return Err(Error::connection(
                code::FRAME_ERROR,
                "content body exceeds the size in its header",
            ));
        }
        parts.push(data);
        if *received < *body_size {
            return Ok(None);
        }
        let State::AwaitBody {
            publish,
            properties,
            persistent,
            mut parts,
            body_size,
            ..
        } = std::mem::take(&mut self.state)
        else {
            unreachable!("state checked above")
        };
        let body = if parts.len() == 1 {
            parts.pop().unwrap_or_default()
        } else {
            // Multi-frame bodies are joined once, so queues and deliveries share one buffer.
            let mut joined = BytesMut::with_capacity(body_size as usize);
            for p in parts {
                joined.extend_from_slice(&p);
            }
            joined.freeze()
        };
        Ok(Some(Content {
            publish,
            properties,
            body,
            persistent,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> Publish {
        Publish {
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"q"),
            mandatory: false,
            immediate: false,
        }
    }

    #[test]
    fn assembles_multi_frame_body() {
        let mut a = Assembler::default();
        a.start(publish());
        assert!(
            a.header(60, 6, Bytes::from_static(&[0, 0]), 100)
                .unwrap()
                .is_none()
        );
        assert!(a.body(Bytes::from_static(b"abc")).unwrap().is_none());
        let c = a.body(Bytes::from_static(b"def")).unwrap().unwrap();
        assert_eq!(&c.body[..], b"abcdef");
        assert!(!a.in_progress());
    }

    #[test]
    fn empty_body_completes_on_header() {
        let mut a = Assembler::default();
        a.start(publish());
        assert!(
            a.header(60, 0, Bytes::from_static(&[0, 0]), 100)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn out_of_sequence_frames_are_505() {
        let mut a = Assembler::default();
        assert_eq!(
            a.header(60, 1, Bytes::from_static(&[0, 0]), 10)
                .unwrap_err()
                .code(),
            505
        );
        assert_eq!(a.body(Bytes::from_static(b"x")).unwrap_err().code(), 505);
        a.start(publish());
        assert_eq!(a.body(Bytes::from_static(b"x")).unwrap_err().code(), 505);
    }

    #[test]
    fn properties_are_checked_and_delivery_mode_read() {
        let mut a = Assembler::default();
        a.start(publish());
        // flags: delivery-mode present, value 2
        let c = a
            .header(60, 0, Bytes::from_static(&[0x10, 0, 2]), 10)
            .unwrap()
            .unwrap();
        assert!(c.persistent);
        a.start(publish());
        // flags say content-type follows, but nothing does
        assert_eq!(
            a.header(60, 0, Bytes::from_static(&[0x80, 0]), 10)
                .unwrap_err()
                .code(),
            501
        );
    }

    #[test]
    fn oversize_and_overflow() {
        let mut a = Assembler::default();
        a.start(publish());
        assert_eq!(
            a.header(60, 11, Bytes::from_static(&[0, 0]), 10)
                .unwrap_err()
                .code(),
            406
        );
        a.start(publish());
        a.header(60, 2, Bytes::from_static(&[0, 0]), 10).unwrap();
        assert_eq!(a.body(Bytes::from_static(b"xyz")).unwrap_err().code(), 501);
    }
}

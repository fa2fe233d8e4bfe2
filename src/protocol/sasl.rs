//! SASL responses of the two mechanisms AMQP clients use: PLAIN and AMQPLAIN.

use amq_protocol::types::parsing::parse_field_table;

use super::AMQPValue;
use super::table::{self, TableError};

/// PLAIN: `authzid NUL user NUL password`.
pub fn plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

/// AMQPLAIN: a field table without its length prefix, with LOGIN and PASSWORD. A table
/// nested deeper than `max_depth` is an error of its own; any other malformed one is no
/// credentials.
pub fn amqplain(response: &[u8], max_depth: usize) -> Result<Option<(String, String)>, TableError> {
    let mut framed = (response.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(response);
    match table::check_depth(&framed, max_depth) {
        Err(TableError::TooDeep(n)) => return Err(TableError::TooDeep(n)),
        Err(TableError::Malformed) => return Ok(None),
        Ok(_) => {}
    }
    Ok(credentials(&framed))
}

fn credentials(framed: &[u8]) -> Option<(String, String)> {
    let (_, table) = parse_field_table(framed).ok()?;
    let text = |k: &str| match table.inner().get(k)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_splits_on_nul() {
        assert_eq!(
            plain(b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(plain(b"guest"), None);
    }

    #[test]
    fn amqplain_reads_table_entries() {
        let mut r = Vec::new();
        for (k, v) in [("LOGIN", "u"), ("PASSWORD", "p")] {
            r.push(k.len() as u8);
            r.extend_from_slice(k.as_bytes());
            r.push(b'S');
            r.extend_from_slice(&(v.len() as u32).to_be_bytes());
            r.extend_from_slice(v.as_bytes());
        }
        assert_eq!(amqplain(&r, 4), Ok(Some(("u".into(), "p".into()))));
        assert_eq!(amqplain(&r[1..], 4), Ok(None));
        let deep = table::build::nested(6);
        assert_eq!(amqplain(&deep[4..], 5), Err(TableError::TooDeep(5)));
        assert_eq!(amqplain(&deep[4..], 6), Ok(None));
    }
}

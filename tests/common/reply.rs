//! A reply as a test reads it ([`Reply`]), and [`RawConn`]'s methods that
//! speak in it, for tests that compare structure rather than exact bytes.
//!
//! Invariant: one complete frame from [`RawConn::read_reply`] becomes one
//! [`Reply`], parsed by keygate's own [`Value::parse`]; RESP3 shapes fold
//! into the RESP2 ones (maps flatten to arrays, doubles, big numbers and
//! booleans read as their text, a verbatim string as `fmt:text`).

use keygate::protocol::reply::Value;

use super::{resp_command, RawConn};

/// A reply, as a test reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(String),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    /// Parses one complete reply frame; panics on bytes that are not one.
    pub fn parse(frame: &[u8]) -> Reply {
        let value = Value::parse(frame)
            .unwrap_or_else(|e| panic!("invalid reply {:?}: {e}", String::from_utf8_lossy(frame)));
        Reply::from_value(&value)
    }

    fn from_value(value: &Value) -> Reply {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let all = |items: &[Value]| items.iter().map(Reply::from_value).collect();
        match value {
            Value::Simple(s) => Reply::Status(text(s)),
            Value::Error(e) => Reply::Error(text(e)),
            Value::Integer(n) => Reply::Int(*n),
            Value::Bulk(b) | Value::Double(b) | Value::BigNumber(b) => Reply::Bulk(text(b)),
            Value::Verbatim(format, body) => {
                Reply::Bulk(format!("{}:{}", text(format), text(body)))
            }
            Value::Boolean(b) => Reply::Bulk(if *b { "t" } else { "f" }.to_string()),
            Value::Nil => Reply::Nil,
            Value::Array(items) | Value::Set(items) | Value::Push(items) => {
                Reply::Array(all(items))
            }
            Value::Map(pairs) => Reply::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [Reply::from_value(k), Reply::from_value(v)])
                    .collect(),
            ),
        }
    }

    /// A status, error or bulk's text, an integer's digits, else the Debug form.
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) | Reply::Bulk(s) => s.clone(),
            Reply::Int(n) => n.to_string(),
            other => format!("{other:?}"),
        }
    }

    /// An array's items; panics on anything else.
    pub fn items(&self) -> Vec<Reply> {
        match self {
            Reply::Array(items) => items.clone(),
            other => panic!("not an array: {other:?}"),
        }
    }

    /// An array's items' texts, as a set.
    pub fn strings(&self) -> std::collections::BTreeSet<String> {
        self.items().iter().map(Reply::text).collect()
    }

    /// True for a `-NOPERM` error.
    pub fn is_noperm(&self) -> bool {
        matches!(self, Reply::Error(e) if e.starts_with("NOPERM"))
    }
}

impl RawConn {
    /// Connects and logs in as `service` (AUTH must answer `+OK`).
    pub fn login(port: u16, service: &str, password: &str) -> RawConn {
        let mut conn = RawConn::connect(port);
        assert_eq!(
            conn.cmd_str(&["AUTH", service, password]),
            "+OK\r\n",
            "AUTH {service}"
        );
        conn
    }

    /// Writes one command without reading its reply.
    pub fn send_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.send(&resp_command(args));
    }

    /// Reads one reply as a [`Reply`].
    pub fn read_value(&mut self) -> Reply {
        Reply::parse(&self.read_reply())
    }

    /// Sends one command and reads its reply as a [`Reply`].
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        self.send_cmd(args);
        self.read_value()
    }
}

//! Client frames parsed into typed requests at the edge, and the server frames of the wire
//! contract. Parsing is by hand rather than by serde derive so that every refusal names
//! the field at fault and echoes the request `id` when there is one.

use serde_json::{json, Map, Value};

use super::error::Code;

/// A client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe {
        channel: String,
        since: Option<i64>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        name: String,
        data: Value,
        key: Option<String>,
    },
    Ping,
}

/// A parsed frame: the request and its `id` (number or string), if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: Option<Value>,
    pub request: Request,
}

/// A refused frame: what to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub id: Option<Value>,
    pub message: String,
}

fn refuse(id: &Option<Value>, message: impl Into<String>) -> Refusal {
    Refusal {
        id: id.clone(),
        message: message.into(),
    }
}

fn string_field(
    obj: &Map<String, Value>,
    id: &Option<Value>,
    field: &str,
) -> Result<String, Refusal> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(refuse(id, format!("`{field}` must be a string"))),
        None => Err(refuse(id, format!("`{field}` is required"))),
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Frame, Refusal> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| refuse(&None, format!("frame is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(refuse(&None, "frame must be a JSON object"));
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::Number(_) | Value::String(_))) => Some(v.clone()),
        Some(_) => return Err(refuse(&None, "`id` must be a number or a string")),
    };
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return Err(refuse(&id, "`op` must be a string")),
        None => return Err(refuse(&id, "`op` is required")),
    };
    let request = match op {
        "subscribe" => {
            let channel = string_field(&obj, &id, "channel")?;
            let since = match obj.get("since") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_i64() {
                    Some(n) if n >= 0 => Some(n),
                    _ => return Err(refuse(&id, "`since` must be a non-negative integer")),
                },
            };
            Request::Subscribe { channel, since }
        }
        "unsubscribe" => Request::Unsubscribe {
            channel: string_field(&obj, &id, "channel")?,
        },
        "publish" => {
            let channel = string_field(&obj, &id, "channel")?;
            let name = string_field(&obj, &id, "name")?;
            let data = obj.get("data").cloned().unwrap_or(Value::Null);
            let key = match obj.get("key") {
                None | Some(Value::Null) => None,
                Some(Value::String(k)) => Some(k.clone()),
                Some(_) => return Err(refuse(&id, "`key` must be a string")),
            };
            Request::Publish {
                channel,
                name,
                data,
                key,
            }
        }
        "ping" => Request::Ping,
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(refuse(&id, format!("unknown op {shown:?}")));
        }
    };
    Ok(Frame { id, request })
}

fn with_id(mut frame: Value, id: &Option<Value>) -> String {
    if let (Some(id), Some(obj)) = (id, frame.as_object_mut()) {
        obj.insert("id".into(), id.clone());
    }
    frame.to_string()
}

pub fn error(id: &Option<Value>, code: Code, message: &str) -> String {
    with_id(
        json!({ "op": "error", "code": code.as_str(), "message": message }),
        id,
    )
}

pub fn pong(id: &Option<Value>) -> String {
    with_id(json!({ "op": "pong" }), id)
}

pub fn subscribed(id: &Option<Value>, channel: &str, head: i64, recovered: bool) -> String {
    with_id(
        json!({ "op": "subscribed", "channel": channel, "head": head, "recovered": recovered }),
        id,
    )
}

pub fn unsubscribed(id: &Option<Value>, channel: &str) -> String {
    with_id(json!({ "op": "unsubscribed", "channel": channel }), id)
}

pub fn ack(id: &Option<Value>, channel: &str, msg_id: i64, duplicate: bool) -> String {
    with_id(
        json!({ "op": "ack", "channel": channel, "msg_id": msg_id, "duplicate": duplicate }),
        id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_their_ids() {
        let f = parse(r#"{"op":"subscribe","id":7,"channel":"lobby","since":3}"#).unwrap();
        assert_eq!(f.id, Some(json!(7)));
        assert_eq!(
            f.request,
            Request::Subscribe {
                channel: "lobby".into(),
                since: Some(3)
            }
        );
        let f = parse(r#"{"op":"publish","id":"a","channel":"c","name":"n","key":"k"}"#).unwrap();
        assert_eq!(f.id, Some(json!("a")));
        assert!(matches!(
            f.request,
            Request::Publish {
                data: Value::Null,
                ..
            }
        ));
        assert_eq!(parse(r#"{"op":"ping"}"#).unwrap().request, Request::Ping);
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        for (text, needle) in [
            ("nope", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{"id":1}"#, "`op` is required"),
            (r#"{"op":5}"#, "`op` must be a string"),
            (r#"{"op":"dance"}"#, "unknown op"),
            (r#"{"op":"subscribe"}"#, "`channel` is required"),
            (
                r#"{"op":"subscribe","channel":1}"#,
                "`channel` must be a string",
            ),
            (r#"{"op":"subscribe","channel":"x","since":-1}"#, "`since`"),
            (r#"{"op":"subscribe","channel":"x","since":"1"}"#, "`since`"),
            (
                r#"{"op":"publish","channel":"x","name":"n","key":3}"#,
                "`key`",
            ),
            (r#"{"op":"ping","id":{}}"#, "`id`"),
        ] {
            let r = parse(text).unwrap_err();
            assert!(r.message.contains(needle), "{text}: {}", r.message);
        }
        assert_eq!(
            parse(r#"{"op":"dance","id":9}"#).unwrap_err().id,
            Some(json!(9))
        );
    }
}

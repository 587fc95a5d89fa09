//! Error capture: the message and first stack frames of a failed response, desensitized.

use schemas::event::{MAX_MESSAGE_BYTES, MAX_STACK_FRAMES};
use serde_json::Value;

/// What an error response said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The message, desensitized, at most [`MAX_MESSAGE_BYTES`].
    pub message: String,
    /// The first stack frames, desensitized.
    pub stack: Vec<String>,
}

use schemas::text::truncate_at_char_boundary as truncate;

/// Field names that carry the message in common JSON error bodies, in order of preference.
const MESSAGE_FIELDS: [&str; 6] = [
    "message",
    "error",
    "msg",
    "error_message",
    "errorMessage",
    "detail",
];
const STACK_FIELDS: [&str; 4] = ["stack", "stack_trace", "stackTrace", "trace"];

fn message_of(v: &Value) -> Option<String> {
    for f in MESSAGE_FIELDS {
        match v.get(f) {
            Some(Value::String(s)) if !s.trim().is_empty() => return Some(s.clone()),
            // `{"error": {"message": ...}}` and similar nestings.
            Some(inner @ Value::Object(_)) => {
                if let Some(m) = message_of(inner) {
                    return Some(m);
                }
            }
            _ => {}
        }
    }
    None
}

fn is_frame(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with("at ") || l.starts_with("File \"") || l.contains(".go:") || l.starts_with("in ")
}

fn frames(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| is_frame(l))
        .take(MAX_STACK_FRAMES)
        .map(|l| schemas::text::desensitize(truncate(l.trim(), 256)).into_owned())
        .collect()
}

/// Extracts the message and stack frames from a (possibly partial) response body. JSON
/// bodies give their `message` / `error` field; other bodies give their text. `fallback`
/// is used when the body says nothing (e.g. `upstream timed out`).
pub fn capture(body: &[u8], fallback: &str) -> Captured {
    let (raw, stack) = match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let stack = STACK_FIELDS
                .iter()
                .find_map(|f| match v.get(*f) {
                    Some(Value::String(s)) => Some(frames(s)),
                    Some(Value::Array(a)) => Some(
                        a.iter()
                            .filter_map(Value::as_str)
                            .take(MAX_STACK_FRAMES)
                            .map(|s| {
                                schemas::text::desensitize(truncate(s.trim(), 256)).into_owned()
                            })
                            .collect(),
                    ),
                    _ => None,
                })
                .unwrap_or_default();
            (
                message_of(&v)
                    .unwrap_or_else(|| truncate(&v.to_string(), MAX_MESSAGE_BYTES).to_owned()),
                stack,
            )
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !is_frame(l))
                .map(str::to_owned)
                .unwrap_or_default();
            let stack = frames(&text);
            (first, stack)
        }
    };
    let raw = if raw.trim().is_empty() {
        fallback.to_owned()
    } else {
        raw
    };
    let message = schemas::text::desensitize(truncate(&raw, MAX_MESSAGE_BYTES)).into_owned();
    Captured {
        message: truncate(&message, MAX_MESSAGE_BYTES).to_owned(),
        stack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_message_from_common_shapes() {
        let table: [(&[u8], &str); 6] = [
            (br#"{"message":"db timeout","code":5}"#, "db timeout"),
            (
                br#"{"error":{"message":"quota exceeded","type":"QUOTA"}}"#,
                "quota exceeded",
            ),
            (br#"{"error":"connection refused"}"#, "connection refused"),
            (
                b"upstream connect error or disconnect/reset before headers\n",
                "upstream connect error or disconnect/reset before headers",
            ),
            (b"", "fallback text"),
            (br#"{"code":7}"#, r#"{"code":7}"#),
        ];
        for (body, want) in table {
            assert_eq!(capture(body, "fallback text").message, want);
        }
    }

    #[test]
    fn keeps_two_frames_and_caps_the_message() {
        let body = b"java.sql.SQLException: deadlock\n\tat com.x.Dao.save(Dao.java:42)\n\tat com.x.Svc.run(Svc.java:7)\n\tat main\n";
        let c = capture(body, "");
        assert_eq!(c.message, "java.sql.SQLException: deadlock");
        assert_eq!(c.stack.len(), 2);
        let long = "é".repeat(5_000);
        let c = capture(long.as_bytes(), "");
        assert!(c.message.len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("数据库", 4), "数");
        assert_eq!(truncate("abc", 10), "abc");
    }
}

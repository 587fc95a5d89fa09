//! JSON body predicates: errors carried inside 2xx responses.
//!
//! Grammar (no parentheses; `&&` binds tighter than `||`):
//!
//! ```text
//! predicate  = conjunct ( "||" conjunct )*
//! conjunct   = comparison ( "&&" comparison )*
//! comparison = path op literal
//! path       = "$" ( "." name | "[" index "]" )*
//! op         = "==" | "!=" | "<" | "<=" | ">" | ">="
//! literal    = number | "string" | true | false | null
//! ```
//!
//! A comparison whose path is missing from the body is false, so `$.code != 0` does not flag
//! bodies without a `code`. Ordering operators compare numbers only.

use serde_json::Value;

/// Why a predicate did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {at}: {message}")]
pub struct PredicateError {
    /// Byte offset in the source.
    pub at: usize,
    /// What was expected.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    path: Vec<Step>,
    op: Op,
    literal: Value,
}

/// A parsed predicate: a disjunction of conjunctions of comparisons.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    any: Vec<Vec<Comparison>>,
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, PredicateError> {
        Err(PredicateError {
            at: self.pos,
            message: message.into(),
        })
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn path(&mut self) -> Result<Vec<Step>, PredicateError> {
        if !self.eat("$") {
            return self.err("expected a path starting with '$'");
        }
        let mut steps = Vec::new();
        loop {
            if self.rest().starts_with('.') {
                self.pos += 1;
                let name: String = self
                    .rest()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
                    .collect();
                if name.is_empty() {
                    return self.err("expected a field name after '.'");
                }
                self.pos += name.len();
                steps.push(Step::Field(name));
            } else if self.rest().starts_with('[') {
                self.pos += 1;
                let digits: String = self
                    .rest()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let Ok(index) = digits.parse::<usize>() else {
                    return self.err("expected an array index");
                };
                self.pos += digits.len();
                if !self.rest().starts_with(']') {
                    return self.err("expected ']'");
                }
                self.pos += 1;
                steps.push(Step::Index(index));
            } else {
                return Ok(steps);
            }
        }
    }

    fn op(&mut self) -> Result<Op, PredicateError> {
        for (token, op) in [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
        ] {
            if self.eat(token) {
                return Ok(op);
            }
        }
        self.err("expected one of == != < <= > >=")
    }

    fn literal(&mut self) -> Result<Value, PredicateError> {
        self.skip_ws();
        let rest = self.rest();
        for (word, value) in [
            ("true", Value::Bool(true)),
            ("false", Value::Bool(false)),
            ("null", Value::Null),
        ] {
            if rest.starts_with(word) {
                self.pos += word.len();
                return Ok(value);
            }
        }
        // Strings and numbers: let serde_json read exactly one value from the front.
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v @ (Value::String(_) | Value::Number(_)))) => {
                self.pos += stream.byte_offset();
                Ok(v)
            }
            _ => self.err("expected a number, a \"string\", true, false or null"),
        }
    }

    fn comparison(&mut self) -> Result<Comparison, PredicateError> {
        let path = self.path()?;
        let op = self.op()?;
        let literal = self.literal()?;
        if matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge) && !literal.is_number() {
            return self.err("ordering operators compare numbers only");
        }
        Ok(Comparison { path, op, literal })
    }
}

/// Longest predicate source accepted.
const MAX_SOURCE: usize = 1024;

impl Predicate {
    /// Parses a predicate.
    pub fn parse(src: &str) -> Result<Self, PredicateError> {
        if src.len() > MAX_SOURCE {
            return Err(PredicateError {
                at: MAX_SOURCE,
                message: format!("longer than {MAX_SOURCE} bytes"),
            });
        }
        let mut p = Parser { src, pos: 0 };
        let mut any = vec![vec![p.comparison()?]];
        loop {
            if p.eat("&&") {
                let c = p.comparison()?;
                if let Some(last) = any.last_mut() {
                    last.push(c);
                }
            } else if p.eat("||") {
                any.push(vec![p.comparison()?]);
            } else {
                p.skip_ws();
                if p.pos != src.len() {
                    return p.err("expected && or || or the end");
                }
                return Ok(Self { any });
            }
        }
    }

    /// Evaluates against a parsed JSON body.
    pub fn eval(&self, body: &Value) -> bool {
        self.any.iter().any(|all| all.iter().all(|c| c.eval(body)))
    }

    /// Evaluates against raw bytes; a body that is not JSON never matches.
    pub fn eval_bytes(&self, body: &[u8]) -> bool {
        serde_json::from_slice::<Value>(body).is_ok_and(|v| self.eval(&v))
    }
}

impl Comparison {
    fn eval(&self, body: &Value) -> bool {
        let mut v = body;
        for step in &self.path {
            let next = match step {
                Step::Field(f) => v.get(f.as_str()),
                Step::Index(i) => v.get(*i),
            };
            match next {
                Some(n) => v = n,
                None => return false,
            }
        }
        match self.op {
            Op::Eq => json_eq(v, &self.literal),
            Op::Ne => !json_eq(v, &self.literal),
            op => match (v.as_f64(), self.literal.as_f64()) {
                (Some(a), Some(b)) => match op {
                    Op::Lt => a < b,
                    Op::Le => a <= b,
                    Op::Gt => a > b,
                    _ => a >= b,
                },
                _ => false,
            },
        }
    }
}

/// Numbers compare by value (`0` equals `0.0`); everything else structurally.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn evaluates_the_usual_shapes() {
        let cases = [
            ("$.code != 0", json!({"code": 7}), true),
            ("$.code != 0", json!({"code": 0}), false),
            ("$.code != 0", json!({"msg": "ok"}), false),
            ("$.code != 0.0", json!({"code": 0}), false),
            ("$.success == false", json!({"success": false}), true),
            (
                "$.error.type == \"QUOTA\"",
                json!({"error": {"type": "QUOTA"}}),
                true,
            ),
            (
                "$.items[1].ok == false",
                json!({"items": [{"ok": true}, {"ok": false}]}),
                true,
            ),
            (
                "$.status >= 500 || $.code != 0",
                json!({"status": 200, "code": 3}),
                true,
            ),
            (
                "$.status >= 500 && $.code != 0",
                json!({"status": 503, "code": 0}),
                false,
            ),
            ("$.a == 1 && $.b == 2 || $.c == 3", json!({"c": 3}), true),
            ("$.err == null", json!({"err": null}), true),
            ("$.code > 0", json!({"code": "7"}), false),
        ];
        for (src, body, want) in cases {
            let p = Predicate::parse(src).unwrap();
            assert_eq!(p.eval(&body), want, "{src} on {body}");
        }
    }

    #[test]
    fn non_json_bodies_never_match() {
        let p = Predicate::parse("$.code != 0").unwrap();
        assert!(!p.eval_bytes(b"<html>oops</html>"));
        assert!(!p.eval_bytes(b"{\"code\": 1"));
        assert!(p.eval_bytes(b"{\"code\": 1}"));
    }

    #[test]
    fn refuses_malformed_sources_with_a_position() {
        for src in [
            "",
            "code != 0",
            "$.code",
            "$.code !== 0",
            "$.code != ",
            "$.a < \"x\"",
            "$.a == 1 &&",
            "$[x] == 1",
            "$.a == 1 junk",
        ] {
            assert!(Predicate::parse(src).is_err(), "{src:?} should be refused");
        }
        let e = Predicate::parse("$.code ~ 0").unwrap_err();
        assert_eq!(e.at, 7, "points at the bad operator");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(src in ".{0,64}", body in ".{0,64}") {
            if let Ok(p) = Predicate::parse(&src) {
                let _ = p.eval_bytes(body.as_bytes());
            }
        }
    }
}

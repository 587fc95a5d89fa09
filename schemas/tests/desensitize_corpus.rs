//! The desensitizer corpus: every kind of personal data and secret is masked, ordinary text
//! (including error messages full of numbers, times and class names) is left alone, and the
//! invariants hold on arbitrary input.

use proptest::prelude::*;
use schemas::text::{cheap_template, desensitize, template_id};

/// (input, expected output) — each line masks one kind, in context.
const MASKED: &[(&str, &str)] = &[
    // phones
    ("call 13812345678 now", "call <PHONE> now"),
    ("手机号13912345678绑定失败", "手机号<PHONE>绑定失败"),
    ("tel:+86 138 1234 5678", "tel:<PHONE>"),
    ("phone=+8613812345678;", "phone=<PHONE>;"),
    ("mobile 138-1234-5678 invalid", "mobile <PHONE> invalid"),
    ("86 13812345678", "<PHONE>"),
    ("contact +1 (415) 555-0132 today", "contact <PHONE> today"),
    ("call (415) 555-0132", "call <PHONE>"),
    ("uk +44 20 7946 0958", "uk <PHONE>"),
    ("office 010-87654321 closed", "office <PHONE> closed"),
    ("us 415-555-0132.", "us <PHONE>."),
    // emails
    (
        "user alice.smith+test@example.co.uk not found",
        "user <EMAIL> not found",
    ),
    ("邮箱zhang_san@163.com验证失败", "邮箱<EMAIL>验证失败"),
    ("<bob@corp.example.com>", "<<EMAIL>>"),
    ("13812345678@qq.com", "<EMAIL>"),
    // bearer tokens, secrets
    (
        "Authorization: Bearer abc123.def456-ghi_789",
        "Authorization: Bearer <TOKEN>",
    ),
    (
        "authorization: bearer 9f8e7d6c5b4a",
        "authorization: bearer <TOKEN>",
    ),
    (
        "Authorization: Basic dXNlcjpwYXNzd29yZA==",
        "Authorization: Basic <TOKEN>",
    ),
    (
        "GET /cb?access_token=xyz&state=1",
        "GET /cb?access_token=<TOKEN>&state=1",
    ),
    (
        "connect with password=hunter2 failed",
        "connect with password=<TOKEN> failed",
    ),
    // JWT
    (
        "token eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U expired",
        "token <JWT> expired",
    ),
    // API keys, long tokens
    (
        "OpenAI key sk-proj-AbCdEf0123456789XyZ rejected",
        "OpenAI key <KEY> rejected",
    ),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe <KEY>"),
    ("aws AKIAIOSFODNN7EXAMPLE denied", "aws <KEY> denied"),
    (
        "github ghp_16C7e42F292c6912E7710c838347Ae178B4a invalid",
        "github <KEY> invalid",
    ),
    (
        "session a8Kx9PqZ2mN4vB7wR1tY3u expired",
        "session <TOKEN> expired",
    ),
    ("trace 4bf92f3577b34da6a3ce929d0e0e4736", "trace <TOKEN>"),
    ("nonce 123456789012345678901234", "nonce <TOKEN>"),
    // cards (Luhn)
    ("card 4111111111111111 declined", "card <CARD> declined"),
    ("card 4111 1111 1111 1111 declined", "card <CARD> declined"),
    ("卡号5200-8282-8282-8210支付失败", "卡号<CARD>支付失败"),
    ("amex 3782 822463 10005", "amex <CARD>"),
    ("unionpay 6217001234567890122", "unionpay <CARD>"),
    // mainland ID numbers
    ("身份证11010519491231002X校验失败", "身份证<ID>校验失败"),
    ("id_card=440308199901011234", "id_card=<ID>"),
    ("id 11010519491231002x", "id <ID>"),
    // IPs
    (
        "dial tcp 10.0.3.7:5432: connect: connection refused",
        "dial tcp <IP>:5432: connect: connection refused",
    ),
    ("client 192.168.1.20 closed", "client <IP> closed"),
    (
        "connect to [2001:db8::8a2e:370:7334]:443 failed",
        "connect to [<IP>]:443 failed",
    ),
    ("bind ::1 failed", "bind <IP> failed"),
    ("peer fe80::1ff:fe23:4567:890a: reset", "peer <IP>: reset"),
    ("mapped ::ffff:10.1.2.3 ok", "mapped <IP> ok"),
    ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "full <IP>"),
];

/// Ordinary text that must come back unchanged (and borrowed).
const UNCHANGED: &[&str] = &[
    "dial tcp: lookup orders-db.internal: no such host",
    "pq: could not connect to server: Connection refused",
    "java.net.SocketTimeoutException: Read timed out after 30000 ms",
    "com.mysql.cj.jdbc.exceptions.CommunicationsException: Communications link failure",
    "ERROR 1213 (40001): Deadlock found when trying to get lock; try restarting transaction",
    "upstream timed out (110: Connection timed out) while reading response header from upstream",
    "2026-11-28T08:56:19.123Z retry 3 of 5 in 250ms",
    "NullPointerException at OrderService.java:142",
    "ConnectionRefusedError: [Errno 111] Connection refused",
    "std::io::Error: Os { code: 28, kind: StorageFull, message: \"No space left on device\" }",
    "数据库连接被拒绝，请稍后重试",
    "订单 1234567 支付超时，已重试 3 次",
    "Bearer token expired",
    "basic authentication failed for user",
    "invalid token: signature has expired",
    "HTTP/1.1 503 Service Unavailable",
    "x509: certificate has expired or is not yet valid: current time 2026-11-28T08:56:19Z is after 2026-11-01T00:00:00Z",
    "Redis::CommandError: OOM command not allowed when used memory > 'maxmemory'",
    "order 550e8400-e29b-41d4-a716-446655440000 failed",
    "epoch 1732780579123 version 1.2.3 port 8080",
    "ERR_CONNECTION_REFUSED_BY_UPSTREAM_SERVER",
    "orders-db-primary-01.prod.internal:5432",
    "amount 12345678 cents, 4111 items",
    "12:30:45 and 00:1a:2b:3c:4d:5e",
    "",
];

#[test]
fn corpus_masks_each_kind() {
    let mut failures = Vec::new();
    for (input, expected) in MASKED {
        let got = desensitize(input);
        if got != *expected {
            failures.push(format!("{input:?}\n   got {got:?}\n  want {expected:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_leaves_ordinary_text_alone() {
    let mut failures = Vec::new();
    for input in UNCHANGED {
        let got = desensitize(input);
        if !matches!(got, std::borrow::Cow::Borrowed(_)) || got != *input {
            failures.push(format!("{input:?} -> {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn template_of_masked_equals_template_of_raw() {
    for (input, _) in MASKED {
        assert_eq!(
            cheap_template(&desensitize(input)),
            cheap_template(input),
            "{input:?}"
        );
    }
    for input in UNCHANGED {
        assert_eq!(cheap_template(&desensitize(input)), cheap_template(input));
    }
}

#[test]
fn huge_and_odd_inputs_do_not_panic() {
    let big = "a.".repeat(500_000);
    assert_eq!(desensitize(&big), big.as_str());
    let digits = "1 ".repeat(300_000);
    let _ = desensitize(&digits);
    let cjk = "数据库连接被拒绝".repeat(100_000);
    let t = cheap_template(&cjk);
    assert!(t.len() <= schemas::text::TEMPLATE_MAX_BYTES);
    let _ = template_id(&"eyJ".repeat(100_000));
    let _ = desensitize(&"x@".repeat(100_000));
}

/// Realistic-looking text: words, separators, numbers and PII-ish fragments mixed.
fn messy_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("connection refused".to_string()),
        Just("超时".to_string()),
        Just(" ".to_string()),
        Just(":".to_string()),
        Just(".".to_string()),
        Just("-".to_string()),
        Just("@".to_string()),
        Just("+".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("/".to_string()),
        Just("=".to_string()),
        Just("<".to_string()),
        Just(">".to_string()),
        Just("Bearer ".to_string()),
        Just("password=".to_string()),
        Just("eyJ".to_string()),
        Just("sk-".to_string()),
        Just("13812345678".to_string()),
        Just("4111111111111111".to_string()),
        Just("10.0.0.1".to_string()),
        Just("::".to_string()),
        Just("example.com".to_string()),
        "[0-9]{1,12}",
        "[a-fA-F0-9]{1,24}",
        "[a-zA-Z_]{1,10}",
        "\\PC{0,3}",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn masking_is_idempotent(text in messy_text()) {
        let once = desensitize(&text).into_owned();
        let twice = desensitize(&once).into_owned();
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn template_agrees_with_masking_on_token_streams(words in proptest::collection::vec(messy_text(), 0..8)) {
        // Realistic messages separate values by spaces; glued garbage may tokenize differently.
        let text = words.join(" ");
        let t = cheap_template(&text);
        prop_assert_eq!(cheap_template(&desensitize(&text)), t);
    }

    #[test]
    fn arbitrary_unicode_never_panics(text in "\\PC{0,200}") {
        let once = desensitize(&text).into_owned();
        prop_assert_eq!(desensitize(&once).into_owned(), once.clone());
        // The output is a String, so valid UTF-8 by construction; check char boundaries held.
        prop_assert!(std::str::from_utf8(once.as_bytes()).is_ok());
        let _ = template_id(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        let once = desensitize(&text).into_owned();
        prop_assert_eq!(desensitize(&once).into_owned(), once);
        let _ = cheap_template(&text);
    }
}

/// Masking a masked text changes nothing, including on inputs the fuzzer found
/// (`fuzz/artifacts-found/desensitize/`).
#[test]
fn masking_is_idempotent_on_fuzz_findings() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/artifacts-found/desensitize");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz findings directory") {
        let path = entry.expect("directory entry").path();
        let bytes = std::fs::read(&path).expect("finding");
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let once = desensitize(text);
        let twice = desensitize(&once);
        assert_eq!(once, twice, "{}: not idempotent", path.display());
        checked += 1;
    }
    assert!(checked > 0, "no findings read from {}", dir.display());
}

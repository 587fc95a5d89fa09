//! Structured evidence of a failure: WHAT failed (the dependency) and HOW (the failure mode),
//! read from the text in English and Chinese.
//!
//! Embeddings alone confuse "Postgres refused" with "Redis refused" (same words, different
//! cause) and separate "dial tcp: connection refused" from "数据库连接被拒绝" (same cause,
//! different words). The evidence fixes both: clustering never merges conflicting evidence
//! and always merges agreeing evidence, and uses the embedding only where evidence is missing.

use serde::Serialize;

/// How something failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// TLS handshake or certificate problems (expired, unknown authority, hostname mismatch).
    Tls,
    /// Name resolution failed.
    Dns,
    /// Deadlock or lock wait timeout.
    Lock,
    /// Rate limited or over quota.
    RateLimit,
    /// Out of memory.
    OutOfMemory,
    /// Disk or volume full.
    NoSpace,
    /// Encoding/decoding (JSON, protobuf, ...) failed.
    Serialization,
    /// A queue or buffer is full.
    QueueFull,
    /// A connection pool is exhausted / too many connections.
    PoolExhausted,
    /// A payment was declined or a payment channel failed.
    PaymentDeclined,
    /// Authentication or authorisation failed.
    Auth,
    /// The connection was refused.
    Refused,
    /// The connection was reset or closed unexpectedly.
    Reset,
    /// Something timed out.
    Timeout,
    /// A constraint (unique key, foreign key) was violated.
    Constraint,
    /// The dependency says it is unavailable (503, no healthy upstream, circuit open).
    Unavailable,
}

impl FailureMode {
    /// Every mode, in declaration order.
    pub const ALL: [FailureMode; 16] = [
        Self::Tls,
        Self::Dns,
        Self::Lock,
        Self::RateLimit,
        Self::OutOfMemory,
        Self::NoSpace,
        Self::Serialization,
        Self::QueueFull,
        Self::PoolExhausted,
        Self::PaymentDeclined,
        Self::Auth,
        Self::Refused,
        Self::Reset,
        Self::Timeout,
        Self::Constraint,
        Self::Unavailable,
    ];

    /// The mode named by [`Self::as_str`] (`None` for any other text): how a stored mode
    /// comes back from a database.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// A short stable name (`refused`, `timeout`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Dns => "dns",
            Self::Lock => "lock",
            Self::RateLimit => "rate_limit",
            Self::OutOfMemory => "out_of_memory",
            Self::NoSpace => "no_space",
            Self::Serialization => "serialization",
            Self::QueueFull => "queue_full",
            Self::PoolExhausted => "pool_exhausted",
            Self::PaymentDeclined => "payment_declined",
            Self::Auth => "auth",
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::Constraint => "constraint",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What failed and how, as far as the text says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Evidence {
    /// The dependency: a product (`postgresql`, `redis`, `stripe`, ...) or a service name.
    pub dependency: Option<String>,
    /// The failure mode.
    pub mode: Option<FailureMode>,
}

/// How two pieces of evidence relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// Both dependency and mode are known and equal.
    Same,
    /// A known dependency or a known mode differs.
    Conflict,
    /// Not enough to decide; `shared_mode` when both modes are known and equal.
    Unknown {
        /// Both modes known and equal.
        shared_mode: bool,
        /// Both dependencies known and equal.
        shared_dependency: bool,
    },
}

impl Evidence {
    /// Compares two pieces of evidence.
    pub fn agreement(&self, other: &Evidence) -> Agreement {
        let dep = match (&self.dependency, &other.dependency) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        };
        let mode = match (self.mode, other.mode) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        };
        match (dep, mode) {
            (Some(false), _) | (_, Some(false)) => Agreement::Conflict,
            (Some(true), Some(true)) => Agreement::Same,
            _ => Agreement::Unknown {
                shared_mode: mode == Some(true),
                shared_dependency: dep == Some(true),
            },
        }
    }

    /// `dependency/mode` with `?` for unknown parts.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.dependency.as_deref().unwrap_or("?"),
            self.mode.map_or("?", FailureMode::as_str)
        )
    }
}

/// Ports whose service is known.
const PORTS: &[(&str, &str)] = &[
    (":5432", "postgresql"),
    (":6379", "redis"),
    (":6380", "redis"),
    (":3306", "mysql"),
    (":9092", "kafka"),
    (":27017", "mongodb"),
    (":9200", "elasticsearch"),
    (":9300", "elasticsearch"),
    (":5672", "rabbitmq"),
    (":11211", "memcached"),
    (":2181", "zookeeper"),
    (":2379", "etcd"),
    (":1521", "oracle"),
    (":1433", "sqlserver"),
    (":8500", "consul"),
    (":9042", "cassandra"),
    (":26257", "cockroachdb"),
    (":4222", "nats"),
];

/// Product names and the client libraries that imply them (lowercase substrings).
const PRODUCTS: &[(&str, &[&str])] = &[
    (
        "postgresql",
        &[
            "postgres",
            "psycopg",
            "pq:",
            "pgx",
            "pgbouncer",
            "pg-",
            "pg_",
            "sqlstate",
            "npgsql",
            "node-postgres",
            "/pg/",
            "postmaster",
        ],
    ),
    (
        "mysql",
        &[
            "mysql", "mariadb", "innodb", "er_lock", "er_con", "mysqli", "pymysql",
        ],
    ),
    (
        "redis",
        &[
            "redis",
            "jedis",
            "lettuce",
            "ioredis",
            "redisson",
            "maxmemory",
            "noauth",
            "wrongpass",
            "缓存服务",
        ],
    ),
    (
        "kafka",
        &[
            "kafka", "rdkafka", "sarama", "franz-go", "kafkajs", "broker",
        ],
    ),
    ("mongodb", &["mongo", "e11000"]),
    (
        "elasticsearch",
        &["elasticsearch", "opensearch", "es_rejected"],
    ),
    ("rabbitmq", &["rabbitmq", "amqp"]),
    ("memcached", &["memcache"]),
    ("etcd", &["etcd"]),
    ("oracle", &["ora-", "oracle"]),
    (
        "s3",
        &[
            "s3.amazonaws",
            "nosuchbucket",
            "aws s3",
            " s3 ",
            "s3:",
            "(s3)",
            "s3exception",
            "client-s3",
            "service: s3",
            "s3 upload",
            "s3://",
        ],
    ),
    ("stripe", &["stripe"]),
    ("paypal", &["paypal"]),
    ("alipay", &["alipay", "支付宝"]),
    (
        "wechatpay",
        &["wechat", "weixin", "wxpay", "微信支付", "微信"],
    ),
    ("unionpay", &["unionpay", "银联"]),
    ("twilio", &["twilio"]),
    ("sendgrid", &["sendgrid"]),
    ("openai", &["openai"]),
    ("smtp", &["smtp"]),
];

/// Failure modes, in priority order (the first rule that matches decides). Lowercase
/// substrings; Chinese included.
const MODES: &[(FailureMode, &[&str])] = &[
    (
        FailureMode::Tls,
        &[
            "x509",
            "certificate",
            "ssl",
            "tls",
            "handshake",
            "证书",
            "pkix",
            "cert_",
        ],
    ),
    (
        FailureMode::Dns,
        &[
            "no such host",
            "name resolution",
            "getaddrinfo",
            "enotfound",
            "unknownhost",
            "unknown host",
            "nxdomain",
            "could not resolve",
            "failed to resolve",
            "name or service not known",
            "temporary failure in name",
            "dns",
            "域名解析",
            "解析域名",
            "无法解析",
            "nodename nor servname",
            "could not be resolved",
            "host not found",
            "eai_again",
        ],
    ),
    (
        FailureMode::Lock,
        &[
            "deadlock",
            "lock wait timeout",
            "死锁",
            "锁等待超时",
            "could not obtain lock",
            "lock timeout",
            "40p01",
        ],
    ),
    (
        FailureMode::OutOfMemory,
        &[
            "out of memory",
            "outofmemory",
            "oom",
            "heap space",
            "memory limit",
            "cannot allocate memory",
            "内存不足",
            "内存溢出",
            "memoryerror",
            "heap out of memory",
            "allocation failed",
            "memory allocation",
            "oomkilled",
            "maxmemory",
        ],
    ),
    (
        FailureMode::NoSpace,
        &[
            "no space left",
            "disk full",
            "enospc",
            "磁盘已满",
            "磁盘空间不足",
            "空间不足",
            "storagefull",
            "disk quota",
            "not enough space",
            "insufficient storage",
            "diskfull",
            "write failed, filesystem is full",
        ],
    ),
    (
        FailureMode::QueueFull,
        &[
            "queue full",
            "queue is full",
            "queue_full",
            "buffer full",
            "buffer is full",
            "overflow",
            "队列已满",
            "队列满",
            "积压",
            "backpressure",
            "rejectedexecution",
            "too many pending",
            "es_rejected_execution",
            "local: queue full",
            "producer queue",
            "taskrejected",
            "did not accept task",
        ],
    ),
    (
        FailureMode::RateLimit,
        &[
            "rate limit",
            "ratelimit",
            "rate_limit",
            "too many requests",
            "429",
            "quota",
            "throttl",
            "限流",
            "频率",
            "请求过多",
            "超出配额",
            "rate exceeded",
            "slow down",
        ],
    ),
    (
        FailureMode::PoolExhausted,
        &[
            "pool exhausted",
            "pool timed out",
            "connection is not available",
            "too many connections",
            "too many clients",
            "remaining connection slots",
            "连接池",
            "pool_timeout",
            "timed out waiting for a connection",
            "unable to acquire",
            "could not get a resource from the pool",
            "max_connections",
        ],
    ),
    (
        // Before serialization: "jsonwebtoken" and "JWT" mention JSON but are about auth.
        FailureMode::Auth,
        &[
            "jwt",
            "jsonwebtoken",
            "token is expired",
            "expiredsignature",
            "signature has expired",
            "验签",
            "sign_error",
        ],
    ),
    (
        FailureMode::Serialization,
        &[
            "json",
            "deserializ",
            "serializ",
            "unmarshal",
            "marshal",
            "unexpected token",
            "parse error",
            "invalid character",
            "序列化",
            "反序列化",
            "解析失败",
            "protobuf",
            "malformed",
            "expected value",
            "mismatchedinput",
            "unexpected end of",
            "decode",
            "格式错误",
        ],
    ),
    (
        FailureMode::PaymentDeclined,
        &[
            "declined",
            "insufficient funds",
            "insufficient_funds",
            "余额不足",
            "支付失败",
            "card_declined",
            "payment failed",
            "交易失败",
            "channel error",
            "渠道",
            "do_not_honor",
        ],
    ),
    (
        FailureMode::Constraint,
        &[
            "duplicate key",
            "unique constraint",
            "duplicate entry",
            "e11000",
            "foreign key",
            "唯一约束",
            "主键冲突",
        ],
    ),
    (
        FailureMode::Auth,
        &[
            "unauthorized",
            "unauthenticated",
            "forbidden",
            "401",
            "403",
            "authentication failed",
            "auth failed",
            "access denied",
            "permission denied",
            "invalid token",
            "token expired",
            "jwt expired",
            "invalid api key",
            "invalid_api_key",
            "invalid credentials",
            "认证失败",
            "鉴权",
            "未授权",
            "无权限",
            "令牌",
            "签名",
            "signature",
            "noauth",
            "wrongpass",
            "password authentication",
            "invalid password",
            "login failed",
            "expiredjwt",
            "tokenexpired",
        ],
    ),
    (
        FailureMode::Refused,
        &[
            "refused",
            "econnrefused",
            "拒绝连接",
            "连接被拒绝",
            "拒绝",
            "connectexception",
            "could not connect",
            "can't connect",
            "connect error",
            "connection failure",
        ],
    ),
    (
        FailureMode::Reset,
        &[
            "reset by peer",
            "econnreset",
            "broken pipe",
            "connection reset",
            "连接重置",
            "连接被重置",
            "unexpected eof",
            "connection closed",
            "epipe",
            "socket hang up",
            "连接断开",
            "prematurely closed",
        ],
    ),
    (
        FailureMode::Timeout,
        &[
            "timeout",
            "timed out",
            "deadline exceeded",
            "deadline_exceeded",
            "etimedout",
            "超时",
            "took too long",
            "execution time exceeded",
            "504",
        ],
    ),
    (
        FailureMode::Unavailable,
        &[
            "503",
            "unavailable",
            "no healthy upstream",
            "circuit",
            "熔断",
            "不可用",
            "502",
            "bad gateway",
            "service down",
            "system_error",
            "system error",
            "系统错误",
            "系统繁忙",
            "internal server error",
        ],
    ),
    (
        // Last: a bare "expired" is usually a credential ("Timeout expired" is a timeout).
        FailureMode::Auth,
        &["expired", "已过期"],
    ),
];

/// Reads the evidence from a message (raw or desensitized).
pub fn extract(text: &str) -> Evidence {
    let text = schemas::text::truncate_at_char_boundary(text, 4096);
    let lower = text.to_lowercase();
    Evidence {
        dependency: dependency(&lower),
        mode: mode(&lower),
    }
}

fn mode(lower: &str) -> Option<FailureMode> {
    MODES
        .iter()
        .find(|(_, needles)| needles.iter().any(|n| contains_token(lower, n)))
        .map(|(m, _)| *m)
}

/// `needle` occurs in `hay`, and when the needle is a number, not inside a longer number.
fn contains_token(hay: &str, needle: &str) -> bool {
    if !needle.bytes().all(|b| b.is_ascii_digit()) {
        return hay.contains(needle);
    }
    let hb = hay.as_bytes();
    hay.match_indices(needle).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| hb[j]);
        let after = hb.get(i + needle.len()).copied();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

fn dependency(lower: &str) -> Option<String> {
    for (needle, product) in PORTS {
        let port = &needle[1..];
        for prefix in [":", "port ", "port=", "port: "] {
            for (i, _) in lower.match_indices(prefix) {
                let rest = &lower[i + prefix.len()..];
                if rest.starts_with(port)
                    && !rest
                        .as_bytes()
                        .get(port.len())
                        .is_some_and(|c| c.is_ascii_digit())
                {
                    return Some((*product).to_string());
                }
            }
        }
    }
    for (product, needles) in PRODUCTS {
        if needles.iter().any(|n| lower.contains(n)) {
            return Some((*product).to_string());
        }
    }
    service_name(lower).or_else(|| host_like(lower))
}

/// Any token shaped like a service host: `inventory-svc.prod...`, `bankpay-gw.example.com`,
/// or a dashed name ending in a service word (`logistics-api`, `orders-svc`).
fn host_like(lower: &str) -> Option<String> {
    const SERVICE_WORDS: &[&str] = &[
        "svc", "api", "service", "gw", "gateway", "db", "server", "srv", "cache",
    ];
    lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
        .filter_map(|tok| {
            let tok = tok.trim_matches('.');
            let first = tok.split('.').next()?;
            if !first.contains('-') || first.starts_with('-') {
                return None;
            }
            let last = first.rsplit('-').next()?;
            if tok.contains('.') || SERVICE_WORDS.contains(&last) {
                normalise_service(tok)
            } else {
                None
            }
        })
        .next()
}

/// A service host named after keywords such as `lookup`, `upstream`, `host=`, or in a URL:
/// `inventory-svc.prod.svc.cluster.local:8080` → `inventory-svc`.
fn service_name(lower: &str) -> Option<String> {
    const CUES: &[&str] = &[
        "://",
        "lookup ",
        "host=",
        "host: ",
        "upstream ",
        "upstream: \"",
        "connect to ",
        "resolve ",
        "server ",
        "cluster ",
        "service ",
        "服务",
        "calling ",
        "call ",
        "to host ",
        "resolving ",
        "host ",
    ];
    for cue in CUES {
        for (i, _) in lower.match_indices(cue) {
            let rest = &lower[i + cue.len()..];
            let rest = rest.trim_start_matches(['"', '\'', ' ', '[', '=']);
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
                .unwrap_or(rest.len());
            let host = &rest[..end];
            if let Some(name) = normalise_service(host) {
                return Some(name);
            }
        }
    }
    None
}

fn normalise_service(host: &str) -> Option<String> {
    let first = host.split('.').next()?;
    // Names with a dash or a dot are hosts; plain words after a cue are usually prose.
    if !(host.contains('-') || host.contains('.')) || first.len() < 3 {
        return None;
    }
    if first.bytes().all(|b| b.is_ascii_digit()) || !first.bytes().any(|b| b.is_ascii_alphabetic())
    {
        return None;
    }
    // Drop replica / pod suffixes: orders-db-7d9f8c6b5-x2k4p, orders-db-01 → orders-db
    let parts: Vec<&str> = first
        .split('-')
        .filter(|p| !p.is_empty() && !p.bytes().any(|b| b.is_ascii_digit()))
        .collect();
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_parses_back_from_its_name() {
        for m in FailureMode::ALL {
            assert_eq!(FailureMode::parse(m.as_str()), Some(m));
        }
        let names: std::collections::HashSet<&str> =
            FailureMode::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(names.len(), FailureMode::ALL.len(), "names are distinct");
        assert_eq!(FailureMode::parse("Refused"), None);
        assert_eq!(FailureMode::parse(""), None);
    }

    #[test]
    fn reads_dependency_and_mode() {
        let e = extract("dial tcp 10.0.0.5:5432: connect: connection refused");
        assert_eq!(e.dependency.as_deref(), Some("postgresql"));
        assert_eq!(e.mode, Some(FailureMode::Refused));
        let e = extract("Redis 连接超时");
        assert_eq!(e.dependency.as_deref(), Some("redis"));
        assert_eq!(e.mode, Some(FailureMode::Timeout));
        let e = extract("dial tcp: lookup inventory-svc.prod.svc.cluster.local: no such host");
        assert_eq!(e.dependency.as_deref(), Some("inventory-svc"));
        assert_eq!(e.mode, Some(FailureMode::Dns));
        let e = extract("Deadlock found when trying to get lock; try restarting transaction");
        assert_eq!(e.mode, Some(FailureMode::Lock));
        assert_eq!(extract("hello world"), Evidence::default());
    }

    #[test]
    fn numbers_match_whole() {
        assert_eq!(
            extract("HTTP 429 from api").mode,
            Some(FailureMode::RateLimit)
        );
        assert_eq!(extract("order 14290 failed").mode, None);
    }

    #[test]
    fn agreement() {
        let a = extract("redis: connection refused");
        let b = extract("ECONNREFUSED 127.0.0.1:6379");
        let c = extract("postgres: connection refused");
        assert_eq!(a.agreement(&b), Agreement::Same);
        assert_eq!(a.agreement(&c), Agreement::Conflict);
    }
}

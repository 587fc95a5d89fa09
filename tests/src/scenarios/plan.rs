//! The scenarios: which traffic is sent, which faults the upstream injects and when.
//!
//! A [`FaultPlan`] decides every request's fate deterministically from the request itself
//! (its sequence number, dimensions and scheduled send time), so the simulator and the load
//! generator agree on the ground truth: the scorer can ask "would this rejected request have
//! succeeded?" without guessing.

use std::fmt::Write as _;

/// The simulated service's two routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Route {
    /// `POST /pay` with `{"channel", "amount", "order_id"}` and an `x-tenant` header.
    Pay,
    /// `GET /orders/{id}?region=...`.
    Orders,
}

/// One request as both sides see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    /// Unique per run; seeds every random choice about this request.
    pub seq: u64,
    /// Scheduled send time, ms since the scenario started.
    pub t_ms: u64,
    /// The route.
    pub route: Route,
    /// `/pay`: the payment channel (body field `channel`).
    pub channel: String,
    /// `/pay`: the tenant (header `x-tenant`).
    pub tenant: String,
    /// `/orders`: the region (query parameter `region`).
    pub region: String,
    /// An unbounded id (order number): never a slice.
    pub order_id: u64,
    /// `/pay`: the amount, cents.
    pub amount_cents: u64,
}

/// A conjunction of dimension values; `None` matches anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slice {
    /// Route.
    pub route: Option<Route>,
    /// Payment channel.
    pub channel: Option<&'static str>,
    /// Tenant.
    pub tenant: Option<&'static str>,
    /// Region.
    pub region: Option<&'static str>,
}

impl Slice {
    /// Whether `req` falls in this slice.
    pub fn matches(&self, req: &RequestSpec) -> bool {
        self.route.is_none_or(|r| r == req.route)
            && self.channel.is_none_or(|c| c == req.channel)
            && self.tenant.is_none_or(|t| t == req.tenant)
            && self.region.is_none_or(|r| r == req.region)
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.route {
            parts.push(match r {
                Route::Pay => "POST /pay".to_owned(),
                Route::Orders => "GET /orders".to_owned(),
            });
        }
        if let Some(c) = self.channel {
            parts.push(format!("channel={c}"));
        }
        if let Some(t) = self.tenant {
            parts.push(format!("x-tenant={t}"));
        }
        if let Some(r) = self.region {
            parts.push(format!("region={r}"));
        }
        if parts.is_empty() {
            "all traffic".to_owned()
        } else {
            parts.join(" ∧ ")
        }
    }
}

/// The families of failure messages; each has a few phrasings with fresh variable parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A payment channel's gateway not answering in time.
    ChannelTimeout,
    /// A database refusing connections.
    DbRefused,
    /// A tenant's quota used up (answered inside 200 responses).
    TenantQuota,
    /// The orders service's dependency gone.
    OrdersDown,
    /// The card acquirer failing.
    CardAcquirer,
    /// Unrelated background errors, one phrasing set per index.
    Noise(u8),
}

/// How a matching request fails (or slows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer `status` with `{"code": status, "message": ...}` at once.
    Error {
        /// HTTP status.
        status: u16,
        /// Message family.
        family: Family,
    },
    /// Answer 200 with `{"code": code, "message": ...}`.
    ErrorIn200 {
        /// Non-zero business code.
        code: i64,
        /// Message family.
        family: Family,
    },
    /// Hold a worker `hold_ms`, then answer `status` (a dependency timing out).
    SlowError {
        /// Time a worker is held, ms.
        hold_ms: u64,
        /// HTTP status.
        status: u16,
        /// Message family.
        family: Family,
    },
    /// Succeed, `extra_ms` later than usual (still a success).
    Slow {
        /// Added service time, ms.
        extra_ms: u64,
    },
}

impl FaultKind {
    /// Whether a request hit by this kind fails.
    pub fn fails(&self) -> bool {
        !matches!(self, FaultKind::Slow { .. })
    }

    fn describe(&self) -> String {
        match self {
            FaultKind::Error { status, .. } => format!("{status}"),
            FaultKind::ErrorIn200 { code, .. } => format!("200 with code {code}"),
            FaultKind::SlowError {
                hold_ms, status, ..
            } => format!("{status} after {hold_ms} ms"),
            FaultKind::Slow { extra_ms } => format!("+{extra_ms} ms, succeeds"),
        }
    }
}

/// A fault: a slice, time windows, a kind and the share of matching requests it hits.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Where it hits.
    pub slice: Slice,
    /// `[start, end)` windows, ms since the scenario started.
    pub windows: Vec<(u64, u64)>,
    /// What happens.
    pub kind: FaultKind,
    /// Share of matching requests it hits (decided per request from its sequence number).
    pub share: f64,
    /// An incident the gateway should act on (false for background noise and slow-only
    /// precursors: those count as healthy behaviour).
    pub incident: bool,
}

impl Fault {
    fn active(&self, t_ms: u64) -> bool {
        self.windows.iter().any(|&(s, e)| t_ms >= s && t_ms < e)
    }
}

/// A constant-rate stream of requests on one slice.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// The route.
    pub route: Route,
    /// Requests per second.
    pub rps: u32,
    /// `/pay`: the channel.
    pub channel: &'static str,
    /// `/orders`: the region.
    pub region: &'static str,
}

/// Tenants, chosen per request from its sequence number.
pub const TENANTS: [&str; 4] = ["t1", "t2", "t3", "t4"];

/// One scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short name (`--only`).
    pub name: &'static str,
    /// One line on what it shows.
    pub description: &'static str,
    /// Whether the peak-5xx target applies (slice and route incidents).
    pub peak_target: bool,
    /// Whether this is the whole-route scenario (semantic must be no worse than classic).
    pub whole_route: bool,
    /// Total length, ms.
    pub duration_ms: u64,
    /// The traffic.
    pub streams: Vec<Stream>,
    /// The faults.
    pub faults: Vec<Fault>,
}

/// What the upstream does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Extra worker time for a slow success, ms.
    pub extra_ms: u64,
    /// The failure, if any.
    pub failure: Option<FaultKind>,
}

/// The faults of a scenario, as the simulator applies them.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    faults: Vec<Fault>,
}

impl FaultPlan {
    /// The plan of `faults`.
    pub fn new(faults: Vec<Fault>) -> Self {
        Self { faults }
    }

    /// What happens to `req`: the first fault (in order) that matches its slice, is active at
    /// its send time and draws it wins; slow precursors add up with no failure.
    pub fn outcome(&self, req: &RequestSpec) -> Outcome {
        let mut extra_ms = 0;
        for (i, f) in self.faults.iter().enumerate() {
            if !f.slice.matches(req) || !f.active(req.t_ms) {
                continue;
            }
            if unit(mix(req.seq, 0x5eed + i as u64)) >= f.share {
                continue;
            }
            match f.kind {
                FaultKind::Slow { extra_ms: x } => extra_ms += x,
                kind => {
                    return Outcome {
                        extra_ms,
                        failure: Some(kind),
                    };
                }
            }
        }
        Outcome {
            extra_ms,
            failure: None,
        }
    }

    /// Ground truth: whether the upstream would have answered `req` successfully (capacity
    /// permitting).
    pub fn would_succeed(&self, req: &RequestSpec) -> bool {
        self.outcome(req).failure.is_none()
    }

    /// Bit `i` set when `req` falls in the slice of the `i`-th incident (see [`Self::incidents`]).
    pub fn incident_mask(&self, req: &RequestSpec) -> u8 {
        self.incidents()
            .enumerate()
            .filter(|(_, f)| f.slice.matches(req))
            .fold(0, |m, (i, _)| m | (1 << i))
    }

    /// The incident faults, in order (at most 8).
    pub fn incidents(&self) -> impl Iterator<Item = &Fault> {
        self.faults.iter().filter(|f| f.incident).take(8)
    }
}

impl Scenario {
    /// The fault plan.
    pub fn plan(&self) -> FaultPlan {
        FaultPlan::new(self.faults.clone())
    }

    /// Human description of the faults, for the report.
    pub fn describe_faults(&self) -> String {
        let mut out = String::new();
        for f in &self.faults {
            let windows: Vec<String> = f
                .windows
                .iter()
                .map(|(s, e)| format!("{:.0}–{:.0} s", *s as f64 / 1e3, *e as f64 / 1e3))
                .collect();
            let _ = write!(
                out,
                "{}{}: {} ({} % of it) at {}{}",
                if out.is_empty() { "" } else { "; " },
                f.slice.describe(),
                f.kind.describe(),
                // 0.5 % must not read "0 %": whole numbers when whole, else one decimal.
                if (f.share * 100.0).fract().abs() < 1e-9 {
                    format!("{:.0}", f.share * 100.0)
                } else {
                    format!("{:.1}", f.share * 100.0)
                },
                windows.join(", "),
                if f.incident { "" } else { " [not an incident]" }
            );
        }
        out
    }
}

fn pay_streams() -> Vec<Stream> {
    ["alipay", "wechat", "card", "unionpay"]
        .into_iter()
        .map(|channel| Stream {
            route: Route::Pay,
            rps: 30,
            channel,
            region: "",
        })
        .collect()
}

fn order_streams() -> Vec<Stream> {
    ["cn-north", "cn-south", "eu-west"]
        .into_iter()
        .map(|region| Stream {
            route: Route::Orders,
            rps: 20,
            channel: "",
            region,
        })
        .collect()
}

fn traffic() -> Vec<Stream> {
    let mut s = pay_streams();
    s.extend(order_streams());
    s
}

fn s(seconds: f64, scale: f64) -> u64 {
    (seconds * scale * 1000.0).round() as u64
}

/// Every scenario; `scale` stretches or shrinks every time (1.0 for the real run, less for a
/// smoke run).
pub fn all(scale: f64) -> Vec<Scenario> {
    let pay = |channel| Slice {
        route: Some(Route::Pay),
        channel: Some(channel),
        ..Slice::default()
    };
    let noise: Vec<Fault> = (0..6)
        .map(|i| Fault {
            slice: Slice::default(),
            windows: vec![(0, s(45.0, scale))],
            kind: FaultKind::Error {
                status: 500,
                family: Family::Noise(i),
            },
            share: 0.005,
            incident: false,
        })
        .collect();
    vec![
        Scenario {
            name: "slow-slice",
            description: "alipay payments get slow, then time out after 1.8 s, filling the \
                          shared worker pool",
            peak_target: true,
            whole_route: false,
            duration_ms: s(67.0, scale),
            streams: traffic(),
            faults: vec![
                Fault {
                    slice: pay("alipay"),
                    windows: vec![(s(15.0, scale), s(20.0, scale))],
                    kind: FaultKind::Slow { extra_ms: 900 },
                    share: 1.0,
                    incident: false,
                },
                Fault {
                    slice: pay("alipay"),
                    windows: vec![(s(20.0, scale), s(45.0, scale))],
                    kind: FaultKind::SlowError {
                        hold_ms: 1800,
                        status: 504,
                        family: Family::ChannelTimeout,
                    },
                    share: 1.0,
                    incident: true,
                },
            ],
        },
        Scenario {
            name: "two-slices",
            description: "alipay's database refuses connections (500) while tenant t3's quota \
                          runs out (code 4029 in 200s), overlapping",
            peak_target: true,
            whole_route: false,
            duration_ms: s(70.0, scale),
            streams: traffic(),
            faults: vec![
                Fault {
                    slice: pay("alipay"),
                    windows: vec![(s(15.0, scale), s(40.0, scale))],
                    kind: FaultKind::Error {
                        status: 500,
                        family: Family::DbRefused,
                    },
                    share: 1.0,
                    incident: true,
                },
                Fault {
                    slice: Slice {
                        route: Some(Route::Pay),
                        tenant: Some("t3"),
                        ..Slice::default()
                    },
                    windows: vec![(s(27.0, scale), s(50.0, scale))],
                    kind: FaultKind::ErrorIn200 {
                        code: 4029,
                        family: Family::TenantQuota,
                    },
                    share: 1.0,
                    incident: true,
                },
            ],
        },
        Scenario {
            name: "noise",
            description: "six unrelated errors at 0.5 % each (3 % in all) on every route, no \
                          incident",
            peak_target: false,
            whole_route: false,
            duration_ms: s(45.0, scale),
            streams: traffic(),
            faults: noise,
        },
        Scenario {
            name: "route-down",
            description: "every GET /orders fails (503): its database is gone",
            peak_target: true,
            whole_route: true,
            duration_ms: s(62.0, scale),
            streams: traffic(),
            faults: vec![Fault {
                slice: Slice {
                    route: Some(Route::Orders),
                    ..Slice::default()
                },
                windows: vec![(s(15.0, scale), s(40.0, scale))],
                kind: FaultKind::Error {
                    status: 503,
                    family: Family::OrdersDown,
                },
                share: 1.0,
                incident: true,
            }],
        },
        Scenario {
            name: "flapping",
            description: "card payments fail (502) for 10 s, recover for 10 s, three times",
            peak_target: true,
            whole_route: false,
            duration_ms: s(75.0, scale),
            streams: traffic(),
            faults: vec![Fault {
                slice: pay("card"),
                windows: vec![
                    (s(15.0, scale), s(25.0, scale)),
                    (s(35.0, scale), s(45.0, scale)),
                    (s(55.0, scale), s(65.0, scale)),
                ],
                kind: FaultKind::Error {
                    status: 502,
                    family: Family::CardAcquirer,
                },
                share: 1.0,
                incident: true,
            }],
        },
    ]
}

/// The request of stream `stream`'s `i`-th tick.
pub fn request(stream_index: usize, stream: &Stream, i: u64, t_ms: u64) -> RequestSpec {
    let seq = ((stream_index as u64) << 32) | i;
    let h = mix(seq, 0x7e4a);
    RequestSpec {
        seq,
        t_ms,
        route: stream.route,
        channel: stream.channel.to_owned(),
        tenant: if stream.route == Route::Pay {
            TENANTS[(h % TENANTS.len() as u64) as usize].to_owned()
        } else {
            String::new()
        },
        region: stream.region.to_owned(),
        order_id: 10_000_000 + (h >> 8) % 90_000_000,
        amount_cents: 100 + (h >> 40) % 500_000,
    }
}

/// SplitMix64 of `seq` and `salt`: the deterministic randomness of the bench.
pub fn mix(seq: u64, salt: u64) -> u64 {
    let mut z = seq
        .wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A failure message of `family` for `req`, phrased as one of the family's real-world
/// variants with fresh ids, amounts, times and hosts. `nonce` varies the variable parts.
pub fn message(family: Family, req: &RequestSpec, nonce: u64) -> String {
    let h = mix(req.seq, nonce);
    let pick = (h % 4) as u8;
    let a = (h >> 8) % 250 + 2;
    let b = (h >> 16) % 250 + 2;
    let ms = 1500 + (h >> 24) % 900;
    let hex = format!("{:012x}", (h >> 4) & 0xffff_ffff_ffff);
    let clock = clock(req.t_ms + (h >> 50) % 997);
    let order = req.order_id;
    let yuan = format!("{}.{:02}", req.amount_cents / 100, req.amount_cents % 100);
    let n = (h >> 32) % 9 + 1;
    match family {
        Family::ChannelTimeout => match pick {
            0 => format!("支付渠道超时: 订单 {order} 请求 {ms}ms 未响应"),
            1 => format!(
                "alipay gateway timeout: POST https://openapi.alipay.com/gateway.do \
                 out_trade_no={order} after {ms}ms"
            ),
            2 => format!(
                "upstream request timeout: channel=alipay host=10.8.{a}.{b}:8443 \
                 elapsed={ms}ms req_id={hex}"
            ),
            _ => format!(
                "java.net.SocketTimeoutException: Read timed out (pay-channel-{n}.internal:8443, \
                 order {order}, at {clock})"
            ),
        },
        Family::DbRefused => match pick {
            0 => format!("dial tcp 10.0.3.{a}:5432: connect: connection refused (order {order})"),
            1 => format!(
                "pq: could not connect to server: Connection refused. Is the server running on \
                 host \"10.0.3.{a}\" and accepting TCP/IP connections on port 5432?"
            ),
            2 => {
                format!("数据库连接被拒绝: 10.0.3.{a}:5432 (订单 {order}, 金额 {yuan} 元, {clock})")
            }
            _ => format!(
                "org.postgresql.util.PSQLException: Connection to 10.0.3.{a}:5432 refused. \
                 Check that the hostname and port are correct (txn {hex})"
            ),
        },
        Family::TenantQuota => match pick {
            0 => format!(
                "账户额度已用尽: 租户 {} 请求 {hex} 金额 {yuan} 元被拒绝",
                req.tenant
            ),
            1 => format!(
                "quota exceeded for tenant {}: {}/{} payments in the window ending {clock}",
                req.tenant,
                5000 + a,
                5000
            ),
            2 => format!(
                "RateLimitExceeded: tenant={} bucket=payments-{n} retry after {ms}ms",
                req.tenant
            ),
            _ => format!(
                "tenant {} over its daily limit ({yuan} requested, order {order})",
                req.tenant
            ),
        },
        Family::OrdersDown => match pick {
            0 => format!(
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 connection failure, transport failure reason: delayed connect error: 111 \
                 (orders-db-{n}.svc:3306)"
            ),
            1 => format!("订单服务不可用: 无法连接 10.2.{a}.{b}:3306 (订单 {order})"),
            2 => format!(
                "com.mysql.cj.jdbc.exceptions.CommunicationsException: Communications link \
                 failure to orders-db-{n}:3306 after {ms} ms"
            ),
            _ => format!(
                "Error 2003 (HY000): Can't connect to MySQL server on '10.2.{a}.{b}:3306' (111) \
                 at {clock}"
            ),
        },
        Family::CardAcquirer => match pick {
            0 => format!(
                "card processor 10.4.{a}.{b}:9443 returned 502 Bad Gateway for auth {hex} at \
                 {clock}"
            ),
            1 => format!(
                "银行卡通道异常: 授权请求 {order} 失败, 错误码 E{}",
                5000 + a
            ),
            2 => format!(
                "HTTP 502 from card-acquirer-{n}.visa.internal: upstream reset after {ms}ms"
            ),
            _ => format!(
                "acquirer gateway unavailable: ISO8583 authorization {hex} for {yuan} CNY not \
                 delivered"
            ),
        },
        Family::Noise(i) => match (i % 6, pick % 2) {
            (0, 0) => format!(
                "NullPointerException at com.shop.pay.Handler.apply(Handler.java:{}) for request \
                 {hex}",
                100 + a
            ),
            (0, _) => format!(
                "java.lang.NullPointerException: Cannot invoke \"Order.getItems()\" because \
                 \"order\" is null (order {order})"
            ),
            (1, 0) => format!(
                "pq: deadlock detected on relation orders_{n} (pid {})",
                3000 + b
            ),
            (1, _) => format!("死锁: 事务 {hex} 等待锁超时, 已回滚"),
            (2, 0) => format!(
                "redis: connection pool timeout after {ms}ms (pool size 32, key session:{hex})"
            ),
            (2, _) => format!("ERR max number of clients reached (redis-{n}.cache:6379)"),
            (3, 0) => format!("invalid JSON at byte {}: expected ',' or '}}'", a + b),
            (3, _) => format!("serde_json: EOF while parsing an object at line 1 column {a}"),
            (4, 0) => format!("库存服务返回异常: SKU {order} 库存锁定失败"),
            (4, _) => format!("inventory reservation {hex} conflicted with a concurrent update"),
            (_, 0) => format!(
                "TLS handshake with fraud-check-{n}.internal:443 failed: certificate has expired \
                 (at {clock})"
            ),
            _ => format!("x509: certificate signed by unknown authority (risk-api-{n}:443)"),
        },
    }
}

/// `HH:MM:SS.mmm` of a fixed day plus `t_ms`.
fn clock(t_ms: u64) -> String {
    let t = 3 * 3_600_000 + 12 * 60_000 + t_ms;
    format!(
        "2026-11-29T{:02}:{:02}:{:02}.{:03}Z",
        t / 3_600_000 % 24,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(channel: &str, t_ms: u64, seq: u64) -> RequestSpec {
        RequestSpec {
            seq,
            t_ms,
            route: Route::Pay,
            channel: channel.into(),
            tenant: "t1".into(),
            region: String::new(),
            order_id: 1,
            amount_cents: 100,
        }
    }

    #[test]
    fn a_slice_fault_hits_its_slice_only_inside_its_window() {
        let plan = all(1.0).remove(0).plan();
        assert!(plan.would_succeed(&req("alipay", 14_999, 1)));
        assert!(plan.would_succeed(&req("alipay", 15_000, 1)), "slow only");
        assert_eq!(plan.outcome(&req("alipay", 15_000, 1)).extra_ms, 900);
        assert!(!plan.would_succeed(&req("alipay", 20_000, 1)));
        assert!(plan.would_succeed(&req("wechat", 20_000, 1)));
        assert!(plan.would_succeed(&req("alipay", 45_000, 1)));
        assert_eq!(plan.incident_mask(&req("alipay", 0, 1)), 1);
        assert_eq!(plan.incident_mask(&req("wechat", 0, 1)), 0);
    }

    #[test]
    fn noise_hits_about_its_share() {
        let plan = all(1.0)
            .into_iter()
            .find(|s| s.name == "noise")
            .unwrap()
            .plan();
        let failed = (0..100_000)
            .filter(|&i| !plan.would_succeed(&req("card", 1_000, i)))
            .count();
        assert!((2_500..3_500).contains(&failed), "{failed}");
    }

    #[test]
    fn messages_vary_between_requests() {
        let a = message(Family::ChannelTimeout, &req("alipay", 0, 0), 1);
        let distinct: std::collections::HashSet<String> = (0..40)
            .map(|i| message(Family::ChannelTimeout, &req("alipay", i * 10, i), 1))
            .collect();
        assert!(distinct.len() > 30, "{a}");
        assert!(distinct.iter().any(|m| m.contains("支付渠道超时")));
    }
}

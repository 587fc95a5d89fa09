//! Routing: which route a request belongs to, and which upstream it goes to.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::uri::{Authority, Scheme};

use crate::breaker::Breaker;
use crate::config::RouteConfig;

/// Checks an upstream URL: `http://host:port` with an optional path prefix.
pub fn parse_upstream(url: &str) -> Result<Upstream, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!(
            "{url:?}: only http:// upstreams are supported (terminate TLS in front)"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if uri.query().is_some() {
        return Err(format!("{url:?}: an upstream URL must not carry a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream {
        authority,
        base_path,
        unhealthy_until_ms: AtomicU64::new(0),
        breaker: None,
    })
}

/// The named segments of a path pattern (`/users/{id}` → `["id"]`).
pub fn pattern_params(pattern: &str) -> Vec<String> {
    pattern
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_owned)
        .collect()
}

/// One upstream host of a route.
#[derive(Debug)]
pub struct Upstream {
    /// `host:port`.
    pub authority: Authority,
    /// Path prefix prepended to the request path (no trailing slash).
    pub base_path: String,
    unhealthy_until_ms: AtomicU64,
    /// The per-upstream classic breaker, when configured.
    pub breaker: Option<Mutex<Breaker>>,
}

impl Upstream {
    /// Marks the host as failing at the transport level until `until_ms`.
    pub fn mark_unhealthy(&self, until_ms: u64) {
        self.unhealthy_until_ms
            .fetch_max(until_ms, Ordering::Relaxed);
    }

    /// Whether the host is in its back-off period.
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        self.unhealthy_until_ms.load(Ordering::Relaxed) <= now_ms
    }
}

/// A route's upstreams, chosen round robin, skipping hosts in back-off.
#[derive(Debug)]
pub struct UpstreamPool {
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
}

impl UpstreamPool {
    /// Builds the pool (URLs were validated with the config).
    pub fn new(upstreams: Vec<Upstream>) -> Self {
        Self {
            upstreams,
            next: AtomicUsize::new(0),
        }
    }

    /// The next healthy upstream; when all are in back-off, the next one anyway (failing
    /// fast against a dead host beats refusing traffic that might succeed).
    pub fn pick(&self, now_ms: u64) -> Option<&Upstream> {
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .find(|u| u.is_healthy(now_ms))
            .or_else(|| self.upstreams.get(start % n.max(1)))
    }

    /// All upstreams.
    pub fn iter(&self) -> impl Iterator<Item = &Upstream> {
        self.upstreams.iter()
    }
}

/// How a route matches requests.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    host: Option<String>,
    path: PathMatch,
    methods: Vec<http::Method>,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Prefix(String),
    /// Segments; `None` is a named parameter.
    Pattern(Vec<(Option<String>, Option<String>)>),
}

impl RouteMatcher {
    /// From validated config.
    pub fn new(route: &RouteConfig) -> Self {
        let m = &route.matcher;
        let path = match &m.path_pattern {
            Some(p) => PathMatch::Pattern(
                p.split('/')
                    .skip(1)
                    .map(
                        |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => (None, Some(name.to_owned())),
                            None => (Some(seg.to_owned()), None),
                        },
                    )
                    .collect(),
            ),
            None => PathMatch::Prefix(m.path_prefix.clone().unwrap_or_else(|| "/".to_owned())),
        };
        Self {
            host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
            path,
            methods: m
                .methods
                .iter()
                .filter_map(|s| http::Method::from_bytes(s.as_bytes()).ok())
                .collect(),
        }
    }

    /// Whether the request matches; on a match, the named path parameters.
    pub fn matches(
        &self,
        method: &http::Method,
        host: Option<&str>,
        path: &str,
    ) -> Option<Vec<(String, String)>> {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return None;
        }
        if let Some(want) = &self.host {
            let got = host.map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name));
            if !got.is_some_and(|g| g.eq_ignore_ascii_case(want)) {
                return None;
            }
        }
        match &self.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()).then(Vec::new),
            PathMatch::Pattern(segments) => {
                let parts: Vec<&str> = path.split('/').skip(1).collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut params = Vec::new();
                for (part, (literal, name)) in parts.iter().zip(segments) {
                    match (literal, name) {
                        (Some(l), _) if l != part => return None,
                        (None, Some(n)) if !part.is_empty() => {
                            params.push((n.clone(), (*part).to_owned()))
                        }
                        (None, _) => return None,
                        _ => {}
                    }
                }
                Some(params)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml_match: &str) -> RouteConfig {
        let yaml = format!(
            "routes:\n  - name: r\n    upstreams: [\"http://127.0.0.1:1\"]\n    match: {yaml_match}\n"
        );
        crate::config::Config::parse(&yaml)
            .unwrap()
            .routes
            .remove(0)
    }

    #[test]
    fn matches_by_prefix_host_method_and_pattern() {
        let get = http::Method::GET;
        let post = http::Method::POST;
        let prefix = RouteMatcher::new(&route(
            "{path_prefix: /api/, methods: [GET], host: example.com}",
        ));
        assert!(
            prefix
                .matches(&get, Some("example.com:8080"), "/api/x")
                .is_some()
        );
        assert!(
            prefix
                .matches(&post, Some("example.com"), "/api/x")
                .is_none()
        );
        assert!(prefix.matches(&get, Some("other.com"), "/api/x").is_none());
        assert!(prefix.matches(&get, Some("example.com"), "/apix").is_none());

        let pattern = RouteMatcher::new(&route("{path_pattern: \"/users/{id}/orders\"}"));
        assert_eq!(
            pattern.matches(&get, None, "/users/42/orders"),
            Some(vec![("id".into(), "42".into())])
        );
        assert!(pattern.matches(&get, None, "/users//orders").is_none());
        assert!(pattern.matches(&get, None, "/users/42").is_none());
        assert!(pattern.matches(&get, None, "/users/42/items").is_none());
    }

    #[test]
    fn round_robin_skips_hosts_in_back_off() {
        let pool = UpstreamPool::new(vec![
            parse_upstream("http://127.0.0.1:1").unwrap(),
            parse_upstream("http://127.0.0.1:2").unwrap(),
        ]);
        let picks: Vec<_> = (0..4)
            .map(|_| pool.pick(0).unwrap().authority.port_u16())
            .collect();
        assert_eq!(picks, [Some(1), Some(2), Some(1), Some(2)]);
        pool.iter().next().unwrap().mark_unhealthy(1_000);
        let picks: Vec<_> = (0..3)
            .map(|_| pool.pick(500).unwrap().authority.port_u16())
            .collect();
        assert_eq!(picks, [Some(2), Some(2), Some(2)]);
        assert_eq!(pool.pick(1_000).map(|u| u.is_healthy(1_000)), Some(true));
    }

    #[test]
    fn refuses_bad_upstream_urls() {
        for bad in ["ftp://x:1", "127.0.0.1:80", "http://x/?a=1", "not a url"] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_upstream("http://h:1/base/").unwrap().base_path,
            "/base"
        );
    }
}

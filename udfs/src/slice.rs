//! Slice learning: which slice of traffic does a failure cluster hit?
//!
//! For one cluster in one window we have its error events (each with the request's
//! attributes) and a uniform sample of *all* requests with the same attributes, plus exact
//! per-route request counts. Per route, the learner looks for the smallest conjunction of
//! attribute values that covers at least [`SliceLearner::coverage`] of the cluster's errors
//! and has (nearly) the highest in-slice error rate. A cluster spread over several routes gets
//! a union of per-route conjunctions; one that fills a whole route gets the bare route.
//!
//! Attributes are the request dimensions (`header:…`, `query:…`, `body:…`, `path:…`,
//! `claim:…`) plus `method` and `upstream`. A key with more distinct values than
//! [`SliceLearner::max_distinct_values`] on a route (user ids, order numbers) is unbounded and
//! never becomes part of a slice.
//!
//! # How good is the traffic estimate?
//!
//! A conjunction's traffic is `route requests × share of sampled requests that match`. With
//! `n` samples on the route and a true share `p`, the share's relative standard error is
//! `sqrt((1 - p) / (n p))`. At the plan's sampling rate of 0.05 and 100 requests/s on a route,
//! a 10 s window holds about 50 samples; for a slice carrying 20 % of the route that is a
//! relative error of about 28 %, and for a 5 % slice about 60 %. Low volume therefore
//! *widens* the estimate rather than biasing it, and two guards keep it usable: the estimate is
//! never below the errors observed in the slice (every error was a request, so the in-slice
//! error rate stays <= 1), and a conjunction only replaces a smaller one when it raises the
//! error rate by more than [`SliceLearner::min_gain`] — noise alone rarely does that. Callers
//! should also refuse to act on clusters too small to judge (the SQL's minimum error count).

use std::collections::{BTreeMap, HashMap, HashSet};

use schemas::{Conjunction, DimensionKey, DimensionMatch, Dimensions, OVERFLOW_VALUE, Slice};

/// One request as the learner sees it: route, attributes, and its sampling weight.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedRequest {
    /// The configured route name.
    pub route: String,
    /// Attribute values keyed by [`DimensionKey`] string form, `method` and `upstream` included.
    pub attributes: Dimensions,
    /// How many requests this one stands for (1 / sampling rate).
    pub weight: f64,
}

impl WeightedRequest {
    /// Builds a request from an event's fields; `method` and `upstream` join the dimensions.
    pub fn new(
        route: &str,
        method: &str,
        upstream: &str,
        dimensions: &Dimensions,
        sample_rate: f64,
    ) -> Self {
        let mut attributes = dimensions.clone();
        attributes.insert("method".to_owned(), method.to_owned());
        attributes.insert("upstream".to_owned(), upstream.to_owned());
        let weight = if sample_rate.is_finite() && sample_rate > 0.0 {
            1.0 / sample_rate.min(1.0)
        } else {
            1.0
        };
        Self {
            route: route.to_owned(),
            attributes,
            weight,
        }
    }
}

/// What the learner found for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedSlice {
    /// The slice: one conjunction per route that matters.
    pub slice: Slice,
    /// Share of the cluster's (weighted) errors inside the slice.
    pub coverage: f64,
    /// Weighted errors inside the slice.
    pub errors: f64,
    /// Estimated requests inside the slice over the same window.
    pub traffic: f64,
}

impl LearnedSlice {
    /// Errors per request inside the slice, in `[0, 1]`.
    pub fn error_rate(&self) -> f64 {
        if self.traffic > 0.0 {
            (self.errors / self.traffic).min(1.0)
        } else {
            0.0
        }
    }
}

/// Whether `request` falls in `slice`: some conjunction on its route whose tests all hold
/// (a `route` test compares the route name; other keys the request's attributes).
pub fn matches(slice: &Slice, request: &WeightedRequest) -> bool {
    slice.any.iter().any(|c| {
        c.route == request.route
            && c.all.iter().all(|m| match &m.key {
                DimensionKey::Route => m.value == request.route,
                key => request.attributes.get(&key.to_string()) == Some(&m.value),
            })
    })
}

/// Tunables of the search; [`Default`] holds the plan's values.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceLearner {
    /// Share of the cluster's errors the slice must cover (default 0.9).
    pub coverage: f64,
    /// Most attribute tests in one conjunction (default 3).
    pub max_atoms: usize,
    /// A key with more distinct values than this on a route is unbounded (default 32).
    pub max_distinct_values: usize,
    /// Relative error-rate gain a larger conjunction must bring over a smaller one (default 0.1).
    pub min_gain: f64,
}

impl Default for SliceLearner {
    fn default() -> Self {
        Self {
            coverage: 0.9,
            max_atoms: 3,
            max_distinct_values: 32,
            min_gain: 0.1,
        }
    }
}

/// Atoms considered per route, at most; each is a key with one value covering >= 90 % of
/// errors, so this only binds with very many configured dimensions.
const MAX_ATOMS_CONSIDERED: usize = 12;

impl SliceLearner {
    /// Learns the slice of `errors` (one cluster's error events in a window) against `traffic`
    /// (the uniform request sample of the same window) and `route_requests` (exact per-route
    /// request counts, when known). Returns `None` when there are no errors.
    pub fn learn(
        &self,
        errors: &[WeightedRequest],
        traffic: &[WeightedRequest],
        route_requests: &HashMap<String, f64>,
    ) -> Option<LearnedSlice> {
        let total: f64 = errors.iter().map(|e| e.weight).sum();
        if errors.is_empty() || total <= 0.0 {
            return None;
        }
        let mut by_route: BTreeMap<&str, Vec<&WeightedRequest>> = BTreeMap::new();
        for e in errors {
            by_route.entry(e.route.as_str()).or_default().push(e);
        }
        let mut routes: Vec<(&str, Vec<&WeightedRequest>, f64)> = by_route
            .into_iter()
            .map(|(r, es)| {
                let w = es.iter().map(|e| e.weight).sum();
                (r, es, w)
            })
            .collect();
        // Heaviest routes first; stop once the kept routes cover enough of the cluster.
        routes.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(b.0)));

        let mut any = Vec::new();
        let (mut covered, mut slice_errors, mut slice_traffic, mut route_share) =
            (0.0, 0.0, 0.0, 0.0);
        for (route, route_errors, route_weight) in routes {
            if route_share >= self.coverage {
                break;
            }
            route_share += route_weight / total;
            let samples: Vec<&WeightedRequest> =
                traffic.iter().filter(|t| t.route == route).collect();
            let requests = route_requests.get(route).copied();
            let best = self.best_conjunction(&route_errors, route_weight, &samples, requests);
            covered += best.errors;
            slice_errors += best.errors;
            slice_traffic += best.traffic;
            any.push(Conjunction {
                route: route.to_owned(),
                all: best.atoms,
            });
        }
        Some(LearnedSlice {
            slice: Slice { any },
            coverage: covered / total,
            errors: slice_errors,
            traffic: slice_traffic,
        })
    }

    fn best_conjunction(
        &self,
        errors: &[&WeightedRequest],
        route_errors: f64,
        samples: &[&WeightedRequest],
        route_requests: Option<f64>,
    ) -> Candidate {
        let sample_weight: f64 = samples.iter().map(|s| s.weight).sum();
        let requests = route_requests.unwrap_or(sample_weight).max(route_errors);
        let atoms = self.atoms(errors, route_errors, samples);

        let evaluate = |subset: &[&(String, String)]| -> Option<Candidate> {
            let matches =
                |r: &WeightedRequest| subset.iter().all(|(k, v)| r.attributes.get(k) == Some(v));
            let in_slice: f64 = errors.iter().filter(|e| matches(e)).map(|e| e.weight).sum();
            if in_slice < self.coverage * route_errors - 1e-9 {
                return None;
            }
            let share = if subset.is_empty() || sample_weight <= 0.0 {
                1.0
            } else {
                samples
                    .iter()
                    .filter(|s| matches(s))
                    .map(|s| s.weight)
                    .sum::<f64>()
                    / sample_weight
            };
            let traffic = (requests * share).max(in_slice);
            let atoms = subset
                .iter()
                .filter_map(|(k, v)| {
                    Some(DimensionMatch {
                        key: k.parse().ok()?,
                        value: v.clone(),
                    })
                })
                .collect();
            Some(Candidate {
                atoms,
                errors: in_slice,
                traffic,
            })
        };

        let mut candidates = Vec::new();
        for size in 0..=self.max_atoms.min(atoms.len()) {
            for subset in combinations(&atoms, size) {
                candidates.extend(evaluate(&subset));
            }
        }
        let best_rate = candidates.iter().map(Candidate::rate).fold(0.0, f64::max);
        // The smallest conjunction within `min_gain` of the best rate; ties by rate.
        candidates
            .into_iter()
            .filter(|c| c.rate() >= best_rate * (1.0 - self.min_gain))
            .min_by(|a, b| {
                a.atoms
                    .len()
                    .cmp(&b.atoms.len())
                    .then(b.rate().total_cmp(&a.rate()))
            })
            .unwrap_or(Candidate {
                atoms: Vec::new(),
                errors: route_errors,
                traffic: requests,
            })
    }

    /// Attribute values that, on their own, cover enough of the route's errors, on bounded keys.
    fn atoms(
        &self,
        errors: &[&WeightedRequest],
        route_errors: f64,
        samples: &[&WeightedRequest],
    ) -> Vec<(String, String)> {
        let mut distinct: HashMap<&str, HashSet<&str>> = HashMap::new();
        let mut weight_by_value: HashMap<(&str, &str), f64> = HashMap::new();
        for r in samples.iter().chain(errors) {
            for (k, v) in &r.attributes {
                distinct.entry(k).or_default().insert(v);
            }
        }
        for e in errors {
            for (k, v) in &e.attributes {
                *weight_by_value.entry((k, v)).or_default() += e.weight;
            }
        }
        let mut atoms: Vec<(String, String)> = weight_by_value
            .into_iter()
            .filter(|((k, _), w)| {
                *w >= self.coverage * route_errors - 1e-9
                    && distinct.get(k).is_some_and(|d| {
                        d.len() <= self.max_distinct_values && !d.contains(OVERFLOW_VALUE)
                    })
                    && k.parse::<DimensionKey>()
                        .is_ok_and(|k| k != DimensionKey::Route)
            })
            .map(|((k, v), _)| (k.to_owned(), v.to_owned()))
            .collect();
        atoms.sort();
        atoms.truncate(MAX_ATOMS_CONSIDERED);
        atoms
    }
}

#[derive(Debug)]
struct Candidate {
    atoms: Vec<DimensionMatch>,
    errors: f64,
    traffic: f64,
}

impl Candidate {
    fn rate(&self) -> f64 {
        if self.traffic > 0.0 {
            self.errors / self.traffic
        } else {
            0.0
        }
    }
}

/// All subsets of `items` with exactly `k` elements, keys distinct by construction (each key
/// contributes at most one atom because an atom covers more than half of the errors).
fn combinations<T>(items: &[T], k: usize) -> Vec<Vec<&T>> {
    fn go<'a, T>(
        items: &'a [T],
        k: usize,
        start: usize,
        cur: &mut Vec<&'a T>,
        out: &mut Vec<Vec<&'a T>>,
    ) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..items.len() {
            cur.push(&items[i]);
            go(items, k, i + 1, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    go(items, k, 0, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(route: &str, attrs: &[(&str, &str)], weight: f64) -> WeightedRequest {
        WeightedRequest {
            route: route.to_owned(),
            attributes: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            weight,
        }
    }

    /// `n` copies of one request.
    fn many(n: usize, route: &str, attrs: &[(&str, &str)], weight: f64) -> Vec<WeightedRequest> {
        (0..n).map(|_| req(route, attrs, weight)).collect()
    }

    fn atoms(s: &LearnedSlice) -> Vec<(String, Vec<String>)> {
        s.slice
            .any
            .iter()
            .map(|c| {
                (
                    c.route.clone(),
                    c.all
                        .iter()
                        .map(|m| format!("{}={}", m.key, m.value))
                        .collect(),
                )
            })
            .collect()
    }

    /// Payments traffic: three channels, all POST.
    fn payments_traffic() -> Vec<WeightedRequest> {
        let mut t = Vec::new();
        for ch in ["alipay", "wechat", "card"] {
            t.extend(many(
                20,
                "payments",
                &[("method", "POST"), ("body:channel", ch)],
                20.0,
            ));
        }
        t
    }

    #[test]
    fn finds_the_failing_channel_and_leaves_redundant_tests_out() {
        let errors = many(
            60,
            "payments",
            &[("method", "POST"), ("body:channel", "alipay")],
            1.0,
        );
        let routes = HashMap::from([("payments".to_owned(), 1200.0)]);
        let s = SliceLearner::default()
            .learn(&errors, &payments_traffic(), &routes)
            .unwrap();
        assert_eq!(
            atoms(&s),
            vec![(
                "payments".to_owned(),
                vec!["body:channel=alipay".to_owned()]
            )]
        );
        assert_eq!(s.coverage, 1.0);
        assert!(
            (s.traffic - 400.0).abs() < 1e-6,
            "a third of 1200 requests, got {}",
            s.traffic
        );
        assert!((s.error_rate() - 0.15).abs() < 1e-6);
    }

    #[test]
    fn a_learned_slice_matches_its_requests_and_no_others() {
        let errors = many(
            60,
            "payments",
            &[("method", "POST"), ("body:channel", "alipay")],
            1.0,
        );
        let routes = HashMap::from([("payments".to_owned(), 1200.0)]);
        let s = SliceLearner::default()
            .learn(&errors, &payments_traffic(), &routes)
            .unwrap();
        let traffic = payments_traffic();
        let inside: Vec<_> = traffic.iter().filter(|t| matches(&s.slice, t)).collect();
        assert_eq!(inside.len(), 20);
        assert!(
            inside
                .iter()
                .all(|t| t.attributes["body:channel"] == "alipay")
        );
        let other_route = req("orders", &[("body:channel", "alipay")], 1.0);
        assert!(!matches(&s.slice, &other_route));
    }

    #[test]
    fn spread_errors_give_the_whole_route() {
        let mut errors = Vec::new();
        for ch in ["alipay", "wechat", "card"] {
            errors.extend(many(
                20,
                "payments",
                &[("method", "POST"), ("body:channel", ch)],
                1.0,
            ));
        }
        let s = SliceLearner::default()
            .learn(&errors, &payments_traffic(), &HashMap::new())
            .unwrap();
        assert_eq!(atoms(&s), vec![("payments".to_owned(), vec![])]);
    }

    #[test]
    fn a_key_the_enforcer_capped_never_enters_a_slice() {
        // Order ids past the enforcer's cap all read `<other>`: the errors "concentrate" on
        // it, but it stands for an unbounded set of ids, so the slice is the route.
        let mut errors = many(45, "orders", &[("path:id", OVERFLOW_VALUE)], 1.0);
        errors.extend(many(3, "orders", &[("path:id", "17")], 1.0));
        let mut traffic = many(50, "orders", &[("path:id", OVERFLOW_VALUE)], 10.0);
        traffic.extend(many(50, "orders", &[("path:id", "17")], 10.0));
        let s = SliceLearner::default()
            .learn(&errors, &traffic, &HashMap::new())
            .unwrap();
        assert_eq!(atoms(&s), vec![("orders".to_owned(), vec![])]);
    }

    #[test]
    fn needs_two_tests_when_one_is_not_enough() {
        let mut traffic = Vec::new();
        for tenant in ["a", "b"] {
            for ch in ["x", "y"] {
                traffic.extend(many(
                    25,
                    "orders",
                    &[("header:x-tenant", tenant), ("body:channel", ch)],
                    10.0,
                ));
            }
        }
        let errors = many(
            50,
            "orders",
            &[("header:x-tenant", "a"), ("body:channel", "x")],
            1.0,
        );
        let s = SliceLearner::default()
            .learn(&errors, &traffic, &HashMap::new())
            .unwrap();
        assert_eq!(
            atoms(&s),
            vec![(
                "orders".to_owned(),
                vec!["body:channel=x".to_owned(), "header:x-tenant=a".to_owned()]
            )]
        );
    }

    #[test]
    fn unbounded_ids_never_become_a_slice() {
        // Every sampled request has its own user id; all errors happen to carry one id.
        let traffic: Vec<_> = (0..100)
            .map(|i| {
                req(
                    "profile",
                    &[("query:user_id", &i.to_string()), ("method", "GET")],
                    10.0,
                )
            })
            .collect();
        let errors = many(
            30,
            "profile",
            &[("query:user_id", "7"), ("method", "GET")],
            1.0,
        );
        let s = SliceLearner::default()
            .learn(&errors, &traffic, &HashMap::new())
            .unwrap();
        assert_eq!(atoms(&s), vec![("profile".to_owned(), vec![])]);
    }

    #[test]
    fn several_routes_give_a_union_and_stray_routes_are_dropped() {
        let mut errors = many(50, "payments", &[("body:channel", "alipay")], 1.0);
        errors.extend(many(45, "refunds", &[("body:channel", "alipay")], 1.0));
        errors.extend(many(2, "search", &[("query:q", "x")], 1.0));
        let mut traffic = payments_traffic();
        for ch in ["alipay", "card"] {
            traffic.extend(many(20, "refunds", &[("body:channel", ch)], 20.0));
        }
        let s = SliceLearner::default()
            .learn(&errors, &traffic, &HashMap::new())
            .unwrap();
        assert_eq!(
            atoms(&s),
            vec![
                (
                    "payments".to_owned(),
                    vec!["body:channel=alipay".to_owned()]
                ),
                ("refunds".to_owned(), vec!["body:channel=alipay".to_owned()]),
            ]
        );
        assert!(s.coverage > 0.97 && s.coverage < 1.0);
    }

    #[test]
    fn traffic_estimate_never_drops_below_the_errors_seen() {
        // No samples at all matched the failing channel (low volume): rate must stay <= 1.
        let errors = many(60, "payments", &[("body:channel", "bank")], 1.0);
        let s = SliceLearner::default()
            .learn(&errors, &payments_traffic(), &HashMap::new())
            .unwrap();
        assert!(s.traffic >= s.errors);
        assert!(s.error_rate() <= 1.0);
    }

    #[test]
    fn weights_follow_the_sampling_rate() {
        let r = WeightedRequest::new("r", "GET", "up", &Dimensions::new(), 0.05);
        assert!((r.weight - 20.0).abs() < 1e-9);
        assert_eq!(
            WeightedRequest::new("r", "GET", "up", &Dimensions::new(), 0.0).weight,
            1.0
        );
        assert_eq!(r.attributes.get("method").map(String::as_str), Some("GET"));
    }

    #[test]
    fn no_errors_no_slice() {
        assert!(
            SliceLearner::default()
                .learn(&[], &payments_traffic(), &HashMap::new())
                .is_none()
        );
    }
}

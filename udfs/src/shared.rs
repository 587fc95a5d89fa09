//! A cluster index shared by several pipeline replicas (distributed mode).
//!
//! Each replica mines its own templates, but a new template's cluster is decided once, by
//! the shared index, so every replica that meets the template (or a similar one) assigns
//! the same cluster id. The index applies the same rules as the local [`ClusterStore`]
//! through [`pick_cluster`]: a cluster with the same known dependency *and* mode is joined
//! first; otherwise the candidates nearest by cosine are scored with [`combined_score`] and
//! the best one reaching the threshold is joined; otherwise the template founds a cluster
//! named after itself (`c<template id, 16 hex digits>`, as the local store names them).
//!
//! The implementation lives with the I/O (`pipeline/src/postgres/`); this crate only knows
//! the trait, so the functions stay free of database clients. The [`FailureClusterer`]
//! falls back to its local store whenever the index fails: clustering never stops because a
//! database is unreachable.
//!
//! [`ClusterStore`]: crate::cluster::ClusterStore
//! [`FailureClusterer`]: crate::clusterer::FailureClusterer

use crate::cluster::{ClusterConfig, Similarity, combined_score};
use crate::evidence::Evidence;

/// A template some replica already assigned, as the shared index stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedTemplate {
    /// Template id (`schemas::text::template_id_of(&template)`).
    pub template_id: u64,
    /// The template text.
    pub template: String,
    /// Its cluster.
    pub cluster_id: String,
    /// Its embedding (unit length).
    pub vector: Vec<f32>,
    /// The evidence read from its first message.
    pub evidence: Evidence,
}

/// A new template, offered to the shared index once it has been embedded.
#[derive(Debug, Clone, Copy)]
pub struct NewTemplate<'a> {
    /// Template id.
    pub template_id: u64,
    /// The template text.
    pub template: &'a str,
    /// Its embedding (unit length).
    pub vector: &'a [f32],
    /// The evidence read from its first message.
    pub evidence: &'a Evidence,
}

/// The shared index could not answer (unreachable, timed out, refused the query).
#[derive(Debug, thiserror::Error)]
#[error("shared cluster index: {0}")]
pub struct SharedIndexError(pub String);

/// Where replicas agree on clusters. Calls are synchronous (the SQL functions are); an
/// implementation bounds how long each may block.
pub trait SharedClusterIndex: Send + std::fmt::Debug {
    /// The stored assignment of a template, `None` when no replica has assigned it.
    fn lookup(&self, template_id: u64) -> Result<Option<SharedTemplate>, SharedIndexError>;

    /// Assigns a new template under the rules of [`pick_cluster`] and `config`, or returns
    /// the cluster another replica already gave it: two replicas racing on the same
    /// template get the same answer.
    fn assign(
        &self,
        template: &NewTemplate<'_>,
        config: &ClusterConfig,
    ) -> Result<String, SharedIndexError>;

    /// Every stored template, for a replica that starts (or restarts) to pick up where the
    /// others are.
    fn restore(&self) -> Result<Vec<SharedTemplate>, SharedIndexError>;
}

/// A candidate cluster as the index returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Cluster id.
    pub cluster_id: String,
    /// Cosine similarity of the new template's vector to the cluster's centroid.
    pub cosine: f32,
    /// The cluster's evidence (majority dependency and mode).
    pub evidence: Evidence,
}

/// The cluster a new template joins, or `None` to found one. `same_evidence` is the oldest
/// cluster whose dependency and mode both equal the template's (when both are known);
/// `nearest` are the candidates by cosine. The local store's rule, in one place.
pub fn pick_cluster(
    evidence: &Evidence,
    same_evidence: Option<&str>,
    nearest: &[Candidate],
    config: &ClusterConfig,
) -> Option<String> {
    if config.similarity != Similarity::EmbeddingOnly
        && evidence.dependency.is_some()
        && evidence.mode.is_some()
        && let Some(id) = same_evidence
    {
        return Some(id.to_owned());
    }
    if config.similarity == Similarity::EvidenceOnly {
        return None;
    }
    let mut best: Option<(f32, &str)> = None;
    for c in nearest {
        let Some(score) = combined_score(c.cosine, evidence, &c.evidence, config) else {
            continue;
        };
        // Ties go to the smaller id, so the answer does not depend on the order of rows.
        let better =
            best.is_none_or(|(s, id)| score > s || (score == s && c.cluster_id.as_str() < id));
        if score >= config.threshold && better {
            best = Some((score, c.cluster_id.as_str()));
        }
    }
    best.map(|(_, id)| id.to_owned())
}

/// The id a template gets when it founds a cluster (the local store's naming).
pub fn founded_cluster_id(template_id: u64) -> String {
    format!("c{template_id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::DEFAULT_HNSW_ABOVE;
    use crate::evidence::FailureMode;

    fn cfg() -> ClusterConfig {
        ClusterConfig {
            threshold: 0.8,
            mode_bonus: 0.1,
            dependency_bonus: 0.1,
            similarity: Similarity::Combined,
            candidates: 8,
            hnsw_above: DEFAULT_HNSW_ABOVE,
        }
    }

    fn ev(dep: Option<&str>, mode: Option<FailureMode>) -> Evidence {
        Evidence {
            dependency: dep.map(str::to_owned),
            mode,
        }
    }

    fn cand(id: &str, cosine: f32, evidence: Evidence) -> Candidate {
        Candidate {
            cluster_id: id.into(),
            cosine,
            evidence,
        }
    }

    #[test]
    fn same_evidence_wins_over_a_closer_vector() {
        let e = ev(Some("redis"), Some(FailureMode::Refused));
        let near = [cand("c1", 0.99, Evidence::default())];
        assert_eq!(
            pick_cluster(&e, Some("c9"), &near, &cfg()).as_deref(),
            Some("c9")
        );
        // Without complete evidence, the evidence cluster is not a shortcut.
        let partial = ev(Some("redis"), None);
        assert_eq!(
            pick_cluster(&partial, Some("c9"), &near, &cfg()).as_deref(),
            Some("c1")
        );
    }

    #[test]
    fn threshold_conflicts_and_bonuses_apply() {
        let e = ev(Some("redis"), None);
        let near = [
            cand("far", 0.5, Evidence::default()),
            cand("conflict", 0.95, ev(Some("mysql"), None)),
        ];
        assert_eq!(pick_cluster(&e, None, &near, &cfg()), None);
        // 0.75 + dependency bonus 0.1 reaches 0.8.
        let near = [cand("bonus", 0.75, ev(Some("redis"), None))];
        assert_eq!(
            pick_cluster(&e, None, &near, &cfg()).as_deref(),
            Some("bonus")
        );
    }

    #[test]
    fn best_score_then_smallest_id_regardless_of_row_order() {
        let e = Evidence::default();
        let a = cand("cb", 0.9, Evidence::default());
        let b = cand("ca", 0.9, Evidence::default());
        let c = cand("cc", 0.85, Evidence::default());
        let one = pick_cluster(&e, None, &[a.clone(), b.clone(), c.clone()], &cfg());
        let two = pick_cluster(&e, None, &[c, b, a], &cfg());
        assert_eq!(one.as_deref(), Some("ca"));
        assert_eq!(one, two);
    }

    #[test]
    fn founded_ids_match_the_local_store() {
        assert_eq!(founded_cluster_id(0xab), "c00000000000000ab");
    }
}

//! Evaluation on a labelled corpus: template-level grouping accuracy (the Loghub / Drain
//! metric) and cluster-level adjusted Rand index, purity and wrongly merged root causes.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::cluster::{ClusterConfig, EmbedFailure, Similarity, TextEmbedder};
use crate::clusterer::FailureClusterer;
use crate::miner::MinerConfig;

/// One labelled message.
#[derive(Debug, Clone, Deserialize)]
pub struct CorpusLine {
    /// The root cause (the cluster it should land in).
    pub root_cause: String,
    /// The phrasing (the template it should get); defaults to the text itself.
    #[serde(default)]
    pub variant: Option<String>,
    /// The message.
    pub text: String,
}

/// Reading the corpus failed.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a `{root_cause, text}` object.
    #[error("{path}:{line}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
}

/// Reads a JSON-lines corpus (blank lines skipped).
pub fn load_corpus(path: &Path) -> Result<Vec<CorpusLine>, CorpusError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CorpusError::Io {
        path: p.clone(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| CorpusError::Parse {
                path: p.clone(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

fn ids<T: std::hash::Hash + Eq + Clone>(labels: &[T]) -> Vec<usize> {
    let mut map: HashMap<T, usize> = HashMap::new();
    labels
        .iter()
        .map(|l| {
            let n = map.len();
            *map.entry(l.clone()).or_insert(n)
        })
        .collect()
}

/// Drain's grouping accuracy: the share of messages whose predicted group holds exactly the
/// messages of their true group.
pub fn grouping_accuracy<P: std::hash::Hash + Eq + Clone, T: std::hash::Hash + Eq + Clone>(
    predicted: &[P],
    truth: &[T],
) -> f64 {
    let (p, t) = (ids(predicted), ids(truth));
    let mut p_sets: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut t_sets: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..p.len() {
        p_sets.entry(p[i]).or_default().push(i);
        t_sets.entry(t[i]).or_default().push(i);
    }
    let correct = (0..p.len())
        .filter(|&i| p_sets[&p[i]] == t_sets[&t[i]])
        .count();
    correct as f64 / p.len().max(1) as f64
}

fn choose2(n: usize) -> f64 {
    (n as f64) * (n as f64 - 1.0) / 2.0
}

/// Adjusted Rand index (1 = identical partitions, ~0 = chance).
pub fn adjusted_rand_index<P: std::hash::Hash + Eq + Clone, T: std::hash::Hash + Eq + Clone>(
    predicted: &[P],
    truth: &[T],
) -> f64 {
    let (p, t) = (ids(predicted), ids(truth));
    let n = p.len();
    let mut cells: HashMap<(usize, usize), usize> = HashMap::new();
    let mut rows: HashMap<usize, usize> = HashMap::new();
    let mut cols: HashMap<usize, usize> = HashMap::new();
    for i in 0..n {
        *cells.entry((p[i], t[i])).or_default() += 1;
        *rows.entry(p[i]).or_default() += 1;
        *cols.entry(t[i]).or_default() += 1;
    }
    let index: f64 = cells.values().map(|&c| choose2(c)).sum();
    let a: f64 = rows.values().map(|&c| choose2(c)).sum();
    let b: f64 = cols.values().map(|&c| choose2(c)).sum();
    let expected = a * b / choose2(n).max(1.0);
    let max = (a + b) / 2.0;
    if (max - expected).abs() < f64::EPSILON {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// Purity: each predicted cluster counts its most common true label.
pub fn purity<P: std::hash::Hash + Eq + Clone, T: std::hash::Hash + Eq + Clone>(
    predicted: &[P],
    truth: &[T],
) -> f64 {
    let (p, t) = (ids(predicted), ids(truth));
    let mut cells: HashMap<usize, HashMap<usize, usize>> = HashMap::new();
    for i in 0..p.len() {
        *cells.entry(p[i]).or_default().entry(t[i]).or_default() += 1;
    }
    let sum: usize = cells
        .values()
        .map(|m| m.values().copied().max().unwrap_or(0))
        .sum();
    sum as f64 / p.len().max(1) as f64
}

/// Root causes that share a predicted cluster with another root cause, and the pairs.
pub fn merged_root_causes<P: std::hash::Hash + Eq + Clone>(
    predicted: &[P],
    truth: &[String],
) -> (usize, Vec<(String, String)>) {
    let p = ids(predicted);
    let mut per_cluster: HashMap<usize, HashSet<&str>> = HashMap::new();
    for (i, c) in p.iter().enumerate() {
        per_cluster.entry(*c).or_default().insert(truth[i].as_str());
    }
    let mut causes: HashSet<&str> = HashSet::new();
    let mut pairs: HashSet<(String, String)> = HashSet::new();
    for set in per_cluster.values().filter(|s| s.len() > 1) {
        let mut v: Vec<&str> = set.iter().copied().collect();
        v.sort_unstable();
        causes.extend(v.iter().copied());
        for i in 0..v.len() {
            for j in (i + 1)..v.len() {
                pairs.insert((v[i].to_string(), v[j].to_string()));
            }
        }
    }
    let mut pairs: Vec<_> = pairs.into_iter().collect();
    pairs.sort();
    (causes.len(), pairs)
}

/// Caches vectors by text so that sweeps embed each distinct text once.
pub struct CachedEmbedder {
    inner: Arc<dyn TextEmbedder>,
    cache: Mutex<HashMap<String, Vec<f32>>>,
}

impl std::fmt::Debug for CachedEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedEmbedder")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl CachedEmbedder {
    /// Wraps an embedder.
    pub fn new(inner: Arc<dyn TextEmbedder>) -> Self {
        Self {
            inner,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl TextEmbedder for CachedEmbedder {
    fn dims(&self) -> usize {
        self.inner.dims()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedFailure> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let missing: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| !cache.contains_key(*t))
            .collect();
        if !missing.is_empty() {
            for chunk in missing.chunks(32) {
                let vs = self.inner.embed_texts(chunk)?;
                for (t, v) in chunk.iter().zip(vs) {
                    cache.insert((*t).to_string(), v);
                }
            }
        }
        texts
            .iter()
            .map(|t| {
                cache
                    .get(*t)
                    .cloned()
                    .ok_or_else(|| EmbedFailure("cache miss".into()))
            })
            .collect()
    }
}

/// Scores of one clustering variant.
#[derive(Debug, Clone)]
pub struct ClusterScore {
    /// Variant name.
    pub name: String,
    /// Predicted clusters.
    pub clusters: usize,
    /// Adjusted Rand index.
    pub ari: f64,
    /// Purity.
    pub purity: f64,
    /// Root causes merged with another.
    pub merged_causes: usize,
    /// The merged pairs.
    pub merged_pairs: Vec<(String, String)>,
}

/// Template-level scores.
#[derive(Debug, Clone)]
pub struct TemplateScore {
    /// Grouping accuracy of the enforcer's cheap template id.
    pub cheap_ga: f64,
    /// Grouping accuracy of the miner.
    pub miner_ga: f64,
    /// Distinct cheap templates.
    pub cheap_templates: usize,
    /// Distinct mined templates.
    pub miner_templates: usize,
    /// True templates (variants).
    pub true_templates: usize,
}

/// A deterministic shuffle so that the online order is not "all of one cause, then the next".
pub fn shuffled(corpus: &[CorpusLine], seed: u64) -> Vec<CorpusLine> {
    let mut v = corpus.to_vec();
    let mut state = seed | 1;
    for i in (1..v.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        v.swap(i, (state % (i as u64 + 1)) as usize);
    }
    v
}

/// Template-level grouping accuracy of the cheap id and of the miner.
pub fn evaluate_templates(corpus: &[CorpusLine], miner: MinerConfig) -> TemplateScore {
    let truth: Vec<String> = corpus
        .iter()
        .map(|l| l.variant.clone().unwrap_or_else(|| l.text.clone()))
        .collect();
    let cheap: Vec<u64> = corpus
        .iter()
        .map(|l| schemas::text::template_id(&l.text))
        .collect();
    let mut m = crate::miner::TemplateMiner::new(miner);
    let keys: Vec<_> = corpus.iter().map(|l| m.add(&l.text).key).collect();
    TemplateScore {
        cheap_ga: grouping_accuracy(&cheap, &truth),
        miner_ga: grouping_accuracy(&keys, &truth),
        cheap_templates: cheap.iter().collect::<HashSet<_>>().len(),
        miner_templates: keys.iter().collect::<HashSet<_>>().len(),
        true_templates: truth.iter().collect::<HashSet<_>>().len(),
    }
}

/// Runs the clusterer over the corpus (in the given order) and scores the final clusters.
pub fn evaluate_clusters(
    name: &str,
    corpus: &[CorpusLine],
    embedder: Arc<dyn TextEmbedder>,
    config: ClusterConfig,
    recluster: bool,
) -> Result<ClusterScore, EmbedFailure> {
    let mut c = FailureClusterer::with_config(MinerConfig::default(), config, embedder);
    let mut groups = Vec::with_capacity(corpus.len());
    for l in corpus {
        groups.push(c.process(&l.text)?.group);
    }
    if recluster {
        c.recluster();
    }
    let predicted: Vec<String> = groups
        .iter()
        .map(|g| c.current(*g).and_then(|(_, _, cl)| cl).unwrap_or_default())
        .collect();
    let truth: Vec<String> = corpus.iter().map(|l| l.root_cause.clone()).collect();
    let (merged_causes, merged_pairs) = merged_root_causes(&predicted, &truth);
    Ok(ClusterScore {
        name: name.to_string(),
        clusters: predicted.iter().collect::<HashSet<_>>().len(),
        ari: adjusted_rand_index(&predicted, &truth),
        purity: purity(&predicted, &truth),
        merged_causes,
        merged_pairs,
    })
}

/// The variants compared in the eval table.
pub fn variants(base: &ClusterConfig) -> Vec<(String, ClusterConfig, bool)> {
    let with = |s: Similarity| ClusterConfig {
        similarity: s,
        ..base.clone()
    };
    vec![
        (
            "embedding only, online".into(),
            with(Similarity::EmbeddingOnly),
            false,
        ),
        (
            "embedding only, + average-linkage".into(),
            with(Similarity::EmbeddingOnly),
            true,
        ),
        (
            "evidence only".into(),
            with(Similarity::EvidenceOnly),
            false,
        ),
        ("combined, online".into(), with(Similarity::Combined), false),
        (
            "combined, + average-linkage".into(),
            with(Similarity::Combined),
            true,
        ),
    ]
}

/// Reading the corpus or embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The corpus.
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    /// The embedder.
    #[error(transparent)]
    Embed(#[from] EmbedFailure),
    /// Nothing to evaluate.
    #[error("corpus {0} has no lines")]
    Empty(String),
}

/// The evaluation tables (markdown) for a corpus and an embedder; `sweep` adds a threshold
/// sweep, `verbose` the merged root-cause pairs and lines with incomplete evidence.
pub fn report(
    path: &Path,
    embedder: Arc<dyn TextEmbedder>,
    sweep: bool,
    verbose: bool,
) -> Result<String, ReportError> {
    use std::fmt::Write;
    let mut out = String::new();
    let lines = load_corpus(path)?;
    if lines.is_empty() {
        return Err(ReportError::Empty(path.display().to_string()));
    }
    let causes: HashSet<_> = lines.iter().map(|l| &l.root_cause).collect();
    let lines = shuffled(&lines, 7);
    let _ = writeln!(
        out,
        "corpus: {} ({} lines, {} root causes)\n",
        path.display(),
        lines.len(),
        causes.len()
    );
    if verbose {
        let _ = writeln!(out, "lines with incomplete evidence:");
        for l in &lines {
            let e = crate::evidence::extract(&schemas::text::desensitize(&l.text));
            if e.dependency.is_none() || e.mode.is_none() {
                let _ = writeln!(out, "  {:28} {:24} {}", l.root_cause, e.key(), l.text);
            }
        }
        let _ = writeln!(out);
    }
    let t = evaluate_templates(&lines, MinerConfig::default());
    let _ = writeln!(
        out,
        "| templates | grouping accuracy | templates (true {}) |",
        t.true_templates
    );
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| cheap template id (enforcer) | {:.3} | {} |",
        t.cheap_ga, t.cheap_templates
    );
    let _ = writeln!(
        out,
        "| TemplateMiner (Drain-style) | {:.3} | {} |\n",
        t.miner_ga, t.miner_templates
    );
    let embedder: Arc<dyn TextEmbedder> = Arc::new(CachedEmbedder::new(embedder));
    let base = ClusterConfig::for_model(embedder.name());
    let _ = writeln!(
        out,
        "embedder: {}  threshold {:.3}  mode bonus {:.3}  dependency bonus {:.3}\n",
        embedder.name(),
        base.threshold,
        base.mode_bonus,
        base.dependency_bonus
    );
    let _ = writeln!(
        out,
        "| clusters: variant | clusters | ARI | purity | root causes wrongly merged |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (name, cfg, recluster) in variants(&base) {
        let s = evaluate_clusters(&name, &lines, Arc::clone(&embedder), cfg, recluster)?;
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {} |",
            s.name, s.clusters, s.ari, s.purity, s.merged_causes
        );
        if verbose {
            for (a, b) in &s.merged_pairs {
                let _ = writeln!(out, "|   merged: {a} + {b} | | | | |");
            }
        }
    }
    if sweep {
        let _ = writeln!(
            out,
            "\nsweep (average-linkage; best ARI overall, and best ARI with no merged root causes):"
        );
        for similarity in [Similarity::EmbeddingOnly, Similarity::Combined] {
            let mut best: Option<(f64, ClusterConfig, usize)> = None;
            let mut best_clean: Option<(f64, ClusterConfig)> = None;
            // Steps of 0.01: model cosines can sit in a narrow band (e5's 0.79-0.91).
            for step in 0..=90 {
                let threshold = (10 + step) as f32 / 100.0;
                for bonus in [0.0f32, 0.01, 0.02, 0.03, 0.05, 0.1] {
                    if similarity == Similarity::EmbeddingOnly && bonus > 0.0 {
                        continue;
                    }
                    let cfg = ClusterConfig {
                        threshold,
                        mode_bonus: bonus,
                        dependency_bonus: bonus,
                        similarity,
                        ..base.clone()
                    };
                    let s = evaluate_clusters(
                        "sweep",
                        &lines,
                        Arc::clone(&embedder),
                        cfg.clone(),
                        true,
                    )?;
                    if best.as_ref().is_none_or(|(a, _, _)| s.ari > *a) {
                        best = Some((s.ari, cfg.clone(), s.merged_causes));
                    }
                    if s.merged_causes == 0 && best_clean.as_ref().is_none_or(|(a, _)| s.ari > *a) {
                        best_clean = Some((s.ari, cfg));
                    }
                }
            }
            if let Some((ari, cfg, merged)) = best {
                let _ = writeln!(
                    out,
                    "  {:?}: best ARI {:.3} at threshold {:.2}, bonus {:.2} (merged causes {})",
                    similarity, ari, cfg.threshold, cfg.mode_bonus, merged
                );
            }
            let _ = match best_clean {
                Some((ari, cfg)) => writeln!(
                    out,
                    "  {:?}: best ARI with no merges {:.3} at threshold {:.2}, bonus {:.2}",
                    similarity, ari, cfg.threshold, cfg.mode_bonus
                ),
                None => writeln!(
                    out,
                    "  {similarity:?}: every setting merged some root causes"
                ),
            };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_known_partitions() {
        let truth = ["a", "a", "b", "b"];
        assert!((adjusted_rand_index(&[1, 1, 2, 2], &truth) - 1.0).abs() < 1e-9);
        assert!(adjusted_rand_index(&[1, 2, 1, 2], &truth) < 0.0);
        assert!((purity(&[1, 1, 1, 1], &truth) - 0.5).abs() < 1e-9);
        assert!((grouping_accuracy(&[1, 1, 2, 3], &truth) - 0.5).abs() < 1e-9);
        let t: Vec<String> = truth.iter().map(|s| s.to_string()).collect();
        assert_eq!(merged_root_causes(&[1, 1, 1, 2], &t).0, 2);
        assert_eq!(merged_root_causes(&[1, 1, 2, 2], &t).0, 0);
    }
}

//! Per-model clustering thresholds, kept in `udfs/calibration/<model>.json` and compiled in.
//!
//! Cosines are model-specific (e5's sit in a narrow 0.79–0.91 band), so each embedder has
//! its own threshold and evidence bonuses, chosen by `pipeline eval --sweep` on the corpus.

use serde::Deserialize;

/// Clustering constants for one embedder.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Calibration {
    /// Join threshold on the combined score.
    pub threshold: f32,
    /// Bonus when both failure modes are known and equal.
    pub mode_bonus: f32,
    /// Bonus when both dependencies are known and equal.
    pub dependency_bonus: f32,
}

const FILES: &[(&str, &str)] = &[
    ("ngram", include_str!("../calibration/ngram.json")),
    (
        "multilingual-e5-small-int8",
        include_str!("../calibration/multilingual-e5-small-int8.json"),
    ),
];

/// The calibration for `model`, or the n-gram one when the model has none.
pub fn for_model(model: &str) -> Calibration {
    let parse = |json: &str| serde_json::from_str::<Calibration>(json).ok();
    FILES
        .iter()
        .find(|(name, _)| *name == model)
        .and_then(|(_, json)| parse(json))
        .or_else(|| parse(FILES[0].1))
        .unwrap_or(Calibration {
            threshold: 0.5,
            mode_bonus: 0.1,
            dependency_bonus: 0.1,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_parses() {
        for (name, json) in FILES {
            assert!(serde_json::from_str::<Calibration>(json).is_ok(), "{name}");
        }
        assert_eq!(for_model("unknown"), for_model("ngram"));
    }
}

//! A head's logits → what users read: scores (the model's activation over the logits, or the
//! logits themselves), rankings and labelled predictions. One definition for `akidb rerank`,
//! `akidb predict` and the server's `/rerank`, `/v1/rerank`, `/v2/rerank` and `/predict`.

use serde::Serialize;

use crate::model_config::Activation;

/// One row of logits as scores: the model's activation over them (`activation` is `None` for a
/// model without a head), or the logits unchanged when `raw`.
pub fn scores(logits: Vec<f32>, activation: Option<Activation>, raw: bool) -> Vec<f32> {
    match (raw, activation) {
        (false, Some(activation)) => activation.apply(&logits),
        _ => logits,
    }
}

/// A cross-encoder's relevance score for one pair: its one logit, through the activation unless
/// `raw`; NaN for an empty row (which the warm-up's width check keeps from happening).
pub fn relevance(logits: Vec<f32>, activation: Option<Activation>, raw: bool) -> f32 {
    scores(logits, activation, raw).first().copied().unwrap_or(f32::NAN)
}

/// Indices sorted by score, highest first; ties keep input order.
pub fn ranked(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// One label and its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Prediction {
    pub label: String,
    pub score: f32,
}

/// Every label of one row with its score, best first. Labels come from the model's `id2label`;
/// a label it does not name is `LABEL_{i}`, as transformers calls it.
pub fn predictions(logits: Vec<f32>, labels: &[String], activation: Option<Activation>, raw: bool) -> Vec<Prediction> {
    let scores = scores(logits, activation, raw);
    ranked(&scores)
        .into_iter()
        .map(|i| Prediction { label: labels.get(i).cloned().unwrap_or_else(|| format!("LABEL_{i}")), score: scores[i] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_by_score_and_stable() {
        assert_eq!(ranked(&[0.1, 0.9, 0.5, 0.9]), vec![1, 3, 2, 0]);
        assert_eq!(ranked(&[]), Vec::<usize>::new());
    }

    #[test]
    fn scores_follow_the_activation_unless_raw() {
        let sig = relevance(vec![0.0], Some(Activation::Sigmoid), false);
        assert!((sig - 0.5).abs() < 1e-7, "{sig}");
        assert_eq!(relevance(vec![2.5], Some(Activation::Sigmoid), true), 2.5);
        assert_eq!(relevance(vec![2.5], None, false), 2.5);
        assert!(relevance(Vec::new(), Some(Activation::Sigmoid), false).is_nan());
    }

    #[test]
    fn predictions_are_best_first_with_named_or_numbered_labels() {
        let labels = vec!["negative".to_string(), "positive".to_string()];
        let got = predictions(vec![1.0, 3.0, 2.0], &labels, Some(Activation::Softmax), false);
        let names: Vec<&str> = got.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(names, ["positive", "LABEL_2", "negative"]);
        let total: f32 = got.iter().map(|p| p.score).sum();
        assert!((total - 1.0).abs() < 1e-6, "softmax sums to 1: {total}");
        let raw = predictions(vec![1.0, 3.0], &labels, Some(Activation::Softmax), true);
        assert_eq!(raw[0], Prediction { label: "positive".into(), score: 3.0 });
    }
}

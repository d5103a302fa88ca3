//! The one batch planner: how texts become inference calls. A batch costs about rows × its longest
//! text (every row is padded to it), so batches are cut by that padded size (`max_tokens`) and by
//! rows (`max_rows`). The CLI (one sorted list) and the server's scheduler (texts of many
//! requests) both cut batches through [`Budget`].

use std::ops::Range;

/// Limits of one inference call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Padded tokens (rows × longest row) per call: small enough to keep activations in cache.
    pub max_tokens: usize,
    pub max_rows: usize,
}

impl Budget {
    pub fn new(max_tokens: usize, max_rows: usize) -> Self {
        Self { max_tokens: max_tokens.max(1), max_rows: max_rows.max(1) }
    }

    /// Whether a batch of `rows` rows padded to `width` tokens is within the budget. A single
    /// row always fits, however long: a text longer than the budget still gets its own call.
    pub fn fits(&self, rows: usize, width: usize) -> bool {
        rows <= 1 || (rows <= self.max_rows && rows * width <= self.max_tokens)
    }
}

/// Splits lengths (sorted longest first) into consecutive batches within `budget`.
pub fn plan_batches(lengths: impl IntoIterator<Item = usize>, budget: Budget) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut width, mut rows) = (0usize, 0usize, 0usize);
    for (i, len) in lengths.into_iter().enumerate() {
        if rows > 0 && !budget.fits(rows + 1, width.max(len)) {
            batches.push(start..i);
            (start, width, rows) = (i, len, 1);
        } else {
            width = width.max(len);
            rows += 1;
        }
    }
    if rows > 0 {
        batches.push(start..start + rows);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_token_budget_and_row_limit() {
        assert_eq!(plan_batches([10, 10, 10, 5], Budget::new(25, 10)), vec![0..2, 2..4]);
        assert_eq!(plan_batches([3, 3, 3, 3, 3], Budget::new(1000, 2)), vec![0..2, 2..4, 4..5]);
        // a single text longer than the budget still gets its own batch
        assert_eq!(plan_batches([300, 2], Budget::new(100, 8)), vec![0..1, 1..2]);
        assert!(plan_batches(std::iter::empty(), Budget::new(100, 8)).is_empty());
    }
}

//! The tests that judge time and memory against the same run's idle figures (a query beside
//! an indexing job, clients that hang up, a flood, the soak): a binary of their own, because cargo runs test
//! binaries one after another, so nothing else shares the two cores with them while they measure.
//! Everything else is in `tests/it`.

#[path = "../it/common/mod.rs"]
mod common;
mod serving;
mod soak;

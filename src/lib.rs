//! The `akidb` command line's own part: [`settings`] turns flags, `AKIDB_*` variables and the
//! TOML config file into the options of the crates below it (akidb-engine, akidb-server,
//! akidb-corpus). `main.rs` is the rest: the subcommands. docs/architecture.md draws the whole.

pub mod settings;

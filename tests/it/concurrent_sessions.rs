//! Sessions created at once in a fresh process all load. The first session to register akidb's
//! operator domain (`kernel`) adds it to a process-wide table of ONNX's without a lock, so two
//! first sessions at once (the loader builds the fused and the exported graph side by side) could
//! fail with "the domain is already exist"; `runtime` makes the first creations take turns. The race
//! only exists before the first registration, so the test runs itself in twenty fresh processes
//! (without the fix about one in five failed).

use crate::common;

use std::sync::{Arc, Barrier};

use akidb_engine::session::runtime::{Session, SessionOptions};

#[test]
fn the_first_sessions_of_a_process_load_side_by_side() {
    if std::env::var_os("AKIDB_TEST_FRESH_PROCESS").is_some() {
        return load_side_by_side();
    }
    for round in 0..20 {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "concurrent_sessions::the_first_sessions_of_a_process_load_side_by_side", "--nocapture"])
            .env("AKIDB_TEST_FRESH_PROCESS", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

fn load_side_by_side() {
    let model = common::hf_home().join(
        "hub/models--akidb-test--tiny-bert-cls/snapshots/35540ced21388cb29b96936151cc815ab481bce4/onnx/model.onnx",
    );
    let n = 8;
    let start = Arc::new(Barrier::new(n));
    let loads: Vec<_> = (0..n)
        .map(|_| {
            let (model, start) = (model.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                Session::load(&model, None, &SessionOptions { threads: Some(1), ..Default::default() }).map(|_| ())
            })
        })
        .collect();
    for (i, load) in loads.into_iter().enumerate() {
        load.join().expect("no panic").unwrap_or_else(|e| panic!("session {i}: {e}"));
    }
}

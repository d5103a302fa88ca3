//! The `akidb` binary finds a dynamically linked ONNX Runtime beside itself (and one level up, for
//! tests and examples in `target/*/deps`), so a release tarball runs with no LD_LIBRARY_PATH.
//! akidb-engine's build script provides and links the library; a link argument such as this rpath
//! applies only to the package that prints it, so it is printed here, for this package's binary,
//! examples, tests and benches.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_AKIDB_ONNXRUNTIME_DYNAMIC");
    if std::env::var_os("DEP_AKIDB_ONNXRUNTIME_DYNAMIC").is_none() {
        return; // linked statically: nothing to find at run time
    }
    let origin =
        if std::env::var("TARGET").is_ok_and(|t| t.contains("apple")) { "@executable_path" } else { "$ORIGIN" };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{origin}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{origin}/..");
}

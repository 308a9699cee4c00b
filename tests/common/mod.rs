//! Shared helpers for the tests: reading golden tensors, comparing with a tolerance, running the CLI.
#![allow(dead_code)] // each test binary uses a different subset

use hymba_ref::checkpoint::safetensors::SafetensorsFile;
use ndarray::{ArrayD, ArrayView, Dimension, IxDyn};
use std::path::{Path, PathBuf};

/// The sentence an `--ignored` test fails with when the shared ground truth is not there.
pub const NEEDS_SHARED: &str = "the tests run by `cargo test -- --ignored` need the shared ground truth in \
    ../shared/hymba next to the repository (the released implementation's conformance goldens in \
    conformance/, the released Hymba-1.5B config and tokenizer files in hymba-1.5b/), as CI provides; \
    plain `cargo test` runs without it";

/// `../shared/hymba/...` next to the repository, where CI puts the shared ground truth. Fails the
/// test with [`NEEDS_SHARED`] when it is not there.
pub fn shared_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/hymba");
    assert!(dir.is_dir(), "{} does not exist: {NEEDS_SHARED}", dir.display());
    dir
}

/// `tests/fixtures/...` in the repository.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A goldens.safetensors file.
pub struct Goldens(pub SafetensorsFile);

impl Goldens {
    pub fn open(path: &Path) -> Goldens {
        Goldens(SafetensorsFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.get(name).is_some()
    }
    pub fn f32(&self, name: &str) -> ArrayD<f32> {
        let (shape, data) = self.0.to_f32(name).unwrap_or_else(|e| panic!("golden {name}: {e}"));
        ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap()
    }
    pub fn ids(&self, name: &str) -> Vec<u32> {
        let (_, data) = self.0.to_i64(name).unwrap_or_else(|e| panic!("golden {name}: {e}"));
        data.into_iter().map(|v| u32::try_from(v).expect("token id")).collect()
    }
}

/// Assert `|got − want| ≤ atol + rtol·|want|` elementwise; on failure name the tensor, print
/// the first mismatches and the max error. Returns the max absolute error.
pub fn assert_close<D: Dimension>(name: &str, got: ArrayView<f32, D>, want: &ArrayD<f32>, atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    let (mut max_err, mut failed, mut bad) = (0f32, 0usize, Vec::new());
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        let err = if (g - w).is_nan() { f32::INFINITY } else { (g - w).abs() };
        let tol = atol + rtol * w.abs();
        if err > tol || tol.is_nan() {
            failed += 1;
            if bad.len() < 5 {
                bad.push(format!("  flat index {i}: got {g}, want {w}, |Δ| = {err}"));
            }
        }
        max_err = max_err.max(err);
    }
    assert!(failed == 0, "{name}: {failed} mismatches (atol {atol}, rtol {rtol}), max |Δ| = {max_err}\n{}", bad.join("\n"));
    max_err
}

/// The `hymba-ref` binary as a command, with its prefix cache (`XDG_CACHE_HOME`) under target/,
/// so that tests never write into the user's ~/.cache.
pub fn cli_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hymba-ref"));
    command.env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"));
    command
}

/// Run `hymba-ref` with `args`, `input` on its stdin (then closed), and collect its output.
pub fn cli_with_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cli_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(input); // the program may exit before reading it all
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// A fresh, empty directory under the system temp dir (`hymba-ref-test-{tag}-{pid}-{n}`), removed
/// on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("hymba-ref-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path); // left by an earlier run that had the same pid and died
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The directory as a command-line argument.
    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// The names in the directory, sorted.
    pub fn entries(&self) -> Vec<String> {
        let names = std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name());
        let mut names: Vec<String> = names.map(|n| n.to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

//! `hymba-ref logits`: the full forward and the `--prefill K` cached path write the same logits,
//! far past M + W, and bad input is refused without leaving an output file.

mod common;
use common::{assert_close, fixtures_dir, Goldens, TempDir};
use std::path::Path;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    common::cli_command().args(args).output().expect("the binary runs")
}

fn logits_file(model: &Path, ids: &str, out: &Path, prefill: Option<usize>) {
    let k = prefill.map(|k| k.to_string());
    let mut args = vec!["logits", "--model", model.to_str().unwrap(), "--ids", ids, "--out", out.to_str().unwrap()];
    if let Some(k) = &k {
        args.extend(["--prefill", k]);
    }
    let result = run(&args);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
}

#[test]
fn prefill_path_matches_full_forward_and_goldens() {
    // silu-groups-default: M = 3, W = 5; case2 has 27 tokens, well past M + W.
    let fixture = fixtures_dir().join("silu-groups-default");
    let goldens = Goldens::open(&fixture.join("goldens.safetensors"));
    let ids = goldens.ids("case2.input_ids");
    let ids_text = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let dir = TempDir::new("cli-logits-prefill");
    let want = goldens.f32("case2.logits");
    for prefill in [None, Some(1), Some(4), Some(ids.len())] {
        let out = dir.join(&format!("logits-{prefill:?}.safetensors"));
        logits_file(&fixture.join("model"), &ids_text, &out, prefill);
        let got = Goldens::open(&out).f32("logits");
        assert_close(&format!("logits --prefill {prefill:?}"), got.view(), &want, 1e-4, 1e-4);
    }
}

#[test]
fn bad_input_is_refused_and_leaves_no_file() {
    let model = fixtures_dir().join("silu-groups-default/model");
    let model = model.to_str().unwrap();
    let dir = TempDir::new("cli-logits-bad");
    let out = dir.join("out.safetensors");
    let out_s = out.to_str().unwrap();
    // A bad flag value is a usage error (exit 2) naming the flag; an id past the vocabulary,
    // known only once the model is read, exits 1.
    let cases: [(&[&str], &str, i32); 6] = [
        (&["--ids", "1,2,999"], "999", 1), // vocab is 256
        (&["--ids", ""], "'--ids <IDS>': the token id list is empty", 2),
        (&["--ids", "[]"], "'--ids <IDS>': the token id list is empty", 2),
        (&["--ids", "1,two"], "'--ids <IDS>': entry 2 is \"two\"", 2),
        (&["--ids", "1,2", "--prefill", "3"], "--prefill 3: must be at most the number of --ids (2)", 2),
        (&["--ids", "1,2", "--prefill", "0"], "'0' for '--prefill <K>': out of range: expected a whole number from 1 to", 2),
    ];
    for (extra, culprit, code) in cases {
        let mut args = vec!["logits", "--model", model, "--out", out_s];
        args.extend(extra);
        let result = run(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(code), "{extra:?}: {stderr}");
        assert!(stderr.contains(culprit), "{extra:?}: stderr {stderr:?} should name {culprit:?}");
        assert!(!out.exists(), "{extra:?} left an output file");
    }
    let missing = run(&["logits", "--model", "/no/such/dir", "--ids", "1", "--out", out_s]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/dir"));
    assert_eq!(run(&["logits", "--model", model, "--ids", "1", "--out", out_s, "--bogus"]).status.code(), Some(2));
    assert!(!out.exists());
}

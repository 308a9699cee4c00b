//! Quantized checkpoints on disk (`hymba-ref quantize`, `--weights q8_0|q4_0`): the demo model
//! quantized and loaded back gives the same logits, bit for bit, as quantizing at load; the plain
//! pass runs it; and every kind of bad input is an error naming the file, tensor or flag, with
//! nothing half-written left behind.

mod common;
use common::{cli_command, TempDir};
use hymba_ref::checkpoint::quantized::{scales_name, write_quantized};
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::checkpoint::{write_tensors, Dtype, SafetensorsFile, TensorData};
use hymba_ref::config::HymbaConfig;
use hymba_ref::model::plain;
use hymba_ref::model::Hymba;
use hymba_ref::kernels::quant::QuantType;
use hymba_ref::{Error, ErrorKind};
use ndarray::Array2;
use std::fs;
use std::path::{Path, PathBuf};

const IN_PROJ: &str = "model.layers.0.mamba.in_proj.weight";

fn demo() -> PathBuf {
    PathBuf::from(hymba_ref::DEFAULT_MODEL_DIR)
}

/// The demo model quantized to `kind` in a new directory `<tmp>/q`.
fn quantized_demo(kind: QuantType) -> (TempDir, PathBuf) {
    let tmp = TempDir::new(&format!("qckpt-{kind}"));
    let out = tmp.join("q");
    write_quantized(&demo(), &out, kind, |_, _, _| {}).unwrap();
    (tmp, out)
}

/// Some ids of the demo vocabulary.
fn ids() -> Vec<u32> {
    (0..24).map(|i| (i * 157 + 11) % 4000).collect()
}

fn load_err(dir: &Path) -> Error {
    match Hymba::from_dir(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

fn assert_error(e: &Error, kind: ErrorKind, needles: &[&str]) {
    assert_eq!(e.kind, kind, "{e}");
    for needle in needles {
        assert!(e.to_string().contains(needle), "{needle:?} not in: {e}");
    }
}

/// Rewrite `dir/model.safetensors` with `edit` applied to every (name, dtype, shape, bytes).
fn rewrite(dir: &Path, edit: impl Fn(&str, &mut Dtype, &mut Vec<usize>, &mut Vec<u8>)) {
    let path = dir.join("model.safetensors");
    let file = SafetensorsFile::open(&path).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), file.bytes_of(&t.name).unwrap().to_vec()))
        .collect();
    drop(file);
    for (name, dtype, shape, bytes) in &mut tensors {
        edit(name, dtype, shape, bytes);
    }
    let named: Vec<(&str, &[usize], TensorData)> =
        tensors.iter().map(|(n, d, s, b)| (n.as_str(), &s[..], TensorData::Raw(*d, b))).collect();
    write_tensors(&path, &named, &[]).unwrap();
}

#[test]
fn a_quantized_checkpoint_gives_the_logits_of_quantizing_at_load_bit_for_bit() {
    let float_cfg = HymbaConfig::from_file(&demo().join("config.json")).unwrap();
    let float_weights = HymbaWeights::load(&float_cfg, &demo()).unwrap();
    let ids = ids();
    for kind in QuantType::ALL {
        let (_tmp, dir) = quantized_demo(kind);
        let from_disk = Hymba::from_dir(&dir).unwrap();
        assert_eq!(from_disk.config.quantization, Some(kind));
        assert!(from_disk.weights.embed_tokens.quantized().is_some_and(|q| q.kind() == kind));
        let mut cfg = float_cfg.clone();
        cfg.quantization = Some(kind);
        let at_load = Hymba::new(cfg, float_weights.quantized(kind).unwrap());
        assert_eq!(from_disk.config, at_load.config);
        assert_eq!(from_disk.forward(&ids).unwrap(), at_load.forward(&ids).unwrap(), "{kind}: full pass");
        assert_eq!(
            from_disk.forward_incremental(&ids, 5).unwrap(),
            at_load.forward_incremental(&ids, 5).unwrap(),
            "{kind}: prefill 5 + decode steps"
        );
        // The tokenizer and generation config came along; the file is about the format's size.
        for name in ["tokenizer.json", "generation_config.json", "tokenizer_config.json"] {
            assert_eq!(fs::read(dir.join(name)).unwrap(), fs::read(demo().join(name)).unwrap(), "{name}");
        }
        let bytes = fs::metadata(dir.join("model.safetensors")).unwrap().len() as f64;
        let float_bytes = fs::metadata(demo().join("model.safetensors")).unwrap().len() as f64; // bf16
        let ratio = bytes / float_bytes;
        let want = kind.bits_per_weight() / 16.0;
        assert!((ratio - want).abs() < 0.08, "{kind}: {bytes} bytes, {ratio:.3} of bf16 (≈ {want:.3} expected)");
    }
}

/// The same through the command line: `logits --weights q8_0` on the float model and `logits` on
/// the checkpoint `quantize` wrote are the same file.
#[test]
fn cli_quantize_then_logits_equals_logits_with_weights_at_load() {
    let tmp = TempDir::new("qckpt-cli");
    let out = tmp.join("q4");
    let status = cli_command().args(["quantize", "--out", out.to_str().unwrap(), "--type", "q4_0"]).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stderr).contains("wrote"));
    let run = |model: &Path, extra: &[&str], file: &str| {
        let path = tmp.join(file);
        let o = cli_command()
            .args(["logits", "--model", model.to_str().unwrap(), "--ids", "1,5,900,17", "--out", path.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        fs::read(path).unwrap()
    };
    let at_load = run(&demo(), &["--weights", "q4_0"], "a.safetensors");
    assert_eq!(at_load, run(&out, &[], "b.safetensors"));
    assert_ne!(at_load, run(&demo(), &[], "c.safetensors"), "quantizing changes the logits");
}

/// The plain pass (weights dequantized at load) against the fast path on a quantized checkpoint:
/// the full pass multiplies the same dequantized weights (to f32 rounding, as for bf16); decode
/// steps quantize their inputs per block of 32 too (int8, error ≤ 1/254 of a block's largest
/// input), so they differ more. Measured on the demo model (24 ids, 19 steps): full pass at most
/// 7.6e-6 for both; decode steps q8_0 0.095, q4_0 0.085.
#[test]
fn plain_pass_runs_a_quantized_checkpoint_as_the_fast_path_does() {
    let ids = ids();
    for kind in QuantType::ALL {
        let (_tmp, dir) = quantized_demo(kind);
        let model = Hymba::from_dir(&dir).unwrap();
        let w = plain::Weights::from_loaded(&model.weights);
        let plain_full = plain::forward(&model.config, &w, &ids); // (n, V)
        let fast_full = model.forward(&ids).unwrap();
        let max_full = max_abs_diff(&plain_full, &fast_full);
        assert!(max_full < 1e-4, "{kind}: full pass, max |Δ| = {max_full}");

        let (mut cache, _) = plain::prefill(&model.config, &w, &ids[..5]);
        let plain_steps: Vec<Vec<f32>> = ids[5..].iter().map(|&id| plain::step(&model.config, &w, &mut cache, id)).collect();
        let fast_steps = model.forward_incremental(&ids, 5).unwrap();
        let fast_steps = fast_steps.slice(ndarray::s![5.., ..]).to_owned();
        let max_steps = max_abs_diff(&plain_steps, &fast_steps);
        eprintln!("{kind}: plain vs fast, full pass max |Δ| = {max_full}, decode steps {max_steps}");
        assert!(max_steps < 0.15, "{kind}: decode steps, max |Δ| = {max_steps}");
        assert!(max_steps > 0.0, "{kind}: the integer products differ from f32 ones");
        let argmax = |row: &[f32]| row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
        let agree = plain_steps.iter().zip(fast_steps.rows()).filter(|(p, f)| argmax(p) == argmax(f.as_slice().unwrap())).count();
        assert!(agree * 10 >= plain_steps.len() * 9, "{kind}: top-1 agrees on {agree} of {}", plain_steps.len());
    }
}

fn max_abs_diff(plain: &[Vec<f32>], fast: &Array2<f32>) -> f32 {
    assert_eq!((plain.len(), plain[0].len()), fast.dim());
    plain.iter().zip(fast.rows()).flat_map(|(p, f)| p.iter().zip(f).map(|(a, b)| (a - b).abs()).collect::<Vec<_>>()).fold(0.0, f32::max)
}

#[test]
fn a_truncated_quantized_file_is_refused_naming_it() {
    let (_tmp, dir) = quantized_demo(QuantType::Q8_0);
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_error(&load_err(&dir), ErrorKind::CorruptSafetensors, &["model.safetensors"]);
}

#[test]
fn scales_that_do_not_match_the_shape_are_refused_naming_the_tensor() {
    let (_tmp, dir) = quantized_demo(QuantType::Q4_0);
    let scales = scales_name(IN_PROJ);
    rewrite(&dir, |name, _, shape, bytes| {
        if name == scales {
            shape[1] -= 1; // one block a row too few
            bytes.truncate(shape[0] * shape[1] * 2);
        }
    });
    assert_error(&load_err(&dir), ErrorKind::ShapeMismatch, &[&scales]);
}

#[test]
fn a_nan_or_infinite_scale_is_refused_naming_the_tensor_and_block() {
    for (bits, what) in [(0x7E00u16, "NaN"), (0x7C00, "inf")] {
        let (_tmp, dir) = quantized_demo(QuantType::Q8_0);
        let scales = scales_name(IN_PROJ);
        rewrite(&dir, |name, _, shape, bytes| {
            if name == scales {
                let at = 2 * (shape[1] + 1); // row 1, block 1
                bytes[at..at + 2].copy_from_slice(&bits.to_le_bytes());
            }
        });
        assert_error(&load_err(&dir), ErrorKind::NonFiniteWeight, &[IN_PROJ, "row 1, block 1", what]);
    }
}

#[test]
fn a_config_that_claims_a_format_the_tensors_do_not_have_is_refused() {
    // A float checkpoint whose config says q8_0: the scales are missing, named.
    let tmp = TempDir::new("qckpt-claims");
    let fake = tmp.join("fake");
    fs::create_dir(&fake).unwrap();
    fs::copy(demo().join("model.safetensors"), fake.join("model.safetensors")).unwrap();
    let text = fs::read_to_string(demo().join("config.json")).unwrap();
    fs::write(fake.join("config.json"), hymba_ref::checkpoint::quantized::quantized_config_text(&text, QuantType::Q8_0).unwrap()).unwrap();
    assert_error(&load_err(&fake), ErrorKind::MissingTensor, &[&scales_name(IN_PROJ)]);

    // A q8_0 checkpoint whose config says q4_0: the values have twice the bytes q4_0 needs.
    let (_tmp, dir) = quantized_demo(QuantType::Q8_0);
    let config = dir.join("config.json");
    fs::write(&config, fs::read_to_string(&config).unwrap().replace("\"q8_0\"", "\"q4_0\"")).unwrap();
    assert_error(&load_err(&dir), ErrorKind::ShapeMismatch, &[IN_PROJ]);

    // The right shapes in the wrong dtype: q8_0 values stored as U8 (q4_0's) are refused.
    let (_tmp2, dir) = quantized_demo(QuantType::Q8_0);
    rewrite(&dir, |name, dtype, _, _| {
        if name == IN_PROJ {
            *dtype = Dtype::U8;
        }
    });
    assert_error(&load_err(&dir), ErrorKind::ShapeMismatch, &[IN_PROJ, "U8", "q8_0", "I8"]);

    // A quantized checkpoint whose config says nothing: the scales are unexpected.
    let (_tmp3, dir) = quantized_demo(QuantType::Q4_0);
    fs::write(dir.join("config.json"), &text).unwrap();
    let e = load_err(&dir);
    assert!(e.to_string().contains(IN_PROJ), "{e}");
}

#[test]
fn the_quantization_key_is_checked() {
    let text = fs::read_to_string(demo().join("config.json")).unwrap();
    let with = |q: &str| text.trim_end().trim_end_matches('}').to_string() + &format!(", \"quantization\": {q}}}");
    assert_eq!(HymbaConfig::from_json_str(&with(r#"{"type": "q4_0", "block_size": 32}"#)).unwrap().quantization, Some(QuantType::Q4_0));
    for (q, needle) in [
        (r#"{"type": "q5_k", "block_size": 32}"#, "quantization.type"),
        (r#"{"type": "q8_0", "block_size": 64}"#, "quantization.block_size"),
        (r#"{"type": "q8_0"}"#, "quantization.block_size"),
        (r#"{"block_size": 32}"#, "quantization.type"),
        (r#"{"type": "q8_0", "block_size": 32, "group": 1}"#, "quantization.group"),
        (r#""q8_0""#, "quantization"),
    ] {
        let e = HymbaConfig::from_json_str(&with(q)).unwrap_err();
        assert!(e.to_string().contains(needle), "{q}: {e}");
    }
}

#[test]
fn quantize_never_overwrites_and_leaves_nothing_on_failure() {
    let tmp = TempDir::new("qckpt-safe");
    // An existing --out is refused and left as it was.
    let existing = tmp.join("existing");
    fs::create_dir(&existing).unwrap();
    fs::write(existing.join("keep.txt"), "mine").unwrap();
    let e = write_quantized(&demo(), &existing, QuantType::Q8_0, |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(fs::read_to_string(existing.join("keep.txt")).unwrap(), "mine");

    // A corrupt input fails before anything is renamed into place, and the partial directory is removed.
    let bad = tmp.join("bad");
    fs::create_dir(&bad).unwrap();
    fs::copy(demo().join("config.json"), bad.join("config.json")).unwrap();
    let bytes = fs::read(demo().join("model.safetensors")).unwrap();
    fs::write(bad.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let e = write_quantized(&bad, &tmp.join("out"), QuantType::Q4_0, |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    assert_eq!(tmp.entries(), ["bad", "existing"]);

    // Quantizing a quantized checkpoint is refused, again leaving nothing.
    let (_q, qdir) = quantized_demo(QuantType::Q8_0);
    let e = write_quantized(&qdir, &tmp.join("twice"), QuantType::Q4_0, |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("already quantized"), "{e}");
    assert_eq!(tmp.entries(), ["bad", "existing"]);
}

#[test]
fn bad_flags_exit_2_naming_the_flag_and_bad_files_exit_1() {
    let tmp = TempDir::new("qckpt-flags");
    let out = tmp.join("q");
    let run = |args: &[&str]| cli_command().args(args).output().unwrap();
    let o = run(&["quantize", "--out", out.to_str().unwrap(), "--type", "q5_0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--type"));
    let o = run(&["perplexity", "--file", "tests/fixtures/demo/heldout.txt", "--weights", "int3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--weights"));
    assert!(tmp.entries().is_empty());

    let (_q, qdir) = quantized_demo(QuantType::Q8_0);
    let o = run(&["logits", "--model", qdir.to_str().unwrap(), "--ids", "1,2", "--out", out.to_str().unwrap(), "--weights", "q4_0"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already quantized"));

    let path = qdir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..1000]).unwrap();
    let o = run(&["logits", "--model", qdir.to_str().unwrap(), "--ids", "1,2", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("model.safetensors"));
    assert!(tmp.entries().is_empty(), "nothing written: {:?}", tmp.entries());
}

/// The accuracy targets on the demo model's held-out text (the same tokens, `perplexity`'s
/// windows of 512, stride 256): q8_0 within +0.5 % of the stored bf16 weights' perplexity, q4_0
/// within +5 %. Measured: 80.5600, q8_0 80.5587, q4_0 81.2393 (+0.84 %).
#[test]
fn quantized_demo_perplexity_is_within_the_targets() {
    let dir = demo();
    let cfg = HymbaConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = HymbaWeights::load(&cfg, &dir).unwrap();
    let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo/heldout.txt")).unwrap();
    let ids = hymba_ref::tokenizer::Tokenizer::from_dir(&dir).unwrap().encode(&text, true);
    let ppl = |model: &Hymba| hymba_ref::features::eval::perplexity(model, &ids, 512, 256, |_, _, _| {}).unwrap().perplexity();
    let float = ppl(&Hymba::new(cfg.clone(), weights.clone()));
    for (kind, target) in [(QuantType::Q8_0, 1.005), (QuantType::Q4_0, 1.05)] {
        let mut qcfg = cfg.clone();
        qcfg.quantization = Some(kind);
        let q = ppl(&Hymba::new(qcfg, weights.quantized(kind).unwrap()));
        assert!(q <= float * target, "{kind}: perplexity {q} against {float} (target ≤ ×{target})");
        assert!(q != float, "{kind}: quantizing changes the perplexity");
    }
}

/// `generate --weights q8_0` shows the quantizing time in its timing line and writes the same
/// text as `generate` on the checkpoint `quantize` wrote; `chat` and `explain` take the flag too.
#[test]
fn generate_chat_and_explain_take_weights() {
    let (_tmp, dir) = quantized_demo(QuantType::Q8_0);
    let generate = |extra: &[&str]| {
        let o = cli_command()
            .args(["generate", "--prompt", "Once upon a time", "--max-new-tokens", "6", "--no-prefix-cache"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap())
    };
    let (at_load, timing) = generate(&["--weights", "q8_0"]);
    assert!(timing.contains("quantize to q8_0: "), "{timing}");
    assert_eq!(at_load, generate(&["--model", dir.to_str().unwrap()]).0);
    let o = cli_command().args(["chat", "--max-new-tokens", "2", "--weights", "q4_0"]).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli_command().args(["explain", "--prompt", "Hello there", "--json", "--weights", "q4_0"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plain = cli_command().args(["explain", "--prompt", "Hello there", "--json"]).output().unwrap();
    assert_ne!(o.stdout, plain.stdout, "explain --weights q4_0 looks at the quantized model");
}

/// Every conformance checkpoint quantized by `quantize`'s writer loads to the matrices
/// `--weights` makes (same logits, bit for bit), and the plain pass agrees with the fast full
/// pass on it as on the float weights.
#[test]
#[ignore = "needs ../shared"]
fn every_conformance_set_quantizes_and_runs() {
    let root = common::shared_dir().join("conformance");
    for name in ["tiny-seed1", "perhead-seed3", "switches-seed3"] {
        let src = root.join(name).join("model");
        let float = Hymba::from_dir(&src).unwrap();
        let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % float.config.vocab_size as u32).collect();
        for kind in QuantType::ALL {
            let tmp = TempDir::new(&format!("qconf-{name}-{kind}"));
            let out = tmp.join("q");
            write_quantized(&src, &out, kind, |_, _, _| {}).unwrap();
            let model = Hymba::from_dir(&out).unwrap();
            let mut cfg = float.config.clone();
            cfg.quantization = Some(kind);
            let at_load = Hymba::new(cfg, float.weights.quantized(kind).unwrap());
            assert_eq!(model.forward_incremental(&ids, 4).unwrap(), at_load.forward_incremental(&ids, 4).unwrap(), "{name} {kind}");
            let w = plain::Weights::from_loaded(&model.weights);
            let max = max_abs_diff(&plain::forward(&model.config, &w, &ids), &model.forward(&ids).unwrap());
            assert!(max < 1e-4, "{name} {kind}: plain vs fast full pass, max |Δ| = {max}");
        }
    }
}

//! The fuzz target bodies (`hymba_ref::fuzz_targets`) under `cargo test`, on stable Rust: each
//! over its committed seed corpus `fuzz/corpus/<target>/` (which also holds every crash input
//! found by fuzzing, as `seed-crash-*`), every truncation and header bit flip of each seed, and
//! proptest-generated inputs (arbitrary bytes, and seeds with random edits).
//!
//! `cargo test --test fuzz_corpus -- --ignored regenerate_seed_corpus` rewrites the generated
//! seeds of the checkpoint, config and index targets, `python3 fuzz/make_tokenizer_seeds.py` those
//! of the tokenizer targets (both deterministic).

mod common;

use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::safetensors::write_f32;
use hymba_ref::checkpoint::TensorSource;
use hymba_ref::checkpoint::quantized::write_quantized;
use hymba_ref::fuzz_targets::{loader_configs, LOADER_CONFIGS, TARGETS};
use hymba_ref::kernels::quant::QuantType;
use proptest::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn corpus_dir(target: &str) -> PathBuf {
    repo().join("fuzz/corpus").join(target)
}

/// The committed seeds of every target: (target, file name, bytes), read once.
fn corpus() -> &'static [(&'static str, String, Vec<u8>)] {
    static CORPUS: OnceLock<Vec<(&'static str, String, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut all = Vec::new();
        for &(target, _) in TARGETS {
            let dir = corpus_dir(target);
            let mut entries: Vec<_> = fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seed-"))
                .collect();
            entries.sort();
            for path in entries {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                all.push((target, name, fs::read(&path).unwrap()));
            }
        }
        all
    })
}

fn body(target: &str) -> fn(&[u8]) {
    TARGETS.iter().find(|(t, _)| *t == target).unwrap().1
}

/// Run `target` on `data`; on a panic, say which input it was.
fn run(target: &str, what: &str, data: &[u8]) {
    let result = std::panic::catch_unwind(|| body(target)(data));
    if let Err(panic) = result {
        let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        panic!("fuzz target {target} panicked on {what} ({} bytes): {msg:?}", data.len());
    }
}

#[test]
fn every_target_has_seeds() {
    for &(target, _) in TARGETS {
        let n = corpus().iter().filter(|(t, _, _)| *t == target).count();
        assert!(n > 0, "fuzz/corpus/{target} has no seed-* files");
    }
    let total: usize = corpus().iter().map(|(_, _, b)| b.len()).sum();
    assert!(total < 2_000_000, "the committed corpus holds {total} bytes; keep it under 2 MB");
}

#[test]
fn bodies_accept_every_seed() {
    for (target, name, data) in corpus() {
        run(target, name, data);
    }
}

#[test]
fn every_truncation_of_every_seed() {
    for (target, name, data) in corpus() {
        for len in 0..data.len() {
            run(target, &format!("{name} cut to {len} bytes"), &data[..len]);
        }
    }
}

#[test]
fn every_bit_flip_in_the_first_kilobyte_of_every_seed() {
    // The first KiB holds the safetensors length prefix and most of each header, or the
    // significant part of each JSON text.
    for (target, name, data) in corpus() {
        let mut flipped = data.clone();
        for bit in 0..data.len().min(1024) * 8 {
            flipped[bit / 8] ^= 1 << (bit % 8);
            run(target, &format!("{name} with bit {bit} flipped"), &flipped);
            flipped[bit / 8] ^= 1 << (bit % 8);
        }
    }
}

#[test]
fn trimmed_tokenizer_seeds_are_valid_tokenizers() {
    use hymba_ref::tokenizer::Tokenizer;
    let json = fs::read_to_string(corpus_dir("tokenizer_json").join("seed-hymba-trimmed.json")).unwrap();
    let model = fs::read(corpus_dir("tokenizer_model").join("seed-hymba-trimmed.model")).unwrap();
    for tok in [Tokenizer::from_json_str(&json, "json seed").unwrap(), Tokenizer::from_sp_bytes(&model, "model seed").unwrap()] {
        assert!(tok.vocab_size() >= 600, "{}", tok.vocab_size());
        let ids = tok.encode("Hello world, the tokens", false);
        // Merged pieces, not one byte per character.
        assert!(ids.len() < "Hello world, the tokens".len(), "{ids:?}");
        assert_eq!(tok.decode(&ids).unwrap(), "Hello world, the tokens");
    }
}

/// A seed of some target with a few random edits: overwrite, insert, delete, truncate.
fn mutated_seed() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let edits = prop::collection::vec((0usize..4, any::<prop::sample::Index>(), any::<u8>()), 1..8);
    (any::<prop::sample::Index>(), edits).prop_map(|(which, edits)| {
        let i = which.index(corpus().len());
        let mut data = corpus()[i].2.clone();
        for (op, at, byte) in edits {
            let at = at.index(data.len() + 1);
            match op {
                0 if at < data.len() => data[at] = byte,
                1 => data.insert(at, byte),
                2 if at < data.len() => {
                    data.remove(at);
                }
                3 => data.truncate(at),
                _ => {}
            }
        }
        (i, data)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(target in 0..TARGETS.len(), data in prop::collection::vec(any::<u8>(), 0..512)) {
        run(TARGETS[target].0, "arbitrary bytes", &data);
    }

    #[test]
    fn mutated_seeds((i, data) in mutated_seed()) {
        let (target, name, _) = &corpus()[i];
        run(target, &format!("a mutation of {name}"), &data);
    }

    #[test]
    fn seeds_fed_to_other_targets(i in any::<prop::sample::Index>(), target in 0..TARGETS.len()) {
        let (_, name, data) = &corpus()[i.index(corpus().len())];
        run(TARGETS[target].0, &format!("{name} (another target's seed)"), data);
    }
}

// ---------------------------------------------------------------------------------------------
// Regenerating the generated seeds
// ---------------------------------------------------------------------------------------------

/// A file from a header text and a data buffer.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The random weights of `LOADER_CONFIGS[i]` as an F32 safetensors file.
fn loader_model_file(i: usize, dir: &Path) -> Vec<u8> {
    let cfg = &loader_configs()[i];
    let weights = RandomWeights::new(cfg, 1);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = weights
        .names()
        .into_iter()
        .map(|n| {
            let (shape, data) = weights.to_f32(&n).unwrap();
            (n, shape, data)
        })
        .collect();
    let refs: Vec<(&str, &[usize], &[f32])> = tensors.iter().map(|(n, s, d)| (n.as_str(), &s[..], &d[..])).collect();
    let path = dir.join(format!("loader{i}.safetensors"));
    write_f32(&path, &refs).unwrap();
    fs::read(path).unwrap()
}

/// [`loader_model_file`]'s weights quantized to `kind` by `hymba-ref quantize`'s writer.
fn quantized_model_file(i: usize, kind: QuantType, dir: &Path) -> Vec<u8> {
    let src = dir.join(format!("loader{i}-float"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("config.json"), LOADER_CONFIGS[i]).unwrap();
    fs::write(src.join("model.safetensors"), loader_model_file(i, dir)).unwrap();
    let out = dir.join(format!("loader{i}-{kind}"));
    write_quantized(&src, &out, kind, |_, _, _| {}).unwrap();
    fs::read(out.join("model.safetensors")).unwrap()
}

#[test]
#[ignore = "rewrites fuzz/corpus; run by hand"]
fn regenerate_seed_corpus() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    let tmp = common::TempDir::new("seeds");

    // safetensors_bytes: every dtype family, metadata, a scalar, an empty tensor, unordered header.
    let header = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"h":{"dtype":"F16","shape":[1,2],"data_offsets":[4,8]},"f":{"dtype":"F32","shape":[],"data_offsets":[8,12]},"i":{"dtype":"I64","shape":[1],"data_offsets":[12,20]},"j":{"dtype":"I32","shape":[1],"data_offsets":[20,24]},"u":{"dtype":"U8","shape":[2],"data_offsets":[24,26]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[26,26]}}"#;
    let data: Vec<u8> = (0u8..26).collect();
    write("safetensors_bytes", "dtypes", &raw(header, &data));
    write("safetensors_bytes", "empty-header", &raw("{}", &[]));
    let unordered = r#"{"z":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}       "#;
    write("safetensors_bytes", "unordered-padded", &raw(unordered, &[0, 0, 128, 63, 0, 0, 0, 64]));
    write("safetensors_bytes", "loader-model", &loader_model_file(1, &tmp.0));

    // config_json: the fixtures' released-style configs and the loader's small configs.
    for fixture in ["silu-groups-default", "relu2-every-ntk-f16", "perhead-dynamic-sharded", "norope-nometa-nowindow"] {
        let text = fs::read(repo().join("tests/fixtures").join(fixture).join("model/config.json")).unwrap();
        write("config_json", fixture, &text);
    }
    for (i, text) in hymba_ref::fuzz_targets::LOADER_CONFIGS.iter().enumerate() {
        write("config_json", &format!("loader{i}"), text.as_bytes());
    }
    let quantized = hymba_ref::checkpoint::quantized::quantized_config_text(LOADER_CONFIGS[0], QuantType::Q4_0).unwrap();
    write("config_json", "loader0-q4_0", quantized.as_bytes());

    // shard_index: the sharded fixture's index and a minimal one.
    let index = fs::read(repo().join("tests/fixtures/perhead-dynamic-sharded/model/model.safetensors.index.json")).unwrap();
    write("shard_index", "fixture", &index);
    write("shard_index", "minimal", br#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#);

    // loader: selector byte (bit 0 picks the config, bit 7 also decodes step by step) + weights.
    for (selector, config) in [(0x00u8, 0usize), (0x81, 1)] {
        let mut bytes = vec![selector];
        bytes.extend(loader_model_file(config, &tmp.0));
        write("loader", &format!("config{config}"), &bytes);
        // quantized_loader: the same weights quantized (selector bit 1: q8_0 or q4_0).
        for (k, kind) in QuantType::ALL.into_iter().enumerate() {
            let mut bytes = vec![(config | (k << 1)) as u8];
            bytes.extend(quantized_model_file(config, kind, &tmp.0));
            write("quantized_loader", &format!("config{config}-{kind}"), &bytes);
        }
    }
}

//! The meta prefix kept on disk: a model built from the cached prefix gives bit-identical logits
//! to one that computed it, and a cache file that is corrupt, truncated or for other weights is
//! detected, ignored with a warning and rewritten.

mod common;
use common::{fixtures_dir, TempDir};
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::model::Hymba;
use hymba_ref::features::prefix_cache::{weights_key, CachedModel, PrefixCache};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fixture with meta tokens, sliding windows and K/V sharing (M = 3).
fn checkpoint() -> PathBuf {
    fixtures_dir().join("silu-groups-default/model")
}

fn build(cache: &PrefixCache, dir: &Path) -> CachedModel {
    let config = HymbaConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = HymbaWeights::load(&config, dir).unwrap();
    cache.build_model(dir, config, weights).unwrap()
}

/// The logits after each of a few ids, fed one chunk then one at a time.
fn logits(model: &Hymba) -> Vec<f32> {
    let mut seq = model.new_sequence();
    let mut out = model.next_token_logits(&[5, 17, 30, 2], &mut seq).unwrap().to_vec();
    for id in [7, 9] {
        out.extend(model.next_token_logits(&[id], &mut seq).unwrap().iter());
    }
    out
}

#[test]
fn a_cached_prefix_gives_bit_identical_logits() {
    let dir = TempDir::new("prefix-identical");
    let cache = PrefixCache::at(&dir.0);
    let fresh = Hymba::from_dir(&checkpoint()).unwrap();
    let first = build(&cache, &checkpoint());
    assert!(!first.read_from_cache && first.warnings.is_empty(), "{:?}", first.warnings);
    let key = weights_key(&checkpoint()).unwrap();
    assert!(cache.path(&key).is_file());
    let second = build(&cache, &checkpoint());
    assert!(second.read_from_cache && second.warnings.is_empty(), "{:?}", second.warnings);
    assert!(second.model.meta_prefix() == fresh.meta_prefix(), "the same K/V rows, conv and SSM state");
    let want = logits(&fresh);
    let got = logits(&second.model);
    assert_eq!(got.len(), want.len());
    let differing = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
    assert_eq!(differing, 0, "bit-identical logits");
}

#[test]
fn a_corrupt_truncated_or_foreign_cache_file_is_detected_and_rewritten() {
    let dir = TempDir::new("prefix-corrupt");
    let cache = PrefixCache::at(&dir.0);
    let key = weights_key(&checkpoint()).unwrap();
    let path = cache.path(&key);
    build(&cache, &checkpoint());
    let good = std::fs::read(&path).unwrap();
    let config = HymbaConfig::from_file(&checkpoint().join("config.json")).unwrap();
    assert!(cache.read(&config, &key).unwrap().is_some());

    let mut flipped = good.clone();
    let last = flipped.len() - 5; // inside the last tensor's values
    flipped[last] ^= 0x01;
    let mut other_key = good.clone();
    let at = other_key.windows(key.len()).position(|w| w == key.as_bytes()).unwrap();
    other_key[at] = if other_key[at] == b'0' { b'1' } else { b'0' };
    for (what, bytes, needle) in [
        ("a flipped bit", flipped, "checksum"),
        ("a truncated file", good[..good.len() - 9].to_vec(), ""),
        ("another key's file", other_key, "not the meta prefix of these weights"),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let err = cache.read(&config, &key).expect_err(what);
        assert!(err.message.contains(needle) && err.message.contains(&*path.to_string_lossy()), "{what}: {err}");
        let rebuilt = build(&cache, &checkpoint());
        assert!(!rebuilt.read_from_cache, "{what}");
        assert_eq!(rebuilt.warnings.len(), 1, "{what}");
        assert!(rebuilt.warnings[0].contains("ignoring the cached meta prefix"), "{what}: {:?}", rebuilt.warnings);
        assert_eq!(std::fs::read(&path).unwrap(), good, "{what}: rewritten");
    }
    // Only the cache file itself: the atomic writer left no temporary files.
    let entries = dir.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
}

#[test]
fn the_key_changes_with_the_weights_files() {
    let dir = TempDir::new("prefix-key");
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(checkpoint().join(name), dir.join(name)).unwrap();
    }
    let key = weights_key(&dir.0).unwrap();
    assert_eq!(key.len(), 16 + 1 + 32, "{key}");
    assert_eq!(weights_key(&dir.0).unwrap(), key, "stable");
    std::fs::write(dir.join("logits.safetensors"), b"not part of the checkpoint").unwrap();
    assert_eq!(weights_key(&dir.0).unwrap(), key, "only the checkpoint's files count");
    let cache = PrefixCache::at(dir.join("cache"));
    build(&cache, &dir.0);
    let file = std::fs::OpenOptions::new().append(true).open(dir.join("config.json")).unwrap();
    file.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1)).unwrap();
    let new_key = weights_key(&dir.0).unwrap();
    assert_ne!(new_key, key, "a new modification time");
    assert_eq!(new_key[..17], key[..17], "the same directory");
    // The prefix of the changed weights replaces the old one.
    assert!(!build(&cache, &dir.0).read_from_cache);
    let files: Vec<_> = std::fs::read_dir(dir.join("cache")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files, [cache.path(&new_key)]);
}

#[test]
fn generate_reads_the_prefix_it_cached_and_no_prefix_cache_bypasses_it() {
    let home = TempDir::new("prefix-cli");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hymba-ref"))
            .args(["generate", "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "12"])
            .args(extra)
            .env("XDG_CACHE_HOME", &home.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (text, err) = run(&["--no-prefix-cache"]);
    assert!(err.contains("meta prefix: ") && err.contains("(computed)"), "{err}");
    assert!(!home.join("hymba-ref").exists(), "--no-prefix-cache writes nothing");
    let (first, err) = run(&[]);
    assert!(err.contains("(computed)"), "{err}");
    let files: Vec<_> = std::fs::read_dir(home.join("hymba-ref")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    let (second, err) = run(&[]);
    assert!(err.contains("(cached)"), "{err}");
    assert_eq!((&first, &second), (&text, &text));
    // A damaged file: a warning, the same text, and a good file again.
    let good = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &good[..good.len() / 2]).unwrap();
    let (third, err) = run(&[]);
    assert!(err.contains("warning: ignoring the cached meta prefix"), "{err}");
    assert_eq!(third, text);
    assert_eq!(std::fs::read(&files[0]).unwrap(), good);
}

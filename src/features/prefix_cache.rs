//! The meta-token prefix, computed once per model rather than once per process.
//!
//! Every sequence starts with the M meta tokens, and the state after them (each K/V-producing
//! layer's M key and value rows, each layer's conv and SSM state) does not depend on the prompt
//! (docs/MODEL.md §5.1). Computing it is a prefill of M tokens through every layer:
//! for Hymba-1.5B, 128 tokens through 32 layers, seconds on a laptop, before the first token of
//! every run. So the state is kept on disk, as a safetensors file in the user's cache directory
//! (`$XDG_CACHE_HOME/hymba-ref/`, else `~/.cache/hymba-ref/`):
//!
//! ```text
//! prefix-<directory>-<weights>.safetensors
//!   layers.{i}.keys       F32 (M, nkv·dqk)   K/V-producing layers only, rows in cache order
//!   layers.{i}.values     F32 (M, nkv·dv)
//!   layers.{i}.positions  I64 (M)
//!   layers.{i}.conv       F32 (K−1, D)       every layer
//!   layers.{i}.scan       F32 (D, N)
//!   __metadata__: {"key": <key>, "format": FORMAT, "checksum": <hash of every tensor>}
//! ```
//!
//! The key identifies the weights cheaply, without reading them: `<directory>` is a hash of the
//! checkpoint directory's path, `<weights>` one of the engine version, the file format, the
//! running executable's size and modification time (a rebuilt engine may round differently, and
//! must not read a prefix an older build computed), and for `config.json` and each weights file (`model.safetensors`, or the index and the shards it
//! names) its name, size, modification time and (for safetensors) header. Writing a prefix
//! removes the directory's older ones, so changed weights do not pile up files. Reading checks the key, every name,
//! shape and dtype against the config, the positions, every value finite, and the checksum of
//! the values (so a flipped bit is caught too); a file
//! that fails is reported (the caller warns, recomputes and rewrites it, atomically: readers
//! never see a half-written file). Values round-trip exactly, so a model built from the file
//! gives bit-identical logits (tested).

use crate::state::cache::HybridCache;
use crate::checkpoint::shards::{INDEX_FILE, SINGLE_FILE};
use crate::checkpoint::{check_finite, parse_index, write_tensors, NamedTensor, SafetensorsFile, TensorData};
use crate::checkpoint::weights::HymbaWeights;
use crate::config::HymbaConfig;
use crate::model::Hymba;
use crate::base::error::{Error, ErrorKind, Result};
use ndarray::Array2;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The layout version of the file; part of the key.
const FORMAT: &str = "hymba-ref meta prefix 1";

/// Where prefixes are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixCache {
    dir: PathBuf,
}

impl PrefixCache {
    /// `$XDG_CACHE_HOME/hymba-ref`, else `$HOME/.cache/hymba-ref`; `None` if neither is set.
    pub fn user_default() -> Option<PrefixCache> {
        let non_empty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
        let base = non_empty("XDG_CACHE_HOME").or_else(|| non_empty("HOME").map(|home| home.join(".cache")))?;
        Some(PrefixCache::at(base.join("hymba-ref")))
    }

    /// Prefixes kept in `dir` (created when the first one is written).
    pub fn at(dir: impl Into<PathBuf>) -> PrefixCache {
        PrefixCache { dir: dir.into() }
    }

    /// The file holding the prefix of the weights with `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("prefix-{key}.safetensors"))
    }

    /// The prefix stored for `key`: `Ok(None)` if there is none, an error if the file is there
    /// but unreadable, corrupt or not for this key and config.
    pub fn read(&self, cfg: &HymbaConfig, key: &str) -> Result<Option<HybridCache>> {
        let path = self.path(key);
        if !path.exists() {
            return Ok(None);
        }
        let file = SafetensorsFile::open(&path)?;
        read_prefix(cfg, key, &file).map(Some).map_err(|e| e.context(path.display()))
    }

    /// Store `prefix` for `key`, replacing any file there atomically, and remove the prefixes
    /// of the same directory under other keys (its weights changed since).
    pub fn write(&self, cfg: &HymbaConfig, key: &str, prefix: &HybridCache) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, "create", e))?;
        let arrays = prefix_arrays(cfg, prefix);
        let tensors: Vec<NamedTensor> = arrays.iter().map(|(name, shape, data)| (name.as_str(), shape.as_slice(), data.as_tensor())).collect();
        let checksum = checksum(&arrays);
        write_tensors(&self.path(key), &tensors, &[("key", key), ("format", FORMAT), ("checksum", &checksum)])?;
        let directory = key.split('-').next().unwrap_or(key);
        let stale = |name: &str| name.starts_with(&format!("prefix-{directory}-")) && name != format!("prefix-{key}.safetensors");
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if entry.file_name().to_str().is_some_and(stale) {
                let _ = std::fs::remove_file(entry.path()); // best effort: a stale file is only wasted space
            }
        }
        Ok(())
    }
}

/// A model whose meta prefix came from the cache, or was computed (and stored).
pub struct CachedModel {
    pub model: Hymba,
    /// Whether the prefix was read from the cache (else computed).
    pub read_from_cache: bool,
    /// What went wrong with the cache without stopping the load: a corrupt file ignored, a
    /// file that could not be written.
    pub warnings: Vec<String>,
}

impl PrefixCache {
    /// Build the model of the checkpoint in `dir` from its config and weights, with the meta
    /// prefix read from this cache when a valid one is there, else computed and stored.
    pub fn build_model(&self, dir: &Path, config: HymbaConfig, weights: HymbaWeights) -> Result<CachedModel> {
        let key = weights_key(dir)?;
        let mut warnings = Vec::new();
        match self.read(&config, &key) {
            Ok(Some(prefix)) => {
                let model = Hymba::with_meta_prefix(config, weights, prefix);
                return Ok(CachedModel { model, read_from_cache: true, warnings });
            }
            Ok(None) => {}
            Err(e) => warnings.push(format!("ignoring the cached meta prefix ({e}); computing it again")),
        }
        let model = Hymba::new(config, weights);
        if let Err(e) = self.write(&model.config, &key, model.meta_prefix()) {
            warnings.push(format!("cannot cache the meta prefix: {e}"));
        }
        Ok(CachedModel { model, read_from_cache: false, warnings })
    }
}

/// A file's modification time in ns since the epoch (0 where the system does not keep one).
fn modified_nanos(meta: &std::fs::Metadata) -> u128 {
    meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default().as_nanos()
}

/// The key of the checkpoint in `dir` (see the module docs): `<16 hex digits>-<32 hex digits>`.
pub fn weights_key(dir: &Path) -> Result<String> {
    let mut directory = Fnv128::new();
    let canonical = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, "resolve", e))?;
    directory.write(canonical.as_os_str().as_encoded_bytes());
    let mut weights = Fnv128::new();
    weights.write(FORMAT.as_bytes());
    weights.write(env!("CARGO_PKG_VERSION").as_bytes());
    if let Some(exe) = std::env::current_exe().ok().and_then(|exe| std::fs::metadata(exe).ok()) {
        weights.write(&exe.len().to_le_bytes());
        weights.write(&modified_nanos(&exe).to_le_bytes());
    }
    for name in checkpoint_files(dir)? {
        let path = dir.join(&name);
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, "read the metadata of", e))?;
        weights.write(name.as_bytes());
        weights.write(&meta.len().to_le_bytes());
        weights.write(&modified_nanos(&meta).to_le_bytes());
        if name.ends_with(".safetensors") {
            weights.write(&header_bytes(&path)?);
        }
    }
    Ok(format!("{}-{}", &directory.hex()[..16], weights.hex()))
}

/// The files the weights come from: `config.json` and `model.safetensors`, or `config.json`, the
/// index and the shards it names (as [`crate::checkpoint::Checkpoint::open_dir`] chooses).
fn checkpoint_files(dir: &Path) -> Result<Vec<String>> {
    let mut files = vec!["config.json".to_string()];
    if dir.join(SINGLE_FILE).is_file() {
        files.push(SINGLE_FILE.to_string());
        return Ok(files);
    }
    let index_path = dir.join(INDEX_FILE);
    let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, "read", e))?;
    let index = parse_index(&text, &index_path.display().to_string())?;
    files.push(INDEX_FILE.to_string());
    files.extend(index.shard_files().into_iter().map(str::to_string));
    Ok(files)
}

/// The 8-byte length and the JSON header of a safetensors file (at most 100 MB are read).
fn header_bytes(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut bytes = Vec::new();
    let mut reader = file.take(8);
    reader.read_to_end(&mut bytes).map_err(|e| Error::io(path, "read", e))?;
    let len = bytes.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let mut file = reader.into_inner().take(len.min(100 << 20));
    file.read_to_end(&mut bytes).map_err(|e| Error::io(path, "read", e))?;
    Ok(bytes)
}

/// FNV-1a with 128-bit state: a stable, dependency-free hash (not a cryptographic one: the key
/// only has to change when the files do).
struct Fnv128(u128);

impl Fnv128 {
    fn new() -> Fnv128 {
        Fnv128(0x6c62_272e_07bb_0142_62b8_2175_6295_c58d)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
            self.0 = (self.0 ^ u128::from(b)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
        }
    }
    /// A whole word at once (values are hashed by the million).
    fn write_word(&mut self, word: u64) {
        self.0 = (self.0 ^ u128::from(word)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
    }
    fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// A hash of every tensor's name, shape and values, in file order: 32 hex digits. Changing any
/// one value changes it (each step of the hash is a bijection of its state).
fn checksum(arrays: &[(String, Vec<usize>, Data)]) -> String {
    let mut hash = Fnv128::new();
    for (name, shape, data) in arrays {
        hash.write(name.as_bytes());
        shape.iter().for_each(|&d| hash.write_word(d as u64));
        match data {
            Data::F32(v) => v.iter().for_each(|x| hash.write_word(u64::from(x.to_bits()))),
            Data::I64(v) => v.iter().for_each(|&x| hash.write_word(x as u64)),
        }
    }
    hash.hex()
}

/// A tensor of the file, owned.
enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Data {
    fn as_tensor(&self) -> TensorData<'_> {
        match self {
            Data::F32(v) => TensorData::F32(v),
            Data::I64(v) => TensorData::I64(v),
        }
    }
}

fn standard(a: ndarray::ArrayView2<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// The file's tensors for `prefix`: (name, shape, values).
fn prefix_arrays(cfg: &HymbaConfig, prefix: &HybridCache) -> Vec<(String, Vec<usize>, Data)> {
    let mut out = Vec::new();
    for (i, (kv, ssm)) in prefix.kv.iter().zip(&prefix.ssm).enumerate() {
        if let Some(kv) = kv {
            let rows = kv.len();
            let keys = kv.keys().to_rows(); // (S, nkv, dqk)
            let keys = keys.to_shape((rows, cfg.num_key_value_heads * cfg.head_dim_qk())).expect("(S, nkv·dqk)");
            let values = kv.values(); // (S, nkv, dv)
            let values = values.to_shape((rows, cfg.num_key_value_heads * cfg.head_dim_v())).expect("(S, nkv·dv)");
            out.push((format!("layers.{i}.keys"), vec![rows, keys.ncols()], Data::F32(standard(keys.view()))));
            out.push((format!("layers.{i}.values"), vec![rows, values.ncols()], Data::F32(standard(values.view()))));
            let positions = kv.positions().iter().map(|&p| p as i64).collect();
            out.push((format!("layers.{i}.positions"), vec![rows], Data::I64(positions)));
        }
        out.push((format!("layers.{i}.conv"), ssm.conv.shape().to_vec(), Data::F32(standard(ssm.conv.view()))));
        out.push((format!("layers.{i}.scan"), ssm.scan.shape().to_vec(), Data::F32(standard(ssm.scan.view()))));
    }
    out
}

fn corrupt(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::CorruptSafetensors, message)
}

/// Rebuild the state after the meta tokens from `file`, checking it against `key` and `cfg`.
fn read_prefix(cfg: &HymbaConfig, key: &str, file: &SafetensorsFile) -> Result<HybridCache> {
    let meta = file.metadata();
    if meta.get("format").map(String::as_str) != Some(FORMAT) || meta.get("key").map(String::as_str) != Some(key) {
        return Err(corrupt(format!("not the meta prefix of these weights (format {:?}, key {:?})", meta.get("format"), meta.get("key"))));
    }
    let m = cfg.num_memory_tokens;
    let mut prefix = HybridCache::new(cfg);
    let f32_tensor = |name: &str, shape: &[usize]| -> Result<Array2<f32>> {
        let (got, values) = file.to_f32(name)?;
        if got != shape {
            return Err(corrupt(format!("tensor '{name}' has shape {got:?}, expected {shape:?}")));
        }
        check_finite(name, &values)?;
        Array2::from_shape_vec((shape[0], shape[1]), values).map_err(|e| corrupt(format!("{name}: {e}")))
    };
    let (nkv, dqk, dv) = (cfg.num_key_value_heads, cfg.head_dim_qk(), cfg.head_dim_v());
    for (i, (kv, ssm)) in prefix.kv.iter_mut().zip(prefix.ssm.iter_mut()).enumerate() {
        if let Some(kv) = kv {
            let keys = f32_tensor(&format!("layers.{i}.keys"), &[m, nkv * dqk])?;
            let values = f32_tensor(&format!("layers.{i}.values"), &[m, nkv * dv])?;
            let name = format!("layers.{i}.positions");
            let (shape, positions) = file.to_i64(&name)?;
            let mut sorted = positions.clone();
            sorted.sort_unstable();
            if shape != [m] || sorted != (0..m as i64).collect::<Vec<_>>() {
                return Err(corrupt(format!("tensor '{name}' does not hold the positions 0..{m}")));
            }
            let positions: Vec<usize> = positions.into_iter().map(|p| p as usize).collect();
            kv.append(keys.view(), values.view(), &positions);
        }
        ssm.conv.assign(&f32_tensor(&format!("layers.{i}.conv"), ssm.conv.shape())?);
        ssm.scan.assign(&f32_tensor(&format!("layers.{i}.scan"), ssm.scan.shape())?);
    }
    let arrays = prefix_arrays(cfg, &prefix);
    if file.tensors().count() != arrays.len() {
        return Err(corrupt("holds tensors the config does not explain"));
    }
    if meta.get("checksum") != Some(&checksum(&arrays)) {
        return Err(corrupt("its values do not match their checksum"));
    }
    prefix.next_position = m;
    Ok(prefix)
}

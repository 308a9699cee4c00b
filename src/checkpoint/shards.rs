//! A checkpoint directory: one `model.safetensors`, or shards listed in an index.
//!
//! Large Hugging Face checkpoints are split into shards (`model-00001-of-00002.safetensors`, ...)
//! next to `model.safetensors.index.json`:
//!
//! ```json
//! {
//!   "metadata": {"total_size": 123456},
//!   "weight_map": {
//!     "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
//!     "lm_head.weight": "model-00002-of-00002.safetensors"
//!   }
//! }
//! ```
//!
//! [`Checkpoint::open_dir`] opens every shard and checks the index against what the shards really
//! hold: every listed tensor lives in exactly the shard the index names, no tensor lives in two
//! shards, and no shard holds a tensor the index does not list. Shard names must be plain file
//! names in the same directory (an index cannot point at `../elsewhere`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::json_text::brief;
use crate::base::json_scan::{count_keys, first_duplicate_key};
use super::safetensors::{Dtype, SafetensorsFile, TensorInfo, MAX_METADATA_ENTRIES, MAX_TENSORS};
use crate::base::error::{Error, ErrorKind, Result};
use crate::kernels::matrix::Elements;
use crate::base::values::Values;

/// The unsharded checkpoint file.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The most keys an index may hold: a weight map of [`MAX_TENSORS`] and a small `metadata`
/// (counted before parsing, so an index of millions of entries is refused without building them).
const MAX_INDEX_KEYS: usize = MAX_TENSORS + MAX_METADATA_ENTRIES;

/// A parsed `model.safetensors.index.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardIndex {
    /// The free-form `metadata` object (usually `total_size`); empty if absent.
    pub metadata: Map<String, Value>,
    /// Tensor name to shard file name.
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// The distinct shard file names, sorted.
    pub fn shard_files(&self) -> Vec<&str> {
        let mut files: Vec<&str> = self.weight_map.values().map(String::as_str).collect();
        files.sort_unstable();
        files.dedup();
        files
    }
}

fn index_error(origin: &str, message: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::ShardIndex, format!("{origin}: {message}"))
}

/// Parse the text of a shard index; `origin` names it in error messages.
pub fn parse_index(json_text: &str, origin: &str) -> Result<ShardIndex> {
    let keys = count_keys(json_text, None);
    if keys > MAX_INDEX_KEYS {
        let why = format!("holds {keys} keys; an index may list at most {MAX_TENSORS} tensors");
        return Err(index_error(origin, why));
    }
    let value: Value = serde_json::from_str(json_text)
        .map_err(|e| index_error(origin, format!("not valid JSON: {e}")))?;
    if let Some(key) = first_duplicate_key(json_text) {
        return Err(index_error(origin, format!("the key '{key}' appears twice in one object")));
    }
    let Value::Object(mut top) = value else {
        return Err(index_error(origin, "must be a JSON object with a \"weight_map\""));
    };
    let metadata = match top.remove("metadata") {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(index_error(origin, "\"metadata\" must be an object")),
    };
    let Some(weight_map) = top.remove("weight_map") else {
        return Err(index_error(origin, "has no \"weight_map\""));
    };
    let weight_map = parse_weight_map(weight_map, origin)?;
    Ok(ShardIndex { metadata, weight_map })
}

fn parse_weight_map(value: Value, origin: &str) -> Result<BTreeMap<String, String>> {
    let Value::Object(map) = value else {
        return Err(index_error(
            origin,
            "\"weight_map\" must be an object of tensor name to shard file",
        ));
    };
    map.into_iter()
        .map(|(tensor, shard)| match shard {
            Value::String(file) if is_plain_file_name(&file) => Ok((tensor, file)),
            other => Err(index_error(
                origin,
                format!(
                    "weight_map maps '{tensor}' to {}, which is not a file name in this directory",
                    brief(&other)
                ),
            )),
        })
        .collect()
}

/// True for `model-00001.safetensors`; false for `""`, `..`, `a/b`, `/abs`, and names with a NUL
/// byte (no file system allows one; found by the `shard_index` fuzz target, where such a name was
/// reported as a shard that "does not exist").
fn is_plain_file_name(name: &str) -> bool {
    !name.contains('\0') && Path::new(name).file_name().is_some_and(|f| f == name)
}

/// The tensors of a checkpoint directory, whether in one file or in shards.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor name to index into `files`.
    file_of: HashMap<String, usize>,
}

/// Shows the directory and the files, not the bytes.
impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("dir", &self.dir).field("files", &self.files).finish()
    }
}

impl Checkpoint {
    /// Open `dir/model.safetensors` if it exists, else the shards listed in
    /// `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Checkpoint> {
        let single = dir.join(SINGLE_FILE);
        if single.exists() {
            let file = SafetensorsFile::open(&single)?;
            let file_of = locate_tensors(std::slice::from_ref(&file))?;
            return Ok(Checkpoint { dir: dir.to_path_buf(), files: vec![file], file_of });
        }
        let index = dir.join(INDEX_FILE);
        if index.exists() {
            return Self::open_sharded(dir, &index);
        }
        let message = format!("{}: found neither {SINGLE_FILE} nor {INDEX_FILE}", dir.display());
        Err(Error::new(ErrorKind::Io, message))
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Checkpoint> {
        let origin = index_path.display().to_string();
        let bytes = crate::base::files::read_capped(index_path, crate::base::files::SHARD_INDEX)?;
        let text =
            std::str::from_utf8(&bytes).map_err(|_| index_error(&origin, "is not valid UTF-8"))?;
        let index = parse_index(text, &origin)?;
        let shard_names = index.shard_files();
        let mut files = Vec::with_capacity(shard_names.len());
        let mut held = 0;
        for name in &shard_names {
            let file = open_shard(dir, name, &origin)?;
            check_all_listed(&index, name, &file, &origin)?;
            held += file.tensors().count();
            files.push(file);
            if held > index.weight_map.len() {
                // Every tensor is listed, so more tensors than entries means one is in two shards:
                // stop before opening more shards and say which.
                locate_tensors(&files)?;
            }
        }
        let file_of = locate_tensors(&files)?;
        check_against_index(&index, &shard_names, &file_of, &origin)?;
        Ok(Checkpoint { dir: dir.to_path_buf(), files, file_of })
    }

    /// The directory this checkpoint was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.file_of.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.file_of.get(name).and_then(|&i| self.files[i].get(name))
    }

    /// Shape and values of an `F32`, `F16` or `BF16` tensor, as `f32`.
    pub fn to_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        match self.file_of.get(name) {
            Some(&i) => self.files[i].to_f32(name),
            None => Err(Error::new(
                ErrorKind::MissingTensor,
                format!("{}: the checkpoint has no tensor named '{name}'", self.dir.display()),
            )),
        }
    }

    /// Shape and values of an `F32`, `F16` or `BF16` tensor, kept in that dtype.
    pub fn to_elements(&self, name: &str) -> Result<(Vec<usize>, Elements)> {
        match self.file_of.get(name) {
            Some(&i) => self.files[i].to_elements(name),
            None => Err(Error::new(
                ErrorKind::MissingTensor,
                format!("{}: the checkpoint has no tensor named '{name}'", self.dir.display()),
            )),
        }
    }

    /// Shape, dtype and stored bytes of any tensor (see [`SafetensorsFile::to_bytes`]).
    pub fn to_bytes(&self, name: &str) -> Result<(Vec<usize>, Dtype, Values<u8>)> {
        match self.file_of.get(name) {
            Some(&i) => self.files[i].to_bytes(name),
            None => Err(Error::new(
                ErrorKind::MissingTensor,
                format!("{}: the checkpoint has no tensor named '{name}'", self.dir.display()),
            )),
        }
    }

    /// [`SafetensorsFile::about_to_copy`] on the file holding `name`, if any.
    pub fn about_to_copy(&self, name: &str) {
        if let Some(&i) = self.file_of.get(name) {
            self.files[i].about_to_copy(name);
        }
    }

    /// [`SafetensorsFile::done_with`] on the file holding `name`, if any.
    pub fn done_with(&self, name: &str) {
        if let Some(&i) = self.file_of.get(name) {
            self.files[i].done_with(name);
        }
    }

    /// Bytes of tensor data over all files (headers excluded).
    pub fn total_bytes(&self) -> usize {
        self.files.iter().flat_map(|f| f.tensors()).map(TensorInfo::byte_len).sum()
    }
}

fn open_shard(dir: &Path, name: &str, index_origin: &str) -> Result<SafetensorsFile> {
    let path = dir.join(name);
    if !path.exists() {
        let why = format!("lists shard '{name}', but {} does not exist", path.display());
        return Err(index_error(index_origin, why));
    }
    SafetensorsFile::open(&path)
}

/// Every tensor of shard `name` is listed in the index (checked as each shard opens, so extra
/// shards full of unlisted entries are refused at the first of them).
fn check_all_listed(index: &ShardIndex, name: &str, file: &SafetensorsFile, origin: &str) -> Result<()> {
    match file.tensors().find(|t| !index.weight_map.contains_key(&t.name)) {
        None => Ok(()),
        Some(tensor) => {
            Err(index_error(origin, format!("does not list tensor '{}', which {name} holds", tensor.name)))
        }
    }
}

/// Which file holds each tensor; a tensor in two files is an error.
fn locate_tensors(files: &[SafetensorsFile]) -> Result<HashMap<String, usize>> {
    let mut file_of = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        for tensor in file.tensors() {
            if let Some(j) = file_of.insert(tensor.name.clone(), i) {
                let why = format!(
                    "tensor '{}' is stored in both {} and {}",
                    tensor.name,
                    files[j].origin(),
                    file.origin()
                );
                return Err(Error::new(ErrorKind::ShardIndex, why));
            }
        }
    }
    Ok(file_of)
}

/// Every indexed tensor lives in the shard the index names.
fn check_against_index(
    index: &ShardIndex,
    shard_names: &[&str],
    file_of: &HashMap<String, usize>,
    origin: &str,
) -> Result<()> {
    for (tensor, shard) in &index.weight_map {
        match file_of.get(tensor).map(|&i| shard_names[i]) {
            Some(actual) if actual == shard => {}
            Some(actual) => {
                let why =
                    format!("maps tensor '{tensor}' to {shard}, but it is stored in {actual}");
                return Err(index_error(origin, why));
            }
            None => {
                let why = format!("maps tensor '{tensor}' to {shard}, but no shard holds it");
                return Err(index_error(origin, why));
            }
        }
    }
    // Stored but unlisted tensors were refused as each shard opened (`check_all_listed`).
    Ok(())
}

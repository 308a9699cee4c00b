//! One error type for everything a user can get wrong.
//!
//! Every error carries a [`ErrorKind`] (what class of problem, for tests and exit codes) and a
//! message that names the culprit: the file, tensor, config field, token id or flag. Nothing in
//! the library panics on user input; functions that read user input return [`Result`].

use std::fmt;
use std::path::Path;

/// The class of a failure. Tests assert on the kind; users read the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A file could not be opened, read or written.
    Io,
    /// A safetensors file is truncated or corrupt (header, JSON, offsets, lengths).
    CorruptSafetensors,
    /// A safetensors tensor has a dtype we cannot convert to f32.
    UnknownDtype,
    /// `model.safetensors.index.json` is malformed or names files that do not exist.
    ShardIndex,
    /// A tensor the config requires is not in the checkpoint.
    MissingTensor,
    /// The checkpoint holds a tensor the config does not explain.
    UnexpectedTensor,
    /// A tensor's shape differs from the shape the config implies.
    ShapeMismatch,
    /// A weight contains NaN or infinity.
    NonFiniteWeight,
    /// `config.json` is malformed or holds an invalid value (zero heads, bad groups, ...).
    InvalidConfig,
    /// `config.json` asks for a feature no released model uses and this engine refuses.
    UnsupportedConfig,
    /// A tokenizer file (`tokenizer.json`, `tokenizer.model`) is malformed.
    Tokenizer,
    /// A token id is not below the vocabulary size.
    TokenIdOutOfRange,
    /// Any other bad user input: non-UTF-8 text, an empty file, ...
    InvalidInput,
    /// A command-line flag has a value that cannot work (`--stride` not below `--context`,
    /// `--prefill` past the ids): the command line, not a file, is wrong. The CLI exits with 2.
    Usage,
    /// The computation produced a non-finite value (reported, never silently passed on).
    NonFiniteOutput,
}

/// An error with its kind and a message naming what is wrong and where.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }

    /// An I/O error on `path`, e.g. `cannot read model/config.json: No such file or directory`.
    pub fn io(path: &Path, action: &str, err: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, format!("cannot {action} {}: {err}", path.display()))
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidConfig, message)
    }

    pub fn input(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }

    /// A bad value of `flag` (e.g. `--stride`): `--stride 8: must be below --context (8)`.
    pub fn usage(flag: &str, value: impl fmt::Display, problem: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Usage, format!("{flag} {value}: {problem}"))
    }

    /// Prefix the message with where it happened, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error { kind: self.kind, message: format!("{what}: {}", self.message) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

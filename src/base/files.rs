//! Reading and writing the files a user names, without trusting them.
//!
//! Every file the engine reads goes through [`read_capped`] (or [`open_regular`], for the
//! memory-mapped weights): it must be a regular file after following symbolic links, so a FIFO
//! cannot hang a load and `/dev/zero` cannot fill memory, and it may hold at most the bytes
//! allowed for its kind ([`Cap`]), so nothing is read or allocated beyond that. Standard input is
//! read with the same kind of cap ([`read_stdin_capped`]).
//!
//! Output goes through [`write_output`]: a regular file is replaced atomically (temporary file,
//! then rename), a pipe or character device (`/dev/stdout`, `/dev/null`) is written through,
//! and nothing else (a directory, a block device, a dangling link) is ever replaced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::base::error::{Error, ErrorKind, Result};

/// A kind of input file and the most bytes one may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// What the file is, for messages: "config file", "tokenizer file", ...
    pub what: &'static str,
    pub max_bytes: u64,
}

/// `config.json`, `generation_config.json`, `tokenizer_config.json` (released ones: ~2 KB).
pub const CONFIG: Cap = Cap { what: "config file", max_bytes: 1 << 20 };
/// `model.safetensors.index.json` (Hymba-1.5B's: 60 KB).
pub const SHARD_INDEX: Cap = Cap { what: "shard index", max_bytes: 16 << 20 };
/// `tokenizer.json` and `tokenizer.model` (Hymba's: 1.8 MB and 0.5 MB).
pub const TOKENIZER: Cap = Cap { what: "tokenizer file", max_bytes: 32 << 20 };
/// Texts and id lists to read: `perplexity --file`, `--prompts-file`, stdin.
pub const TEXT: Cap = Cap { what: "text input", max_bytes: 256 << 20 };
/// A safetensors file is memory-mapped, not read, so only its header is bounded (100 MB, see
/// `checkpoint::safetensors`); this cap only says the file is a regular file.
pub const WEIGHTS: Cap = Cap { what: "safetensors file", max_bytes: u64::MAX };

/// Open `path` for reading if it is a regular file (after following symbolic links) of at most
/// `cap.max_bytes`; its length. A FIFO, device, socket or directory is refused before it is
/// opened, so opening never blocks.
pub fn open_regular(path: &Path, cap: Cap) -> Result<(File, u64)> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, "read", e))?;
    check_regular(path, &meta, cap)?;
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    // The path could have been swapped between the two looks: check what was opened.
    let meta = file.metadata().map_err(|e| Error::io(path, "read", e))?;
    check_regular(path, &meta, cap)?;
    Ok((file, meta.len()))
}

fn check_regular(path: &Path, meta: &fs::Metadata, cap: Cap) -> Result<()> {
    if !meta.is_file() {
        let message = format!(
            "cannot read {}: it is {}, not a regular file (a {} must be a regular file)",
            path.display(),
            describe_type(&meta.file_type()),
            cap.what
        );
        return Err(Error::new(ErrorKind::Io, message));
    }
    if meta.len() > cap.max_bytes {
        return Err(too_large(&path.display().to_string(), Some(meta.len()), cap));
    }
    Ok(())
}

fn too_large(origin: &str, len: Option<u64>, cap: Cap) -> Error {
    let size = len.map_or_else(|| "larger than that".to_string(), |n| format!("{n} bytes"));
    let message = format!(
        "cannot read {origin}: a {} may hold at most {} bytes, and it is {size}",
        cap.what, cap.max_bytes
    );
    Error::new(ErrorKind::InvalidInput, message)
}

/// "a FIFO (named pipe)", "a directory", ...: what a non-regular file is.
fn describe_type(t: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// The bytes of the regular file `path`, at most `cap.max_bytes` of them (checked before
/// reading, and again while reading, in case the file grows).
pub fn read_capped(path: &Path, cap: Cap) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path, cap)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    read_bounded(file, &mut bytes, cap).map_err(|e| match e {
        Bounded::Io(e) => Error::io(path, "read", e),
        Bounded::TooLarge => too_large(&path.display().to_string(), None, cap),
    })?;
    Ok(bytes)
}

/// [`read_capped`], as UTF-8 text; invalid UTF-8 is an error naming the file and the offset.
pub fn read_text_capped(path: &Path, cap: Cap) -> Result<String> {
    utf8(read_capped(path, cap)?, &path.display().to_string())
}

/// [`read_capped`], or `None` if `path` does not exist.
pub fn read_optional(path: &Path, cap: Cap) -> Result<Option<Vec<u8>>> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        _ => read_capped(path, cap).map(Some),
    }
}

/// All of standard input, at most `cap.max_bytes` bytes.
pub fn read_stdin_capped(cap: Cap) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    read_bounded(io::stdin().lock(), &mut bytes, cap).map_err(|e| match e {
        Bounded::Io(e) => Error::new(ErrorKind::Io, format!("cannot read stdin: {e}")),
        Bounded::TooLarge => too_large("stdin", None, cap),
    })?;
    Ok(bytes)
}

/// `bytes` as a `String`, or an error naming `origin` and the first invalid byte.
pub fn utf8(bytes: Vec<u8>, origin: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        Error::input(format!("{origin} is not valid UTF-8 (invalid byte at offset {offset})"))
    })
}

enum Bounded {
    Io(io::Error),
    TooLarge,
}

/// Read all of `source` into `bytes`, failing once more than `cap.max_bytes` arrive.
fn read_bounded(source: impl Read, bytes: &mut Vec<u8>, cap: Cap) -> std::result::Result<(), Bounded> {
    source.take(cap.max_bytes.saturating_add(1)).read_to_end(bytes).map_err(Bounded::Io)?;
    if bytes.len() as u64 > cap.max_bytes {
        return Err(Bounded::TooLarge);
    }
    Ok(())
}

/// Where [`write_output`] sends the bytes for a given path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// A regular file, or nothing yet: write a temporary sibling of this path (the real file,
    /// symbolic links resolved, so a link stays a link) and rename it over the path.
    Replace(PathBuf),
    /// A FIFO or character device (`/dev/stdout`, `/dev/null`, a pipe): write through it.
    WriteThrough,
}

/// What writing to `path` will do; refuses a directory, a block device, a socket and a dangling
/// symbolic link, none of which may be replaced or written.
pub fn output_target(path: &Path) -> Result<OutputTarget> {
    let refuse = |why: &str| Error::input(format!("cannot write {}: {why}", path.display()));
    let link = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(OutputTarget::Replace(path.to_path_buf())),
        Err(e) => return Err(Error::io(path, "inspect", e)),
        Ok(meta) => meta,
    };
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(_) if link.file_type().is_symlink() => {
            return Err(refuse("it is a symbolic link to nothing (refusing to guess where to write)"))
        }
        Err(e) => return Err(Error::io(path, "inspect", e)),
    };
    if meta.is_file() {
        let real = fs::canonicalize(path).map_err(|e| Error::io(path, "resolve", e))?;
        return Ok(OutputTarget::Replace(real));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_fifo() || meta.file_type().is_char_device() {
            return Ok(OutputTarget::WriteThrough);
        }
    }
    Err(refuse(&format!(
        "it is {}, which is never replaced (give a regular file, a pipe or a character device)",
        describe_type(&meta.file_type())
    )))
}

/// Write the bytes `fill` produces to `path`, as [`output_target`] decides. Replacing is atomic:
/// on failure no partial output is left and an existing file is untouched.
pub fn write_output(path: &Path, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    match output_target(path)? {
        OutputTarget::Replace(real) => write_atomically(&real, fill),
        OutputTarget::WriteThrough => {
            let file = OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, "open", e))?;
            let mut out = BufWriter::new(file);
            fill(&mut out).and_then(|()| out.flush()).map_err(|e| Error::io(path, "write", e))
        }
    }
}

/// Write via `fill` to a temporary sibling of `path`, then rename it onto `path`.
fn write_atomically(path: &Path, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let temp = temporary_sibling(path)?;
    let file = OpenOptions::new().write(true).create_new(true).open(&temp);
    let file = file.map_err(|e| Error::io(path, "create", e))?;
    let mut out = BufWriter::new(file);
    let written = fill(&mut out).and_then(|()| out.into_inner().map_err(|e| e.into_error())?.sync_all());
    let result = written.map_err(|e| Error::io(path, "write", e)).and_then(|()| {
        fs::rename(&temp, path).map_err(|e| Error::io(path, "rename temporary file onto", e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&temp); // best effort; the error we report is the original one
    }
    result
}

/// `dir/.name.tmp-<pid>-<n>`, unique within this process and among processes.
fn temporary_sibling(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let Some(name) = path.file_name() else {
        return Err(Error::input(format!("cannot write {}: not a file path", path.display())));
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp_name = format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id());
    Ok(path.with_file_name(temp_name))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_by_type_and_big_files_by_size() {
        let e = read_capped(Path::new("/dev/zero"), TEXT).unwrap_err();
        assert!(e.message.contains("/dev/zero") && e.message.contains("character device"), "{e}");
        let e = read_capped(Path::new("/"), CONFIG).unwrap_err();
        assert!(e.message.contains("a directory"), "{e}");
        let dir = std::env::temp_dir().join(format!("hymba-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.json");
        fs::write(&big, vec![b' '; 100]).unwrap();
        let small = Cap { what: "test file", max_bytes: 99 };
        let e = read_capped(&big, small).unwrap_err();
        assert!(e.message.contains("at most 99 bytes") && e.message.contains("100 bytes"), "{e}");
        assert_eq!(read_capped(&big, Cap { max_bytes: 100, ..small }).unwrap().len(), 100);
        assert_eq!(read_optional(&dir.join("absent"), small).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn streams_are_read_up_to_the_cap_and_no_further() {
        let cap = Cap { what: "test stream", max_bytes: 3 };
        let mut bytes = Vec::new();
        assert!(read_bounded(&b"abc"[..], &mut bytes, cap).is_ok());
        assert_eq!(bytes, b"abc");
        // An endless stream stops one byte past the cap.
        let mut bytes = Vec::new();
        assert!(matches!(read_bounded(io::repeat(b'x'), &mut bytes, cap), Err(Bounded::TooLarge)));
        assert_eq!(bytes.len(), 4);
    }

    #[test]
    fn outputs_replace_only_regular_files() {
        assert_eq!(output_target(Path::new("/dev/null")).unwrap(), OutputTarget::WriteThrough);
        assert!(output_target(Path::new("/")).unwrap_err().message.contains("directory"));
        let dir = std::env::temp_dir().join(format!("hymba-out-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dangling = dir.join("dangling");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        assert!(output_target(&dangling).unwrap_err().message.contains("symbolic link to nothing"));
        let real = dir.join("real.bin");
        fs::write(&real, b"old").unwrap();
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_output(&link, |out| out.write_all(b"new")).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link is kept");
        assert_eq!(fs::read(&real).unwrap(), b"new");
        fs::remove_dir_all(&dir).unwrap();
    }
}

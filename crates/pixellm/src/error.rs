//! One error type for the whole library. Every variant names the thing that was wrong
//! (file, tensor, field) and what was expected, so a CLI can print it on one line.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between bytes on disk and masks out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its contents are not what the format requires
    /// (truncated, corrupt header, forbidden pickle global, bad protobuf, ...).
    #[error("{file}: {msg}")]
    Format {
        /// The file (or a label such as `<memory>` for byte buffers).
        file: String,
        /// What was wrong and what was expected.
        msg: String,
    },
    /// A named tensor exists but cannot be used (wrong shape, unsupported dtype, ...).
    #[error("{file}: tensor `{name}`: {msg}")]
    Tensor {
        /// The file that holds the tensor.
        file: String,
        /// The checkpoint name of the tensor.
        name: String,
        /// What was wrong and what was expected.
        msg: String,
    },
    /// A tensor the model needs is in none of the loaded files.
    #[error("tensor `{name}` not found in {searched} (expected shape {expected:?})")]
    MissingTensor {
        /// The checkpoint name of the tensor.
        name: String,
        /// Where it was looked for.
        searched: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A configuration file is missing a field or has an impossible value.
    #[error("{file}: {msg}")]
    Config {
        /// The configuration file.
        file: String,
        /// What was wrong and what was expected.
        msg: String,
    },
    /// An input image could not be used.
    #[error("image {file}: {msg}")]
    Image {
        /// The image file (or `<memory>`).
        file: String,
        /// What was wrong.
        msg: String,
    },
    /// The prompt or answer cannot be run (too long for the context, ...).
    #[error("prompt: {0}")]
    Prompt(String),
    /// The requested backend or dtype is not available.
    #[error("backend: {0}")]
    Backend(String),
}

impl Error {
    /// Shorthand for [`Error::Format`].
    pub fn format(file: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Format {
            file: file.into(),
            msg: msg.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(file: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            file: file.into(),
            msg: msg.into(),
        }
    }
}

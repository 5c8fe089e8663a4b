//! One error type for the library: every failure names the file (or the argument) and the
//! problem, so a user can act on a one-line message without a backtrace.

use std::fmt::Display;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something is wrong with a file the user gave us (model, weights, image, manifest).
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    /// A flag or argument combination that cannot work.
    #[error("{0}")]
    Usage(String),
    /// tract refused or failed; the message carries tract's own chain of causes.
    #[error("{context}: {problem}")]
    Tract { context: String, problem: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl AsRef<Path>, problem: impl Display) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            problem: problem.to_string(),
        }
    }

    pub fn usage(problem: impl Display) -> Self {
        Error::Usage(problem.to_string())
    }

    /// Wrap a tract (anyhow) error, keeping its whole cause chain on one line.
    pub fn tract(context: impl Display, err: impl Into<anyhow::Error>) -> Self {
        Error::Tract {
            context: context.to_string(),
            problem: format!("{:#}", err.into()),
        }
    }
}

/// Attach a file path to any displayable error: `io_result.at(path)?`.
pub trait AtPath<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T, E: Display> AtPath<T> for std::result::Result<T, E> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, e))
    }
}

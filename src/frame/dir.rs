//! `dir:PATH`: the JPEG and PNG files of a folder, in name order, as frames.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{is_image_path, Capture, Frame, FrameSource, Pacer, SourceOptions};
use crate::preprocess::load_image;
use crate::{Error, Result};

pub struct DirSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    pos: usize,
    looping: bool,
    pacer: Pacer,
}

impl DirSource {
    /// Lists the folder once; files added later are not seen.
    pub fn open(dir: &Path, options: &SourceOptions) -> Result<DirSource> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::file(dir, e))?.path();
            if is_image_path(&path) && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(Error::file(dir, "no .jpg, .jpeg or .png files to replay"));
        }
        Ok(DirSource {
            dir: dir.to_path_buf(),
            files,
            pos: 0,
            looping: options.looping,
            pacer: Pacer::new(options.fps),
        })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl FrameSource for DirSource {
    fn describe(&self) -> String {
        format!("dir:{}", self.dir.display())
    }

    fn live(&self) -> bool {
        self.pacer.paced()
    }

    fn next(&mut self) -> Result<Capture> {
        if self.pos == self.files.len() {
            if !self.looping {
                return Ok(Capture::End);
            }
            self.pos = 0;
        }
        let path = &self.files[self.pos];
        self.pos += 1;
        self.pacer.wait();
        // A file that will not decode is one bad frame, not the end of the run.
        let t = Instant::now();
        Ok(match load_image(path) {
            Ok(image) => Capture::Frame(Frame {
                image,
                name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                work: t.elapsed(),
            }),
            Err(e) => Capture::Corrupt(e.to_string()),
        })
    }
}

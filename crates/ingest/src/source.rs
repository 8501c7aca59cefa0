//! Where records come from: files (a path or a glob, plain or gzip) or standard input, and the
//! position of the next record in them.
//!
//! A position is the byte offset of the next record in the *decompressed* stream of one file.
//! Files are read in the order of their paths (a glob's matches sorted), so "file F at offset
//! N" also says that every file before F is done. Resuming seeks a plain file to the offset;
//! a gzip file is decompressed again from the start and the first N bytes are skipped.

use crate::error::UsageError;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes read from the source at a time.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// The record format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// Comma (or `--delimiter`) separated values with a header row.
    Csv,
}

impl Format {
    /// The format a file name implies (`.ndjson`, `.jsonl`, `.json`, `.csv`, `.tsv`, each
    /// optionally followed by `.gz`).
    fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        let extension = name.rsplit_once('.')?.1;
        match extension {
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            "csv" | "tsv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// One input.
#[derive(Clone, Debug)]
pub(crate) enum Input {
    Stdin,
    File {
        path: PathBuf,
        gzip: bool,
        /// The file's size on disk (compressed, for gzip).
        size: u64,
    },
}

impl Input {
    /// How the input is named in positions and messages.
    pub(crate) fn name(&self) -> String {
        match self {
            Input::Stdin => "-".to_string(),
            Input::File { path, .. } => path.display().to_string(),
        }
    }

    /// Opens the input positioned at `offset` bytes of its decompressed stream. Standard input
    /// can only be opened once, at offset 0.
    pub(crate) fn open(&self, offset: u64) -> io::Result<Box<dyn BufRead + Send>> {
        match self {
            Input::Stdin => {
                if offset != 0 {
                    return Err(io::Error::other("standard input cannot be re-read"));
                }
                Ok(Box::new(BufReader::with_capacity(
                    READ_BUFFER_BYTES,
                    io::stdin(),
                )))
            }
            Input::File { path, gzip, .. } => {
                let mut file = File::open(path)?;
                if *gzip {
                    let decoder = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
                        READ_BUFFER_BYTES,
                        file,
                    ));
                    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, decoder);
                    let skipped = io::copy(&mut (&mut reader).take(offset), &mut io::sink())?;
                    if skipped != offset {
                        return Err(io::Error::other(format!(
                            "{}: the committed position {offset} is beyond the end of the decompressed data ({skipped} bytes): the file changed since it was ingested",
                            path.display()
                        )));
                    }
                    Ok(Box::new(reader))
                } else {
                    let length = file.metadata()?.len();
                    if offset > length {
                        return Err(io::Error::other(format!(
                            "{}: the committed position {offset} is beyond the end of the file ({length} bytes): the file changed since it was ingested",
                            path.display()
                        )));
                    }
                    file.seek(SeekFrom::Start(offset))?;
                    Ok(Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, file)))
                }
            }
        }
    }
}

/// The end of the last complete record of a followed file at or after `offset` (a record
/// boundary): the first byte after the last newline that ends a record (NDJSON: any newline;
/// CSV with `csv_delimiter`: a newline outside quotes), or `offset` when none came yet. A file
/// shorter than `offset` was truncated or replaced, which is an error.
pub(crate) fn complete_records_end(
    input: &Input,
    offset: u64,
    csv_delimiter: Option<u8>,
) -> io::Result<u64> {
    let Input::File {
        path, gzip: false, ..
    } = input
    else {
        return Err(io::Error::other(format!(
            "{}: only a plain file can be followed",
            input.name()
        )));
    };
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    if length < offset {
        return Err(io::Error::other(format!(
            "{}: the followed file shrank to {length} bytes, before the position {offset}: it was truncated or replaced",
            path.display()
        )));
    }
    match csv_delimiter {
        None => last_newline_end(&mut file, offset, length),
        Some(delimiter) => csv_records_end(&mut file, offset, length, delimiter),
    }
}

/// The first byte after the last newline in `offset..length`, or `offset`.
fn last_newline_end(file: &mut File, offset: u64, length: u64) -> io::Result<u64> {
    // Scan backwards from the end for the last newline, a buffer at a time.
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut end = length;
    while end > offset {
        let start = end.saturating_sub(READ_BUFFER_BYTES as u64).max(offset);
        let piece = &mut buffer[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(piece)?;
        if let Some(index) = piece.iter().rposition(|byte| *byte == b'\n') {
            return Ok(start + index as u64 + 1);
        }
        end = start;
    }
    Ok(offset)
}

/// Where a CSV scanner is, as the `csv` crate parses (RFC 4180, `"` quotes, `""` escapes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CsvScan {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: an escape if another quote follows, else its end.
    QuoteInQuoted,
}

/// The first byte after the last record-ending newline (outside quotes) in `offset..length`,
/// or `offset`; `offset` is a record boundary.
fn csv_records_end(file: &mut File, offset: u64, length: u64, delimiter: u8) -> io::Result<u64> {
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file.take(length - offset));
    let mut state = CsvScan::FieldStart;
    let mut position = offset;
    let mut end = offset;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(end);
        }
        for &byte in buffer {
            position += 1;
            state = match (state, byte) {
                (CsvScan::Quoted, b'"') => CsvScan::QuoteInQuoted,
                (CsvScan::Quoted, _) => CsvScan::Quoted,
                (CsvScan::QuoteInQuoted, b'"') => CsvScan::Quoted,
                (CsvScan::FieldStart, b'"') => CsvScan::Quoted,
                (_, b'\n') => {
                    end = position;
                    CsvScan::FieldStart
                }
                (_, b'\r') => CsvScan::FieldStart,
                (_, byte) if byte == delimiter => CsvScan::FieldStart,
                _ => CsvScan::Unquoted,
            };
        }
        let read = buffer.len();
        reader.consume(read);
    }
}

/// Resolves `--from` into inputs, in the order they are read, and their format.
pub(crate) fn resolve(
    from: &str,
    format: Option<Format>,
) -> Result<(Vec<Input>, Format), UsageError> {
    if from == "-" {
        let format = format.ok_or_else(|| {
            UsageError::new(
                "format",
                "standard input has no file name to tell the format: pass --format ndjson or --format csv",
            )
        })?;
        return Ok((vec![Input::Stdin], format));
    }
    let paths: Vec<PathBuf> = if from.contains(['*', '?', '[']) {
        let mut paths = Vec::new();
        let entries = glob::glob(from)
            .map_err(|error| UsageError::new("from", format!("invalid glob {from:?}: {error}")))?;
        for entry in entries {
            let path = entry.map_err(|error| {
                UsageError::new("from", format!("cannot read a match of {from:?}: {error}"))
            })?;
            if path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(UsageError::new(
                "from",
                format!("the glob {from:?} matches no file"),
            ));
        }
        paths
    } else {
        let path = PathBuf::from(from);
        if !path.is_file() {
            return Err(UsageError::new(
                "from",
                format!("{from:?} is not a readable file"),
            ));
        }
        vec![path]
    };
    let format = match format {
        Some(format) => format,
        None => {
            let mut formats = paths.iter().map(|path| (path, Format::from_path(path)));
            let (first_path, first) = formats.next().expect("at least one path");
            let first = first.ok_or_else(|| {
                UsageError::new(
                    "format",
                    format!(
                        "cannot tell the format of {} from its name: pass --format ndjson or --format csv",
                        first_path.display()
                    ),
                )
            })?;
            if let Some((path, _)) = formats.find(|(_, format)| *format != Some(first)) {
                return Err(UsageError::new(
                    "format",
                    format!(
                        "{} and {} have different formats: ingest them separately or pass --format",
                        first_path.display(),
                        path.display()
                    ),
                ));
            }
            first
        }
    };
    let mut inputs = Vec::with_capacity(paths.len());
    for path in paths {
        let size = std::fs::metadata(&path)
            .map_err(|error| UsageError::new("from", format!("{}: {error}", path.display())))?
            .len();
        let gzip = path
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("gz"));
        inputs.push(Input::File { path, gzip, size });
    }
    Ok((inputs, format))
}

/// Where the next record is: what the checkpoint stores, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Position {
    /// `--from` as given: a committed position of another source does not apply.
    pub(crate) source: String,
    /// The file being read (`-` for standard input).
    pub(crate) path: String,
    /// Byte offset of its next record (decompressed).
    pub(crate) offset: u64,
}

/// Where the next record is, in a file or a stream: the checkpoint's state, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum SourcePosition {
    File(Position),
    Stream(super::jetstream::StreamPosition),
}

impl SourcePosition {
    pub(crate) fn to_state(&self) -> String {
        serde_json::to_string(self).expect("a position serialises")
    }

    pub(crate) fn from_state(state: &str) -> Option<SourcePosition> {
        serde_json::from_str(state).ok()
    }
}

impl From<Position> for SourcePosition {
    fn from(position: Position) -> Self {
        SourcePosition::File(position)
    }
}

impl std::fmt::Display for SourcePosition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourcePosition::File(position) => position.fmt(formatter),
            SourcePosition::Stream(position) => position.fmt(formatter),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} at byte {}", self.path, self.offset)
    }
}

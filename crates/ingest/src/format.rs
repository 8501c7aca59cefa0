//! Framing: cuts an input into records and says where each one ends. Parsing a record into
//! fields happens in `mapping`, so a record that does not parse still has its raw text and
//! position for the dead letters.
//!
//! - NDJSON: one record per line (`\n`, an optional `\r` before it); blank lines are not
//!   records; a UTF-8 byte-order mark at the start of a file is skipped. A line longer than
//!   `LINE_BYTES_MAX` is not buffered: its first `OVERSIZED_PREFIX_BYTES` are kept for the dead
//!   letter and the rest is skipped.
//! - CSV: RFC 4180 through the `csv` crate: a header row, `"` quoting with `""` escapes,
//!   delimiters and newlines inside quotes, a configurable delimiter, records of any length
//!   (too few or too many fields are reported per record by `mapping`), blank lines skipped,
//!   a byte-order mark before the header removed. A record may span at most
//!   `CSV_RECORD_BYTES_MAX` (an unclosed quote would otherwise read the rest of the file into
//!   one field): past it the input fails, since no later record boundary can be trusted.

use super::source::Input;
use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicU64, Ordering};

/// The longest NDJSON line read as a record, in bytes (terminator included).
pub(crate) const LINE_BYTES_MAX: usize = 8 << 20;
/// Bytes of an oversized line kept for its dead letter.
const OVERSIZED_PREFIX_BYTES: usize = 1024;
/// The most bytes one CSV record (the header included) may span.
pub(crate) const CSV_RECORD_BYTES_MAX: u64 = 64 << 20;

/// The stream under a CSV reader: counts the bytes it hands over and refuses to hand over
/// more than `limit` (set to the record's start plus `CSV_RECORD_BYTES_MAX` before each record).
pub(crate) struct Guarded {
    stream: Box<dyn BufRead + Send>,
    /// Bytes handed to the CSV reader so far.
    handed: u64,
    limit: AtomicU64,
}

impl Read for Guarded {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.handed >= self.limit.load(Ordering::Relaxed) {
            return Err(io::Error::other(format!(
                "a CSV record spans more than {CSV_RECORD_BYTES_MAX} bytes (an unclosed quote?)"
            )));
        }
        let read = self.stream.read(buffer)?;
        self.handed += read as u64;
        Ok(read)
    }
}

type CsvReader = csv::Reader<Guarded>;

/// Lets the reader read one more record, starting at its current position.
fn allow_record(reader: &CsvReader) {
    reader.get_ref().limit.store(
        reader.position().byte() + CSV_RECORD_BYTES_MAX,
        Ordering::Relaxed,
    );
}

/// One record's bytes.
pub(crate) enum Payload {
    /// A line without its line terminator.
    Json(Vec<u8>),
    /// A CSV record's fields.
    Csv(csv::ByteRecord),
    /// A line longer than `LINE_BYTES_MAX`: its first bytes and its length.
    Oversized { prefix: Vec<u8>, bytes: u64 },
}

/// A record and where it is: `start` is its first byte, `end` the first byte after it (where
/// the next record starts, which is what a checkpoint stores).
pub(crate) struct Frame {
    pub(crate) payload: Payload,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// Reads the records of one input.
pub(crate) enum Framer {
    Lines {
        reader: Box<dyn BufRead + Send>,
        offset: u64,
    },
    Csv {
        reader: Box<CsvReader>,
        /// The stream offset the reader started at (its positions are relative to it).
        base: u64,
    },
}

/// The CSV header of an input, and a framer positioned at `offset` (or just after the header,
/// when `offset` is before its end). With `end` (a followed file: the end of its last complete
/// record, see `source::complete_records_end`) nothing past `end` is read.
pub(crate) fn open_csv(
    input: &Input,
    offset: u64,
    delimiter: u8,
    end: Option<u64>,
) -> io::Result<(Vec<String>, Framer)> {
    let open = |from: u64| -> io::Result<Box<dyn BufRead + Send>> {
        let stream = input.open(from)?;
        Ok(match end {
            Some(end) => Box::new(stream.take(end.saturating_sub(from))),
            None => stream,
        })
    };
    let mut reader = csv_reader(open(0)?, delimiter);
    let mut header = csv::ByteRecord::new();
    allow_record(&reader);
    if !reader.read_byte_record(&mut header).map_err(csv_error)? {
        // An empty file: no header, no records.
        return Ok((
            Vec::new(),
            Framer::Csv {
                reader: Box::new(reader),
                base: 0,
            },
        ));
    }
    let mut names = Vec::with_capacity(header.len());
    for (index, field) in header.iter().enumerate() {
        let mut name = std::str::from_utf8(field).map_err(|_| {
            io::Error::other(format!(
                "{}: header field {} is not valid UTF-8",
                input.name(),
                index + 1
            ))
        })?;
        if index == 0 {
            name = name.strip_prefix('\u{feff}').unwrap_or(name);
        }
        names.push(name.to_string());
    }
    let header_end = reader.position().byte();
    if offset <= header_end {
        return Ok((
            names,
            Framer::Csv {
                reader: Box::new(reader),
                base: 0,
            },
        ));
    }
    drop(reader);
    let reader = csv_reader(open(offset)?, delimiter);
    Ok((
        names,
        Framer::Csv {
            reader: Box::new(reader),
            base: offset,
        },
    ))
}

/// A line framer positioned at `offset`.
pub(crate) fn open_lines(input: &Input, offset: u64) -> io::Result<Framer> {
    Ok(Framer::Lines {
        reader: input.open(offset)?,
        offset,
    })
}

/// A line framer positioned at `offset` that reads only up to `end` (the end of the last
/// complete line of a followed file: see `source::complete_lines_end`).
pub(crate) fn open_lines_until(input: &Input, offset: u64, end: u64) -> io::Result<Framer> {
    let reader = input.open(offset)?.take(end.saturating_sub(offset));
    Ok(Framer::Lines {
        reader: Box::new(reader),
        offset,
    })
}

fn csv_reader(stream: Box<dyn BufRead + Send>, delimiter: u8) -> CsvReader {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(Guarded {
            stream,
            handed: 0,
            limit: AtomicU64::new(0),
        })
}

/// Reads one line (with its `\n`) into `line`, keeping at most `LINE_BYTES_MAX` bytes.
/// Returns the bytes consumed and whether the line was cut.
fn read_line_bounded(reader: &mut dyn BufRead, line: &mut Vec<u8>) -> io::Result<(usize, bool)> {
    let mut consumed = 0;
    let mut truncated = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            return Ok((consumed, truncated));
        }
        let (taken, done) = match memchr::memchr(b'\n', available) {
            Some(index) => (index + 1, true),
            None => (available.len(), false),
        };
        let room = LINE_BYTES_MAX.saturating_sub(line.len());
        if taken <= room {
            line.extend_from_slice(&available[..taken]);
        } else {
            line.extend_from_slice(&available[..room]);
            truncated = true;
        }
        reader.consume(taken);
        consumed += taken;
        if done {
            return Ok((consumed, truncated));
        }
    }
}

fn csv_error(error: csv::Error) -> io::Error {
    match error.into_kind() {
        csv::ErrorKind::Io(error) => error,
        other => io::Error::other(format!("{other:?}")),
    }
}

impl Framer {
    /// Where the framer reads next (past blank lines it skipped).
    pub(crate) fn offset(&self) -> u64 {
        match self {
            Framer::Lines { offset, .. } => *offset,
            Framer::Csv { reader, base } => *base + reader.position().byte(),
        }
    }

    /// The next record, or `None` at the end of the input.
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        match self {
            Framer::Lines { reader, offset } => loop {
                let mut line = Vec::new();
                let (read, truncated) = read_line_bounded(reader.as_mut(), &mut line)?;
                if read == 0 {
                    return Ok(None);
                }
                let start = *offset;
                *offset += read as u64;
                if truncated {
                    line.truncate(OVERSIZED_PREFIX_BYTES);
                    return Ok(Some(Frame {
                        payload: Payload::Oversized {
                            prefix: line,
                            bytes: read as u64,
                        },
                        start,
                        end: *offset,
                    }));
                }
                if start == 0 && line.starts_with(b"\xEF\xBB\xBF") {
                    line.drain(..3);
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(Frame {
                    payload: Payload::Json(line),
                    start,
                    end: *offset,
                }));
            },
            Framer::Csv { reader, base } => {
                let mut record = csv::ByteRecord::new();
                let start = *base + reader.position().byte();
                allow_record(reader);
                if !reader.read_byte_record(&mut record).map_err(csv_error)? {
                    return Ok(None);
                }
                let start = record
                    .position()
                    .map_or(start, |position| *base + position.byte());
                let end = *base + reader.position().byte();
                Ok(Some(Frame {
                    payload: Payload::Csv(record),
                    start,
                    end,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_record_past_its_bound_fails_the_input() {
        let mut data = b"a,b\n1,\"unclosed\n".to_vec();
        data.extend(std::iter::repeat_n(
            b'x',
            (CSV_RECORD_BYTES_MAX + 100_000) as usize,
        ));
        let mut framer = Framer::Csv {
            reader: Box::new(csv_reader(Box::new(io::Cursor::new(data)), b',')),
            base: 0,
        };
        assert!(framer.next_frame().unwrap().is_some(), "the header row");
        let error = framer.next_frame().err().expect("the record is too long");
        assert!(error.to_string().contains("unclosed quote"), "{error}");

        let mut framer = Framer::Csv {
            reader: Box::new(csv_reader(
                Box::new(io::Cursor::new(b"a,b\n1,2\n".to_vec())),
                b',',
            )),
            base: 0,
        };
        assert!(framer.next_frame().unwrap().is_some());
        assert!(framer.next_frame().unwrap().is_some());
        assert!(framer.next_frame().unwrap().is_none());
    }

    #[test]
    fn an_oversized_line_is_cut_and_the_next_one_read_whole() {
        let mut data = vec![b'x'; LINE_BYTES_MAX + 10];
        data.push(b'\n');
        data.extend_from_slice(b"{\"a\": 1}\n");
        let mut reader: Box<dyn BufRead + Send> =
            Box::new(io::BufReader::with_capacity(4096, io::Cursor::new(data)));
        let mut line = Vec::new();
        let (read, truncated) = read_line_bounded(reader.as_mut(), &mut line).unwrap();
        assert_eq!((read, truncated), (LINE_BYTES_MAX + 11, true));
        assert_eq!(line.len(), LINE_BYTES_MAX);
        line.clear();
        let (read, truncated) = read_line_bounded(reader.as_mut(), &mut line).unwrap();
        assert_eq!(
            (read, truncated, line.as_slice()),
            (9, false, &b"{\"a\": 1}\n"[..])
        );
        line.clear();
        assert_eq!(
            read_line_bounded(reader.as_mut(), &mut line).unwrap(),
            (0, false)
        );
    }
}

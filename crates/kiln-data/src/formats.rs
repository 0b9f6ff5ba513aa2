//! File readers: TSV, CSV (RFC 4180), JSON lines and parquet, all turned into rows of the requested columns.
//!
//! A reader reports each data row to a sink as `(location, Ok(values) | Err(reason))`. Problems with the
//! file as a whole (empty file, unreadable parquet, header lacking a required column) are returned as
//! [`Error::Malformed`] with [`Loc::File`] or the header's line; I/O errors as [`Error::Io`].

use std::path::Path;

use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::DataType;
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::error::{Error, Loc, Result, RowError};

/// The on-disk format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Apache Parquet (`.parquet`).
    Parquet,
    /// JSON lines (`.jsonl`, and `.json` files holding one object per line).
    Jsonl,
    /// Tab-separated with a header line, unquoted (as GLUE's TSV files).
    Tsv,
    /// Comma-separated with a header record, RFC 4180 quoting.
    Csv,
}

impl Format {
    /// The format for a file name's extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "parquet" => Format::Parquet,
            "jsonl" | "json" => Format::Jsonl,
            "tsv" => Format::Tsv,
            "csv" => Format::Csv,
            _ => return None,
        })
    }
}

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Str(String),
    /// A cell that is not valid text (the reason, e.g. invalid UTF-8).
    Invalid(String),
    /// A value of another type (its name).
    Other(&'static str),
}

/// A requested column: accepted names (first found wins) and whether the file must have it.
pub(crate) struct Column {
    pub names: &'static [&'static str],
    pub required: bool,
}

/// Values aligned with the requested columns; `None` where the file (or JSON object) lacks the column.
pub(crate) type Row = Vec<Option<Value>>;

/// Receives each data row; returns `Ok(false)` to stop reading.
pub(crate) type Sink<'a> = dyn FnMut(Loc, std::result::Result<Row, String>) -> Result<bool> + 'a;

fn malformed(path: &Path, loc: Loc, reason: impl Into<String>) -> Error {
    Error::Malformed(RowError {
        file: path.to_path_buf(),
        loc,
        reason: reason.into(),
    })
}

fn utf8_reason(e: std::str::Utf8Error) -> String {
    format!("invalid UTF-8 at byte {}", e.valid_up_to())
}

pub(crate) fn read(
    path: &Path,
    format: Format,
    cols: &[Column],
    sink: &mut Sink<'_>,
) -> Result<()> {
    match format {
        Format::Parquet => read_parquet(path, cols, sink),
        Format::Jsonl => read_jsonl(path, cols, sink),
        Format::Tsv => read_delimited(path, cols, sink, b'\t'),
        Format::Csv => read_delimited(path, cols, sink, b','),
    }
}

fn read_text(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(malformed(path, Loc::File, "empty file"));
    }
    Ok(bytes)
}

/// Split into lines (1-based numbers), without the `\n` or a trailing `\r`.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
}

// ---------------------------------------------------------------------------------------------------------
// JSON lines

fn read_jsonl(path: &Path, cols: &[Column], sink: &mut Sink<'_>) -> Result<()> {
    let bytes = read_text(path)?;
    for (ln, line) in lines(&bytes) {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let row = (|| {
            let text = std::str::from_utf8(line).map_err(utf8_reason)?;
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
            let obj = v
                .as_object()
                .ok_or_else(|| "expected a JSON object".to_string())?;
            Ok(cols
                .iter()
                .map(|c| c.names.iter().find_map(|n| obj.get(*n)).map(json_value))
                .collect::<Row>())
        })();
        if !sink(Loc::Line(ln), row)? {
            break;
        }
    }
    Ok(())
}

fn json_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(_) => Value::Other("a boolean"),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Other("a non-integer number"),
        },
        J::String(s) => Value::Str(s.clone()),
        J::Array(_) => Value::Other("an array"),
        J::Object(_) => Value::Other("an object"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// TSV / CSV

/// Map requested columns to header positions; a required column missing from the header is a file error.
fn map_header(
    path: &Path,
    header_line: usize,
    header: &[String],
    cols: &[Column],
) -> Result<Vec<Option<usize>>> {
    cols.iter()
        .map(|c| {
            let pos = c
                .names
                .iter()
                .find_map(|n| header.iter().position(|h| h == n));
            if pos.is_none() && c.required {
                return Err(malformed(
                    path,
                    Loc::Line(header_line),
                    format!(
                        "missing column `{}` (header has: {})",
                        c.names[0],
                        header.join(", ")
                    ),
                ));
            }
            Ok(pos)
        })
        .collect()
}

fn read_delimited(path: &Path, cols: &[Column], sink: &mut Sink<'_>, delim: u8) -> Result<()> {
    let bytes = read_text(path)?;
    let what = if delim == b'\t' { "tab" } else { "comma" };
    // Records as (start line, fields as bytes).
    let mut records: Box<dyn Iterator<Item = (usize, std::result::Result<Vec<Vec<u8>>, String>)>> =
        if delim == b'\t' {
            Box::new(lines(&bytes).map(|(ln, l)| {
                (
                    ln,
                    Ok(l.split(|&b| b == b'\t').map(<[u8]>::to_vec).collect()),
                )
            }))
        } else {
            Box::new(CsvRecords {
                b: &bytes,
                pos: 0,
                line: 1,
            })
        };
    let is_blank = |f: &Vec<Vec<u8>>| f.len() == 1 && f[0].iter().all(|b| b.is_ascii_whitespace());
    // The header: the first non-blank record.
    let (header_line, header) = loop {
        match records.next() {
            None => return Err(malformed(path, Loc::File, "empty file")),
            Some((_, Ok(f))) if is_blank(&f) => continue,
            Some((ln, Ok(f))) => {
                let names = f
                    .iter()
                    .map(|x| std::str::from_utf8(x).map(|s| s.trim().to_string()))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| {
                        malformed(path, Loc::Line(ln), format!("header: {}", utf8_reason(e)))
                    })?;
                break (ln, names);
            }
            Some((ln, Err(reason))) => {
                return Err(malformed(path, Loc::Line(ln), format!("header: {reason}")))
            }
        }
    };
    let map = map_header(path, header_line, &header, cols)?;
    for (ln, rec) in records {
        let row = match rec {
            Ok(f) if is_blank(&f) => continue,
            Ok(fields) => (|| {
                if fields.len() != header.len() {
                    return Err(format!(
                        "expected {} {what}-separated fields ({}), found {}",
                        header.len(),
                        header.join(", "),
                        fields.len()
                    ));
                }
                let mut row = Row::with_capacity(cols.len());
                for (c, pos) in cols.iter().zip(&map) {
                    row.push(match pos {
                        None => None,
                        Some(p) => Some(match std::str::from_utf8(&fields[*p]) {
                            Ok(s) => Value::Str(s.to_string()),
                            Err(e) => {
                                return Err(format!("column `{}`: {}", c.names[0], utf8_reason(e)))
                            }
                        }),
                    });
                }
                Ok(row)
            })(),
            Err(reason) => Err(reason),
        };
        if !sink(Loc::Line(ln), row)? {
            break;
        }
    }
    Ok(())
}

/// RFC 4180 records: `,` separates fields, `"` quotes (`""` is a quote), quoted fields may span lines, records
/// end at `\n` or `\r\n`. Lenient where the RFC is silent (a stray quote inside an unquoted field is kept).
struct CsvRecords<'a> {
    b: &'a [u8],
    pos: usize,
    line: usize,
}

impl Iterator for CsvRecords<'_> {
    type Item = (usize, std::result::Result<Vec<Vec<u8>>, String>);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.b;
        if self.pos >= b.len() {
            return None;
        }
        let start_line = self.line;
        let mut fields = Vec::new();
        let mut field = Vec::new();
        loop {
            if self.pos < b.len() && b[self.pos] == b'"' {
                self.pos += 1;
                loop {
                    let Some(&c) = b.get(self.pos) else {
                        return Some((start_line, Err("unterminated quoted field".into())));
                    };
                    self.pos += 1;
                    if c == b'"' {
                        if b.get(self.pos) == Some(&b'"') {
                            field.push(b'"');
                            self.pos += 1;
                        } else {
                            break;
                        }
                    } else {
                        if c == b'\n' {
                            self.line += 1;
                        }
                        field.push(c);
                    }
                }
            }
            while self.pos < b.len() && b[self.pos] != b',' && b[self.pos] != b'\n' {
                field.push(b[self.pos]);
                self.pos += 1;
            }
            if self.pos >= b.len() {
                fields.push(field);
                break;
            }
            if b[self.pos] == b',' {
                self.pos += 1;
                fields.push(std::mem::take(&mut field));
                continue;
            }
            // End of record.
            self.pos += 1;
            self.line += 1;
            if field.last() == Some(&b'\r') {
                field.pop();
            }
            fields.push(field);
            break;
        }
        Some((start_line, Ok(fields)))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Parquet (column chunks read directly, so one bad cell never misaligns the other columns)

fn read_parquet(path: &Path, cols: &[Column], sink: &mut Sink<'_>) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if file.metadata().map(|m| m.len() == 0).unwrap_or(false) {
        return Err(malformed(path, Loc::File, "empty file"));
    }
    let reader = SerializedFileReader::new(file).map_err(|e| {
        malformed(
            path,
            Loc::File,
            format!("not a readable parquet file: {}", short(&e.to_string())),
        )
    })?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let names: Vec<String> = (0..schema.num_columns())
        .map(|i| schema.column(i).path().string())
        .collect();
    let map: Vec<Option<usize>> = cols
        .iter()
        .map(|c| {
            let pos = c
                .names
                .iter()
                .find_map(|n| names.iter().position(|h| h == n));
            if pos.is_none() && c.required {
                return Err(malformed(
                    path,
                    Loc::File,
                    format!(
                        "missing column `{}` (schema has: {})",
                        c.names[0],
                        names.join(", ")
                    ),
                ));
            }
            Ok(pos)
        })
        .collect::<Result<_>>()?;
    let mut offset = 0usize;
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| {
            malformed(
                path,
                Loc::Row(offset),
                format!("row group {g}: {}", short(&e.to_string())),
            )
        })?;
        let n = usize::try_from(group.metadata().num_rows()).unwrap_or(0);
        let mut data: Vec<Option<Vec<Value>>> = Vec::with_capacity(cols.len());
        for pos in &map {
            data.push(match pos {
                None => None,
                Some(i) => {
                    let max_def = schema.column(*i).max_def_level();
                    let col = group.get_column_reader(*i).map_err(|e| {
                        malformed(
                            path,
                            Loc::Row(offset),
                            format!("column `{}`: {}", names[*i], short(&e.to_string())),
                        )
                    })?;
                    Some(read_column(col, n, max_def).map_err(|e| {
                        malformed(
                            path,
                            Loc::Row(offset),
                            format!("row group {g}, column `{}`: {}", names[*i], short(&e)),
                        )
                    })?)
                }
            });
        }
        for r in 0..n {
            let mut row = Row::with_capacity(cols.len());
            let mut bad = None;
            for (c, d) in cols.iter().zip(&data) {
                let v = d.as_ref().map(|d| d[r].clone());
                if let (None, Some(Value::Invalid(why))) = (&bad, &v) {
                    bad = Some(format!("column `{}`: {why}", c.names[0]));
                }
                row.push(v);
            }
            let row = match bad {
                Some(why) => Err(why),
                None => Ok(row),
            };
            if !sink(Loc::Row(offset + r), row)? {
                return Ok(());
            }
        }
        offset += n;
    }
    Ok(())
}

/// Keep error messages short (parquet's UTF-8 errors embed the whole byte string).
fn short(s: &str) -> String {
    if s.len() <= 300 {
        return s.to_string();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn read_column(
    col: ColumnReader,
    n: usize,
    max_def: i16,
) -> std::result::Result<Vec<Value>, String> {
    use parquet::data_type::ByteArray;
    match col {
        ColumnReader::Int32ColumnReader(mut r) => {
            read_typed(&mut r, n, max_def, |v: i32| Value::Int(v as i64))
        }
        ColumnReader::Int64ColumnReader(mut r) => read_typed(&mut r, n, max_def, Value::Int),
        ColumnReader::ByteArrayColumnReader(mut r) => read_typed(
            &mut r,
            n,
            max_def,
            |v: ByteArray| match std::str::from_utf8(v.data()) {
                Ok(s) => Value::Str(s.to_string()),
                Err(e) => Value::Invalid(utf8_reason(e)),
            },
        ),
        ColumnReader::BoolColumnReader(_) => Ok(vec![Value::Other("a boolean"); n]),
        ColumnReader::FloatColumnReader(_) | ColumnReader::DoubleColumnReader(_) => {
            Ok(vec![Value::Other("a floating-point number"); n])
        }
        ColumnReader::Int96ColumnReader(_) | ColumnReader::FixedLenByteArrayColumnReader(_) => {
            Ok(vec![Value::Other("a fixed-size binary value"); n])
        }
    }
}

fn read_typed<T: DataType>(
    r: &mut ColumnReaderImpl<T>,
    n: usize,
    max_def: i16,
    f: impl Fn(T::T) -> Value,
) -> std::result::Result<Vec<Value>, String> {
    let mut out = Vec::with_capacity(n);
    let (mut defs, mut vals) = (Vec::new(), Vec::new());
    while out.len() < n {
        defs.clear();
        vals.clear();
        let (records, _, _) = r
            .read_records(n - out.len(), Some(&mut defs), None, &mut vals)
            .map_err(|e| e.to_string())?;
        if records == 0 {
            return Err(format!(
                "column chunk ended after {} of {n} rows",
                out.len()
            ));
        }
        if max_def > 0 {
            let mut it = vals.drain(..);
            for d in &defs {
                if *d == max_def {
                    out.push(f(it.next().ok_or("fewer values than definition levels")?));
                } else {
                    out.push(Value::Null);
                }
            }
        } else {
            out.extend(vals.drain(..).map(&f));
        }
    }
    out.truncate(n);
    Ok(out)
}

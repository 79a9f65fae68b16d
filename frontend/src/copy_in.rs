//! `COPY table [(columns)] FROM STDIN` in text, CSV and binary format.
//!
//! The statement answers with CopyInResponse; the client then streams
//! CopyData. The data is buffered for the session, decoded into Arrow columns
//! when the client sends CopyDone, coerced to the table's types with the same
//! rules as INSERT, and written as one statement through the durable write
//! path: a COPY is atomic (all rows or none), like PostgreSQL's.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, NullArray, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use pgwire::api::results::Tag;
use quiver_api::{ConflictPolicy, TableInfo, WriteRequest};
use quiver_planner::coerce::build_rows;
use quiver_planner::vector::check_values;
use quiver_planner::{SqlError, sqlstate};
use quiver_types::ColumnType;
use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, ObjectName,
};

use crate::ddl::table_name;
use crate::engine::{Engine, Output};
use crate::session::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// The format options of a COPY statement, with PostgreSQL's defaults.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub format: CopyFormat,
    pub delimiter: u8,
    pub null: String,
    pub header: bool,
    pub quote: u8,
    pub escape: Option<u8>,
}

impl CopyOptions {
    pub fn parse(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<Self, SqlError> {
        let mut o = CopyOptions {
            format: CopyFormat::Text,
            delimiter: b'\t',
            null: "\\N".into(),
            header: false,
            quote: b'"',
            escape: None,
        };
        let mut delimiter = None;
        let mut null = None;
        for option in options {
            match option {
                CopyOption::Format(ident) => {
                    o.format = match ident.value.to_ascii_lowercase().as_str() {
                        "text" => CopyFormat::Text,
                        "csv" => CopyFormat::Csv,
                        "binary" => CopyFormat::Binary,
                        other => {
                            return Err(syntax(format!("COPY format \"{other}\" not recognized")));
                        }
                    }
                }
                CopyOption::Delimiter(c) => delimiter = Some(ascii(*c)?),
                CopyOption::Null(s) => null = Some(s.clone()),
                CopyOption::Header(h) => o.header = *h,
                CopyOption::Quote(c) => o.quote = ascii(*c)?,
                CopyOption::Escape(c) => o.escape = Some(ascii(*c)?),
                CopyOption::Freeze(_) | CopyOption::Encoding(_) => {}
                other => {
                    return Err(SqlError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("COPY option {other} is not supported"),
                    ));
                }
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Binary => o.format = CopyFormat::Binary,
                CopyLegacyOption::Delimiter(c) => delimiter = Some(ascii(*c)?),
                CopyLegacyOption::Null(s) => null = Some(s.clone()),
                CopyLegacyOption::Header => o.header = true,
                CopyLegacyOption::Csv(csv_options) => {
                    o.format = CopyFormat::Csv;
                    for c in csv_options {
                        match c {
                            CopyLegacyCsvOption::Header => o.header = true,
                            CopyLegacyCsvOption::Quote(c) => o.quote = ascii(*c)?,
                            CopyLegacyCsvOption::Escape(c) => o.escape = Some(ascii(*c)?),
                            _ => {}
                        }
                    }
                }
                other => {
                    return Err(SqlError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("COPY option {other} is not supported"),
                    ));
                }
            }
        }
        if o.format == CopyFormat::Csv {
            o.delimiter = b',';
            o.null = String::new();
        }
        if let Some(d) = delimiter {
            o.delimiter = d;
        }
        if let Some(n) = null {
            o.null = n;
        }
        if o.header && o.format != CopyFormat::Csv {
            return Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "COPY HEADER is only supported in CSV mode here",
            ));
        }
        Ok(o)
    }
}

/// A COPY FROM STDIN in progress on a session.
#[derive(Debug)]
pub struct CopyIn {
    table: TableInfo,
    /// Target column indexes, in the order the data carries them.
    targets: Vec<usize>,
    options: CopyOptions,
    data: Vec<u8>,
}

impl CopyIn {
    pub fn format(&self) -> CopyFormat {
        self.options.format
    }

    pub fn columns(&self) -> usize {
        self.targets.len()
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.data.extend_from_slice(chunk);
    }
}

fn syntax(msg: impl Into<String>) -> SqlError {
    SqlError::new(sqlstate::SYNTAX_ERROR, msg)
}

fn bad_copy(msg: impl Into<String>) -> SqlError {
    // PostgreSQL reports malformed COPY data as bad_copy_file_format (22P04)
    // or invalid_text_representation; 22P04 names the cause precisely.
    SqlError::new("22P04", msg)
}

/// The table (and its column list) a COPY reads or writes.
pub async fn copy_table(
    engine: &Engine,
    name: &ObjectName,
    columns: &[Ident],
) -> Result<(TableInfo, Vec<usize>), SqlError> {
    let table = table_name(name)?;
    let info = engine.backends.lookup_table(&table).await?;
    let targets = resolve_columns(&info, columns)?;
    Ok((info, targets))
}

/// Starts a `COPY ... FROM STDIN`: checks the table and options.
pub async fn start(
    engine: &Engine,
    source: &CopySource,
    target: &CopyTarget,
    options: CopyOptions,
) -> Result<CopyIn, SqlError> {
    if !matches!(target, CopyTarget::Stdin) {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "COPY FROM a server file is not supported (use psql's \\copy, which sends STDIN)",
        ));
    }
    let CopySource::Table {
        table_name: name,
        columns,
    } = source
    else {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "COPY (query) FROM is not valid",
        ));
    };
    let (table, targets) = copy_table(engine, name, columns).await?;
    Ok(CopyIn {
        table,
        targets,
        options,
        data: Vec::new(),
    })
}

fn ascii(c: char) -> Result<u8, SqlError> {
    u8::try_from(c).ok().filter(u8::is_ascii).ok_or_else(|| {
        syntax("COPY delimiter, quote and escape must be single one-byte characters")
    })
}

fn resolve_columns(info: &TableInfo, columns: &[Ident]) -> Result<Vec<usize>, SqlError> {
    if columns.is_empty() {
        return Ok((0..info.schema.columns.len()).collect());
    }
    columns
        .iter()
        .map(|c| {
            let name = if c.quote_style.is_some() {
                c.value.clone()
            } else {
                c.value.to_ascii_lowercase()
            };
            info.schema.column_index(&name).ok_or_else(|| {
                SqlError::new(
                    sqlstate::UNDEFINED_COLUMN,
                    format!(
                        "column \"{name}\" of relation \"{}\" does not exist",
                        info.name
                    ),
                )
            })
        })
        .collect()
}

/// Decodes the buffered data and writes it; returns the `COPY n` tag.
pub async fn finish(engine: &Engine, session: &Session, copy: CopyIn) -> Result<Output, SqlError> {
    let (columns, rows) = match copy.options.format {
        CopyFormat::Text => text_columns(&copy)?,
        CopyFormat::Csv => csv_columns(&copy)?,
        CopyFormat::Binary => binary_columns(&copy)?,
    };
    if rows == 0 {
        return Ok(Output::Command(Tag::new("COPY").with_rows(0)));
    }
    let (mut targets, mut columns) = (copy.targets.clone(), columns);
    crate::defaults::fill(
        engine,
        session,
        &copy.table,
        &mut targets,
        &mut columns,
        rows,
    )
    .await?;
    let batch = build_rows(
        &copy.table.schema,
        &copy.table.name,
        &targets,
        &columns,
        rows,
    )?;
    let result = engine
        .write(
            session,
            WriteRequest {
                table: copy.table.clone(),
                delete_keys: None,
                insert: Some(batch),
                on_conflict: ConflictPolicy::Error,
            },
        )
        .await?;
    Ok(Output::Command(
        Tag::new("COPY").with_rows(result.inserted_rows.len()),
    ))
}

fn string_columns(fields: Vec<Vec<Option<String>>>) -> Vec<ArrayRef> {
    fields
        .into_iter()
        .map(|col| Arc::new(StringArray::from(col)) as ArrayRef)
        .collect()
}

/// PostgreSQL's text format: one row per line, fields split by the
/// delimiter, `\N` for NULL, backslash escapes.
fn text_columns(copy: &CopyIn) -> Result<(Vec<ArrayRef>, usize), SqlError> {
    let text = std::str::from_utf8(&copy.data).map_err(|_| {
        SqlError::new(
            "22021",
            "invalid byte sequence for encoding \"UTF8\" in COPY data",
        )
    })?;
    let width = copy.targets.len();
    let mut fields: Vec<Vec<Option<String>>> = vec![Vec::new(); width];
    let mut rows = 0;
    for (line_no, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line == "\\." {
            break;
        }
        if line.is_empty() && line_no > 0 && text.ends_with('\n') {
            continue;
        }
        if line.is_empty() && width != 1 {
            continue;
        }
        let parts: Vec<&str> = line.split(copy.options.delimiter as char).collect();
        if parts.len() != width {
            return Err(bad_copy(format!(
                "{} data for column on line {}: expected {width} columns, got {}",
                if parts.len() < width {
                    "missing"
                } else {
                    "extra"
                },
                line_no + 1,
                parts.len()
            )));
        }
        for (col, raw) in fields.iter_mut().zip(parts) {
            col.push(if raw == copy.options.null {
                None
            } else {
                Some(unescape(raw))
            });
        }
        rows += 1;
    }
    Ok((string_columns(fields), rows))
}

fn unescape(raw: &str) -> String {
    if !raw.contains('\\') {
        return raw.to_string();
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn csv_columns(copy: &CopyIn) -> Result<(Vec<ArrayRef>, usize), SqlError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(copy.options.header)
        .delimiter(copy.options.delimiter)
        .quote(copy.options.quote)
        .escape(copy.options.escape.filter(|e| *e != copy.options.quote))
        .double_quote(copy.options.escape.is_none_or(|e| e == copy.options.quote))
        .flexible(true)
        .from_reader(copy.data.as_slice());
    let width = copy.targets.len();
    let mut fields: Vec<Vec<Option<String>>> = vec![Vec::new(); width];
    let mut rows = 0;
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(bad_copy(format!("malformed CSV data: {e}"))),
        }
        if record.len() == 1 && &record[0] == b"\\." {
            break;
        }
        if record.len() != width {
            return Err(bad_copy(format!(
                "expected {width} columns, got {} on line {}",
                record.len(),
                rows + 1 + usize::from(copy.options.header)
            )));
        }
        // PostgreSQL reads a quoted empty field ("") as an empty string and
        // only an unquoted one as NULL; the csv crate does not report quoting,
        // so both read as NULL here (documented in docs/sql.md).
        for (i, col) in fields.iter_mut().enumerate() {
            let value = std::str::from_utf8(&record[i]).map_err(|_| {
                SqlError::new("22021", "invalid byte sequence for encoding \"UTF8\"")
            })?;
            col.push(if value == copy.options.null {
                None
            } else {
                Some(value.to_string())
            });
        }
        rows += 1;
    }
    Ok((string_columns(fields), rows))
}

const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Days between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS as i64 * 86_400_000_000;

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SqlError> {
        let out = self
            .data
            .get(self.pos..self.pos + n)
            .ok_or_else(|| bad_copy("unexpected end of COPY BINARY data"))?;
        self.pos += n;
        Ok(out)
    }

    fn i16(&mut self) -> Result<i16, SqlError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, SqlError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Typed column builders for the binary format.
enum Builder {
    SmallInt(Int16Builder),
    Integer(Int32Builder),
    BigInt(Int64Builder),
    Real(Float32Builder),
    Double(Float64Builder),
    Text(StringBuilder),
    Boolean(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder, bool),
    Date(Date32Builder),
    Vector(Vec<Option<Vec<f32>>>),
}

impl Builder {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::SmallInt => Builder::SmallInt(Int16Builder::new()),
            ColumnType::Integer => Builder::Integer(Int32Builder::new()),
            ColumnType::BigInt => Builder::BigInt(Int64Builder::new()),
            ColumnType::Real => Builder::Real(Float32Builder::new()),
            ColumnType::Double => Builder::Double(Float64Builder::new()),
            ColumnType::Text | ColumnType::Varchar | ColumnType::Jsonb => {
                Builder::Text(StringBuilder::new())
            }
            ColumnType::Boolean => Builder::Boolean(BooleanBuilder::new()),
            ColumnType::Timestamp => Builder::Timestamp(TimestampMicrosecondBuilder::new(), false),
            ColumnType::TimestampTz => Builder::Timestamp(TimestampMicrosecondBuilder::new(), true),
            ColumnType::Date => Builder::Date(Date32Builder::new()),
            ColumnType::Vector(_) => Builder::Vector(Vec::new()),
        }
    }

    fn push(&mut self, value: Option<&[u8]>, jsonb: bool) -> Result<(), SqlError> {
        let size = |expected: usize, v: &[u8]| {
            if v.len() == expected {
                Ok(())
            } else {
                Err(bad_copy(format!(
                    "incorrect binary data format: {} bytes for a {expected}-byte value",
                    v.len()
                )))
            }
        };
        match (self, value) {
            (Builder::SmallInt(b), v) => b.append_option(
                v.map(|v| size(2, v).map(|_| i16::from_be_bytes([v[0], v[1]])))
                    .transpose()?,
            ),
            (Builder::Integer(b), v) => b.append_option(
                v.map(|v| size(4, v).map(|_| i32::from_be_bytes(v.try_into().unwrap_or_default())))
                    .transpose()?,
            ),
            (Builder::BigInt(b), v) => b.append_option(
                v.map(|v| size(8, v).map(|_| i64::from_be_bytes(v.try_into().unwrap_or_default())))
                    .transpose()?,
            ),
            (Builder::Real(b), v) => b.append_option(
                v.map(|v| size(4, v).map(|_| f32::from_be_bytes(v.try_into().unwrap_or_default())))
                    .transpose()?,
            ),
            (Builder::Double(b), v) => b.append_option(
                v.map(|v| size(8, v).map(|_| f64::from_be_bytes(v.try_into().unwrap_or_default())))
                    .transpose()?,
            ),
            (Builder::Boolean(b), v) => {
                b.append_option(v.map(|v| size(1, v).map(|_| v[0] != 0)).transpose()?)
            }
            (Builder::Date(b), v) => b.append_option(
                v.map(|v| {
                    size(4, v).map(|_| {
                        i32::from_be_bytes(v.try_into().unwrap_or_default()) + PG_EPOCH_DAYS
                    })
                })
                .transpose()?,
            ),
            (Builder::Timestamp(b, _), v) => b.append_option(
                v.map(|v| {
                    size(8, v).map(|_| {
                        i64::from_be_bytes(v.try_into().unwrap_or_default()) + PG_EPOCH_MICROS
                    })
                })
                .transpose()?,
            ),
            (Builder::Text(b), None) => b.append_null(),
            (Builder::Text(b), Some(v)) => {
                // jsonb's binary form is a version byte (1) and the text.
                let v = if jsonb {
                    v.strip_prefix(&[1])
                        .ok_or_else(|| bad_copy("unsupported jsonb version"))?
                } else {
                    v
                };
                b.append_value(std::str::from_utf8(v).map_err(|_| {
                    SqlError::new("22021", "invalid byte sequence for encoding \"UTF8\"")
                })?)
            }
            (Builder::Vector(rows), None) => rows.push(None),
            (Builder::Vector(rows), Some(v)) => rows.push(Some(decode_vector(v)?)),
        }
        Ok(())
    }

    fn finish(self) -> Result<ArrayRef, SqlError> {
        Ok(match self {
            Builder::SmallInt(mut b) => Arc::new(b.finish()),
            Builder::Integer(mut b) => Arc::new(b.finish()),
            Builder::BigInt(mut b) => Arc::new(b.finish()),
            Builder::Real(mut b) => Arc::new(b.finish()),
            Builder::Double(mut b) => Arc::new(b.finish()),
            Builder::Text(mut b) => Arc::new(b.finish()),
            Builder::Boolean(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Timestamp(mut b, tz) => {
                let a = b.finish();
                if tz {
                    Arc::new(a.with_timezone("+00:00"))
                } else {
                    Arc::new(a)
                }
            }
            Builder::Vector(rows) => {
                if rows.iter().all(Option::is_none) {
                    Arc::new(NullArray::new(rows.len()))
                } else {
                    quiver_planner::vector::from_rows(rows)?
                        .into_array()
                        .map_err(SqlError::from_datafusion)?
                }
            }
        })
    }
}

/// pgvector's binary form: `u16` dimensions, `u16` unused, then big-endian floats.
fn decode_vector(v: &[u8]) -> Result<Vec<f32>, SqlError> {
    let dim = u16::from_be_bytes([*v.first().unwrap_or(&0), *v.get(1).unwrap_or(&0)]) as usize;
    if v.len() != 4 + dim * 4 {
        return Err(bad_copy(format!(
            "incorrect binary data format for vector: {} bytes for {dim} dimensions",
            v.len()
        )));
    }
    let values: Vec<f32> = v[4..]
        .chunks_exact(4)
        .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    check_values(&values)?;
    Ok(values)
}

fn binary_columns(copy: &CopyIn) -> Result<(Vec<ArrayRef>, usize), SqlError> {
    let mut r = Reader {
        data: &copy.data,
        pos: 0,
    };
    if copy.data.is_empty() {
        return Ok((vec![], 0));
    }
    if r.take(BINARY_SIGNATURE.len())? != BINARY_SIGNATURE {
        return Err(bad_copy("COPY file signature not recognized"));
    }
    let _flags = r.i32()?;
    let extension = r.i32()?;
    r.take(usize::try_from(extension).map_err(|_| bad_copy("invalid COPY file header"))?)?;
    let types: Vec<ColumnType> = copy
        .targets
        .iter()
        .map(|&i| copy.table.schema.columns[i].ty)
        .collect();
    let mut builders: Vec<Builder> = types.iter().map(|t| Builder::new(*t)).collect();
    let mut rows = 0;
    loop {
        let count = r.i16()?;
        if count == -1 {
            break;
        }
        if count as usize != builders.len() {
            return Err(bad_copy(format!(
                "row field count is {count}, expected {}",
                builders.len()
            )));
        }
        for (b, ty) in builders.iter_mut().zip(&types) {
            let len = r.i32()?;
            let value = if len < 0 {
                None
            } else {
                Some(r.take(len as usize)?)
            };
            b.push(value, *ty == ColumnType::Jsonb)?;
        }
        rows += 1;
    }
    let columns = builders
        .into_iter()
        .map(Builder::finish)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((columns, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_unescapes_like_postgres() {
        assert_eq!(unescape("a\\tb\\\\c\\n"), "a\tb\\c\n");
        assert_eq!(unescape("plain"), "plain");
    }

    #[test]
    fn vectors_decode_from_pgvector_binary() {
        let mut v = vec![0, 2, 0, 0];
        v.extend_from_slice(&1.5f32.to_be_bytes());
        v.extend_from_slice(&(-2.0f32).to_be_bytes());
        assert_eq!(decode_vector(&v).unwrap(), vec![1.5, -2.0]);
        assert!(decode_vector(&v[..6]).is_err());
    }
}

//! `COPY table [(columns)] TO STDOUT` and `COPY (query) TO STDOUT` in text,
//! CSV and binary format. Rows are read at the session's snapshot like a
//! SELECT and encoded with pgwire's COPY encoder through arrow-pg's value
//! encoders, so vectors come out as `[1,2,3]` (text) or pgvector's binary
//! layout.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyCsvOptions, CopyEncoder, CopyTextOptions};
use pgwire::error::PgWireResult;
use pgwire::messages::copy::CopyData;
use pgwire::types::format::FormatOptions;
use quiver_planner::{SqlError, sqlstate};
use sqlparser::ast::{CopySource, CopyTarget, Expr, Ident, ObjectName, Statement};

use crate::copy_in::{CopyFormat, CopyOptions, copy_table};
use crate::engine::{Engine, Output};
use crate::session::Session;

/// Runs the COPY's query; the rows are encoded by [`encode`].
pub async fn run(
    engine: &Engine,
    session: &Session,
    source: CopySource,
    target: &CopyTarget,
    options: CopyOptions,
) -> Result<Output, SqlError> {
    if !matches!(target, CopyTarget::Stdout) {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "COPY TO a server file is not supported (use psql's \\copy, which reads STDOUT)",
        ));
    }
    let query = match source {
        CopySource::Query(query) => Statement::Query(query),
        CopySource::Table {
            table_name,
            columns,
        } => engine.parse_one(&table_query(engine, &table_name, &columns).await?)?,
    };
    match engine.run_query(session, query).await? {
        Output::Rows(schema, batches) => Ok(Output::CopyOut(options, schema, batches)),
        _ => Err(SqlError::new("XX000", "COPY query produced no rows")),
    }
}

async fn table_query(
    engine: &Engine,
    name: &ObjectName,
    columns: &[Ident],
) -> Result<String, SqlError> {
    let (info, targets) = copy_table(engine, name, columns).await?;
    let list = targets
        .iter()
        .map(|&i| {
            Expr::Identifier(Ident::with_quote('"', info.schema.columns[i].name.clone()))
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(", ");
    let table = Ident::with_quote('"', info.name.clone());
    Ok(format!("SELECT {list} FROM {table}"))
}

/// Encodes the rows as CopyData messages in the requested format.
pub fn encode(
    options: &CopyOptions,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    format_options: Arc<FormatOptions>,
) -> PgWireResult<Vec<PgWireResult<CopyData>>> {
    let wire_format = if options.format == CopyFormat::Binary {
        Format::UnifiedBinary
    } else {
        Format::UnifiedText
    };
    let fields = Arc::new(arrow_pg::datatypes::arrow_schema_to_pg_fields(
        schema,
        &wire_format,
        Some(format_options),
    )?);
    let null_string = options.null.as_str().into();
    let delimiter = (options.delimiter as char).to_string().into();
    let mut encoder = match options.format {
        CopyFormat::Binary => CopyEncoder::new_binary(fields.clone()),
        CopyFormat::Text => CopyEncoder::new_text(
            fields.clone(),
            CopyTextOptions {
                delimiter,
                null_string,
            },
        ),
        CopyFormat::Csv => CopyEncoder::new_csv(
            fields.clone(),
            CopyCsvOptions {
                delimiter,
                quote: (options.quote as char).to_string().into(),
                escape: (options.escape.unwrap_or(options.quote) as char)
                    .to_string()
                    .into(),
                null_string,
                force_quote: vec![],
            },
        ),
    };
    let mut out = Vec::new();
    // The header line travels in the first row's message: pgwire counts
    // messages for the `COPY n` tag.
    let mut header = options.header.then(|| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        format!("{}\n", names.join(&(options.delimiter as char).to_string())).into_bytes()
    });
    for batch in batches {
        let batch = crate::text_format::postgres_text(batch, &wire_format);
        for row in 0..batch.num_rows() {
            for (col, field) in fields.iter().enumerate() {
                arrow_pg::encoder::encode_value(
                    &mut encoder,
                    batch.column(col),
                    row,
                    batch.schema().field(col),
                    field,
                )?;
            }
            let row = arrow_pg::encoder::Encoder::take_row(&mut encoder);
            out.push(Ok(match header.take() {
                Some(mut bytes) => {
                    bytes.extend_from_slice(&row.data);
                    CopyData::new(bytes.into())
                }
                None => row,
            }));
        }
    }
    if let Some(bytes) = header {
        out.push(Ok(CopyData::new(bytes.into())));
    }
    Ok(out)
}

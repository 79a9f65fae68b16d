//! PostgreSQL catalog functions drivers call that the pg_catalog emulation
//! lacks: `to_regtype(text)`, which psycopg's `TypeInfo.fetch` (and so
//! pgvector-python's `register_vector`) uses to find the `vector` type, and
//! `version()`, which ORMs parse for the PostgreSQL version.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array};
use arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

/// The OID of pgvector's `vector` type as Quiver reports it in `pg_type`.
pub const VECTOR_TYPE_OID: i32 = 16385;

/// Type names (as `format_type`, `regtype` input or common aliases) → OID.
fn type_oid(name: &str) -> Option<i32> {
    let name = name.trim().trim_matches('"').to_ascii_lowercase();
    let name = name
        .strip_prefix("pg_catalog.")
        .or_else(|| name.strip_prefix("public."))
        .unwrap_or(&name);
    Some(match name {
        "bool" | "boolean" => 16,
        "bytea" => 17,
        "int8" | "bigint" => 20,
        "int2" | "smallint" => 21,
        "int4" | "integer" | "int" => 23,
        "text" => 25,
        "oid" => 26,
        "json" => 114,
        "float4" | "real" => 700,
        "float8" | "double precision" => 701,
        "varchar" | "character varying" => 1043,
        "date" => 1082,
        "timestamp" | "timestamp without time zone" => 1114,
        "timestamptz" | "timestamp with time zone" => 1184,
        "numeric" | "decimal" => 1700,
        "uuid" => 2950,
        "jsonb" => 3802,
        "bit" => 1560,
        "varbit" | "bit varying" => 1562,
        "vector" => VECTOR_TYPE_OID,
        _ => return None,
    })
}

/// `to_regtype(text)`: the type's OID, or NULL for an unknown type.
pub fn to_regtype_udf() -> ScalarUDF {
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = arrays[0].as_string::<i32>();
            let oids: Int32Array = (0..names.len())
                .map(|i| {
                    (!names.is_null(i))
                        .then(|| type_oid(names.value(i)))
                        .flatten()
                })
                .collect();
            let out: ArrayRef = Arc::new(oids);
            Ok(ColumnarValue::Array(out))
        }),
    )
}

/// The PostgreSQL version Quiver speaks (also `server_version`).
pub const POSTGRES_VERSION: &str = "16.6";

/// `version()`: PostgreSQL's format (drivers match `PostgreSQL (\d+)\.(\d+)`),
/// naming Quiver.
pub fn version_udf() -> ScalarUDF {
    let text = format!(
        "PostgreSQL {POSTGRES_VERSION} (Quiver {}) on {}-linux, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::Utf8(Some(text.clone())),
            ))
        }),
    )
}

/// PostgreSQL's `pg_size_pretty(bigint)`: bytes below 10 kB, then kB, MB,
/// GB, TB and PB, each rounded half away from zero, switching unit below
/// 20 units of the next (`pg_size_pretty` in PostgreSQL's dbsize.c).
pub fn size_pretty(bytes: i64) -> String {
    // (name, limit below which the unit is used, rounded, bits)
    const UNITS: [(&str, i64, bool, u32); 6] = [
        ("bytes", 10 * 1024, false, 0),
        ("kB", 20 * 1024 - 1, true, 10),
        ("MB", 20 * 1024 - 1, true, 20),
        ("GB", 20 * 1024 - 1, true, 30),
        ("TB", 20 * 1024 - 1, true, 40),
        ("PB", 20 * 1024 - 1, true, 50),
    ];
    let half_rounded = |x: i64| (x + if x < 0 { -1 } else { 1 }) / 2;
    let mut size = bytes;
    for (i, &(name, limit, round, bits)) in UNITS.iter().enumerate() {
        if i + 1 == UNITS.len() || size.unsigned_abs() < limit as u64 {
            let shown = if round { half_rounded(size) } else { size };
            return format!("{shown} {name}");
        }
        let next = UNITS[i + 1];
        let shift = next.3 - bits - u32::from(next.2) + u32::from(round);
        size /= 1i64 << shift;
    }
    unreachable!("the last unit always matches")
}

/// `pg_size_pretty(bigint)`.
pub fn pg_size_pretty_udf() -> ScalarUDF {
    create_udf(
        "pg_size_pretty",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let sizes = arrays[0].as_primitive::<arrow::datatypes::Int64Type>();
            let out: arrow::array::StringArray = sizes.iter().map(|v| v.map(size_pretty)).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_postgres() {
        // PostgreSQL 16's algorithm, worked by hand.
        for (bytes, text) in [
            (0, "0 bytes"),
            (10239, "10239 bytes"),
            (10240, "10 kB"),
            (20_971_519, "20 MB"),
            (10_484_735, "10239 kB"),
            (20_971_520, "20 MB"),
            (1_073_741_824, "1024 MB"),
            (160_432_128, "153 MB"),
            (-10240, "-10 kB"),
        ] {
            assert_eq!(size_pretty(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn resolves_vector_and_builtin_names() {
        assert_eq!(type_oid("vector"), Some(VECTOR_TYPE_OID));
        assert_eq!(type_oid("public.vector"), Some(VECTOR_TYPE_OID));
        assert_eq!(type_oid("double precision"), Some(701));
        assert_eq!(type_oid("halfvec"), None);
    }
}

/// `format_type(oid, typmod)` that also names pgvector's type: wraps the
/// pg_catalog emulation's function (which calls it `???`) and fills in
/// `vector` / `vector(n)` for the vector OID.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorAwareFormatType {
    inner: Arc<ScalarUDF>,
}

impl VectorAwareFormatType {
    pub fn wrap(inner: Arc<ScalarUDF>) -> ScalarUDF {
        ScalarUDF::new_from_impl(VectorAwareFormatType { inner })
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for VectorAwareFormatType {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let oids = args.args[0].to_array(rows)?;
        let oids = arrow::compute::cast(&oids, &DataType::Int64)?;
        let oids = oids.as_primitive::<arrow::datatypes::Int64Type>();
        let typmods = match args.args.get(1) {
            Some(t) => Some(arrow::compute::cast(&t.to_array(rows)?, &DataType::Int64)?),
            None => None,
        };
        let names = self.inner.invoke_with_args(args)?.to_array(rows)?;
        let names = arrow::compute::cast(&names, &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let out: arrow::array::StringArray = (0..rows)
            .map(|i| {
                if oids.is_valid(i) && oids.value(i) == VECTOR_TYPE_OID as i64 {
                    let typmod = typmods.as_ref().and_then(|t| {
                        let t = t.as_primitive::<arrow::datatypes::Int64Type>();
                        t.is_valid(i).then(|| t.value(i))
                    });
                    Some(match typmod {
                        Some(n) if n > 0 => format!("vector({n})"),
                        _ => "vector".to_string(),
                    })
                } else {
                    names.is_valid(i).then(|| names.value(i).to_string())
                }
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `pg_get_expr(expr, relation [, pretty])`: Quiver keeps expressions
/// (column defaults in `pg_attrdef.adbin`) as SQL text already, so this
/// returns it; the pg_catalog emulation's version returns ''.
pub fn pg_get_expr_udf() -> ScalarUDF {
    TextFunction::udf("pg_get_expr", Volatility::Stable, |args| {
        let text = args.args[0].to_array(args.number_rows)?;
        Ok(arrow::compute::cast(&text, &DataType::Utf8)?)
    })
}

/// Catalog functions over objects Quiver keeps no data for, answering
/// NULL like PostgreSQL does for an object without it:
/// `col_description(table, column)` and `obj_description(oid [, catalog])`
/// (no comments), `pg_get_triggerdef` and `pg_get_ruledef` (psql's `\d+`
/// only calls them for rows of empty catalogs).
pub fn null_text_udfs() -> Vec<ScalarUDF> {
    [
        "col_description",
        "obj_description",
        "pg_get_triggerdef",
        "pg_get_ruledef",
    ]
    .into_iter()
    .map(|name| TextFunction::udf(name, Volatility::Stable, null_text))
    .collect()
}

/// `json_build_object(key, value, ...)`: a JSON object as text (Quiver
/// reports json/jsonb as text). ORMs call it while reflecting tables.
pub fn json_build_object_udf() -> ScalarUDF {
    TextFunction::udf(
        "json_build_object",
        Volatility::Immutable,
        json_build_object,
    )
}

/// A function of any arguments returning text: the catalog functions above
/// differ only in their body. Identified by name (DataFusion compares
/// functions; function pointers compare unreliably).
#[derive(Debug)]
struct TextFunction {
    name: &'static str,
    signature: datafusion::logical_expr::Signature,
    body: fn(&datafusion::logical_expr::ScalarFunctionArgs) -> datafusion::error::Result<ArrayRef>,
}

impl PartialEq for TextFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for TextFunction {}

impl std::hash::Hash for TextFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl TextFunction {
    fn udf(
        name: &'static str,
        volatility: Volatility,
        body: fn(
            &datafusion::logical_expr::ScalarFunctionArgs,
        ) -> datafusion::error::Result<ArrayRef>,
    ) -> ScalarUDF {
        ScalarUDF::new_from_impl(TextFunction {
            name,
            signature: datafusion::logical_expr::Signature::variadic_any(volatility),
            body,
        })
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for TextFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Array((self.body)(&args)?))
    }
}

fn null_text(
    args: &datafusion::logical_expr::ScalarFunctionArgs,
) -> datafusion::error::Result<ArrayRef> {
    Ok(arrow::array::new_null_array(
        &DataType::Utf8,
        args.number_rows,
    ))
}

fn json_value(array: &ArrayRef, row: usize) -> datafusion::error::Result<serde_json::Value> {
    use datafusion::scalar::ScalarValue;
    Ok(match ScalarValue::try_from_array(array, row)? {
        v if v.is_null() => serde_json::Value::Null,
        ScalarValue::Boolean(Some(b)) => serde_json::Value::Bool(b),
        ScalarValue::Int8(Some(n)) => n.into(),
        ScalarValue::Int16(Some(n)) => n.into(),
        ScalarValue::Int32(Some(n)) => n.into(),
        ScalarValue::Int64(Some(n)) => n.into(),
        ScalarValue::UInt8(Some(n)) => n.into(),
        ScalarValue::UInt16(Some(n)) => n.into(),
        ScalarValue::UInt32(Some(n)) => n.into(),
        ScalarValue::UInt64(Some(n)) => n.into(),
        ScalarValue::Float32(Some(n)) => serde_json::Number::from_f64(n as f64)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        ScalarValue::Float64(Some(n)) => serde_json::Number::from_f64(n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        other => serde_json::Value::String(other.to_string()),
    })
}

fn json_build_object(
    args: &datafusion::logical_expr::ScalarFunctionArgs,
) -> datafusion::error::Result<ArrayRef> {
    if !args.args.len().is_multiple_of(2) {
        return Err(datafusion::error::DataFusionError::Plan(
            "argument list must have even number of elements".into(),
        ));
    }
    let rows = args.number_rows;
    let arrays = args
        .args
        .iter()
        .map(|a| a.to_array(rows))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let mut out = arrow::array::StringBuilder::new();
    for row in 0..rows {
        let mut object = serde_json::Map::new();
        for pair in arrays.chunks(2) {
            let key = match json_value(&pair[0], row)? {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => {
                    return Err(datafusion::error::DataFusionError::Execution(
                        "null value not allowed for object key".into(),
                    ));
                }
                other => other.to_string(),
            };
            object.insert(key, json_value(&pair[1], row)?);
        }
        out.append_value(serde_json::Value::Object(object).to_string());
    }
    Ok(Arc::new(out.finish()))
}

/// `pg_*_is_visible(oid)` for object kinds whose every object lives in a
/// schema on the search path (Quiver has `pg_catalog` and `public` only):
/// always true.
pub fn visibility_udfs() -> Vec<ScalarUDF> {
    [
        "pg_type_is_visible",
        "pg_collation_is_visible",
        "pg_function_is_visible",
        "pg_opclass_is_visible",
        "pg_operator_is_visible",
        "pg_conversion_is_visible",
    ]
    .into_iter()
    .map(|name| {
        create_udf(
            name,
            vec![DataType::Int64],
            DataType::Boolean,
            Volatility::Stable,
            Arc::new(|args: &[ColumnarValue]| {
                let rows = ColumnarValue::values_to_arrays(args)?[0].len();
                Ok(ColumnarValue::Array(Arc::new(
                    arrow::array::BooleanArray::from(vec![true; rows]),
                )))
            }),
        )
    })
    .collect()
}

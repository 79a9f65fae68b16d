use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// Arrow field metadata key marking a `FixedSizeList(Float32, n)` column as a
/// pgvector `vector`, so the wire encoder prints `[1,2,3]` and reports the
/// `vector` type. The key is the one `arrow-pg` understands.
pub const PG_VECTOR_KEY: &str = "pg.vector";

/// Hidden column every stored segment carries: the commit timestamp of the row.
pub const INSERT_TS_COLUMN: &str = "_quiver_insert_ts";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("column \"{0}\" specified more than once")]
    DuplicateColumn(String),
    #[error("column \"{0}\" named in key does not exist")]
    UnknownKeyColumn(String),
    #[error("a table needs a PRIMARY KEY")]
    MissingPrimaryKey,
    #[error("column type {0} cannot be part of a primary key")]
    UnsupportedKeyType(String),
    #[error("vector dimension must be between 1 and 16000, got {0}")]
    BadVectorDimension(i64),
}

/// The SQL types a Quiver column can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    SmallInt,
    Integer,
    BigInt,
    Real,
    Double,
    Text,
    Varchar,
    Boolean,
    Timestamp,
    TimestampTz,
    Date,
    Jsonb,
    /// pgvector `vector(n)`: `n` float32 components.
    Vector(u32),
}

/// Arrow type of a `vector(n)` column.
pub fn vector_data_type(dim: u32) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        dim as i32,
    )
}

impl ColumnType {
    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::SmallInt => DataType::Int16,
            ColumnType::Integer => DataType::Int32,
            ColumnType::BigInt => DataType::Int64,
            ColumnType::Real => DataType::Float32,
            ColumnType::Double => DataType::Float64,
            ColumnType::Text | ColumnType::Varchar | ColumnType::Jsonb => DataType::Utf8,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColumnType::TimestampTz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
            }
            ColumnType::Date => DataType::Date32,
            ColumnType::Vector(dim) => vector_data_type(dim),
        }
    }

    /// The PostgreSQL spelling, as `format_type` would print it.
    pub fn pg_name(self) -> String {
        match self {
            ColumnType::SmallInt => "smallint".into(),
            ColumnType::Integer => "integer".into(),
            ColumnType::BigInt => "bigint".into(),
            ColumnType::Real => "real".into(),
            ColumnType::Double => "double precision".into(),
            ColumnType::Text => "text".into(),
            ColumnType::Varchar => "character varying".into(),
            ColumnType::Boolean => "boolean".into(),
            ColumnType::Timestamp => "timestamp without time zone".into(),
            ColumnType::TimestampTz => "timestamp with time zone".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Jsonb => "jsonb".into(),
            ColumnType::Vector(dim) => format!("vector({dim})"),
        }
    }

    pub fn vector_dim(self) -> Option<u32> {
        match self {
            ColumnType::Vector(dim) => Some(dim),
            _ => None,
        }
    }

    /// Integer and floating-point types.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ColumnType::SmallInt
                | ColumnType::Integer
                | ColumnType::BigInt
                | ColumnType::Real
                | ColumnType::Double
        )
    }

    fn can_be_key(self) -> bool {
        !matches!(
            self,
            ColumnType::Vector(_) | ColumnType::Jsonb | ColumnType::Real | ColumnType::Double
        )
    }
}

/// What an INSERT (or COPY) that leaves a column out stores in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColumnDefault {
    /// `serial`/`bigserial`/`smallserial` (or `DEFAULT nextval(...)`): the
    /// next values of the column's own sequence, kept by the coordinator.
    Serial,
    /// `DEFAULT expr`: the expression's SQL text, evaluated once per row.
    Expr { sql: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ColumnDefault>,
}

impl ColumnDef {
    pub fn arrow_field(&self) -> Field {
        let field = Field::new(&self.name, self.ty.arrow_type(), self.nullable);
        if self.ty.vector_dim().is_some() {
            field.with_metadata(HashMap::from([(
                PG_VECTOR_KEY.to_string(),
                "vector".to_string(),
            )]))
        } else {
            field
        }
    }
}

/// A table's user-visible columns and its primary key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    pub columns: Vec<ColumnDef>,
    /// Indexes into `columns`, in key order.
    pub primary_key: Vec<usize>,
}

impl TableSchema {
    /// Validates and builds a schema; primary-key columns become NOT NULL.
    pub fn try_new(mut columns: Vec<ColumnDef>, key: &[String]) -> Result<Self, SchemaError> {
        for (i, c) in columns.iter().enumerate() {
            if columns[..i].iter().any(|o| o.name == c.name) {
                return Err(SchemaError::DuplicateColumn(c.name.clone()));
            }
        }
        if key.is_empty() {
            return Err(SchemaError::MissingPrimaryKey);
        }
        let mut primary_key = Vec::with_capacity(key.len());
        for k in key {
            let idx = columns
                .iter()
                .position(|c| &c.name == k)
                .ok_or_else(|| SchemaError::UnknownKeyColumn(k.clone()))?;
            if !columns[idx].ty.can_be_key() {
                return Err(SchemaError::UnsupportedKeyType(columns[idx].ty.pg_name()));
            }
            columns[idx].nullable = false;
            primary_key.push(idx);
        }
        Ok(TableSchema {
            columns,
            primary_key,
        })
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The user-visible Arrow schema.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(ColumnDef::arrow_field)
                .collect::<Vec<_>>(),
        ))
    }

    /// The stored schema: user columns followed by the hidden insert timestamp.
    pub fn segment_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self.columns.iter().map(ColumnDef::arrow_field).collect();
        fields.push(Field::new(INSERT_TS_COLUMN, DataType::UInt64, false));
        Arc::new(Schema::new(fields))
    }

    /// Arrow schema of just the primary-key columns (the payload of a delete).
    pub fn key_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.primary_key
                .iter()
                .map(|&i| self.columns[i].arrow_field())
                .collect::<Vec<_>>(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: ColumnType) -> ColumnDef {
        ColumnDef {
            default: None,
            name: name.into(),
            ty,
            nullable: true,
        }
    }

    #[test]
    fn key_columns_become_not_null() {
        let s = TableSchema::try_new(
            vec![
                col("id", ColumnType::BigInt),
                col("v", ColumnType::Vector(3)),
            ],
            &["id".into()],
        )
        .unwrap();
        assert!(!s.columns[0].nullable);
        assert_eq!(s.segment_schema().fields().len(), 3);
        assert_eq!(
            s.arrow_schema().field(1).metadata().get(PG_VECTOR_KEY),
            Some(&"vector".to_string())
        );
    }

    #[test]
    fn rejects_vector_keys_and_missing_keys() {
        assert!(
            TableSchema::try_new(vec![col("v", ColumnType::Vector(3))], &["v".into()]).is_err()
        );
        assert!(TableSchema::try_new(vec![col("id", ColumnType::BigInt)], &[]).is_err());
        assert!(TableSchema::try_new(vec![col("id", ColumnType::BigInt)], &["x".into()]).is_err());
    }
}

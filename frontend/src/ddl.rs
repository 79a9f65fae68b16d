//! CREATE TABLE, DROP TABLE, TRUNCATE, CREATE EXTENSION.

use pgwire::api::results::Tag;
use quiver_planner::coerce::column_type;
use quiver_planner::{SqlError, sqlstate};
use quiver_types::{ColumnDef, ColumnDefault, ColumnType, TableSchema};
use sqlparser::ast::{
    ColumnOption, CreateExtension, CreateTable, Expr, ObjectName, ObjectType, TableConstraint,
    Truncate,
};

use crate::engine::{Engine, Output, SCHEMA};
use crate::error::from_api;

/// The table name of a possibly schema-qualified name (`public.t` or `t`).
pub fn table_name(name: &ObjectName) -> Result<String, SqlError> {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(|i| {
            if i.quote_style.is_some() {
                i.value.clone()
            } else {
                i.value.to_ascii_lowercase()
            }
        })
        .collect();
    match parts.as_slice() {
        [table] => Ok(table.clone()),
        [schema, table] if schema == SCHEMA => Ok(table.clone()),
        [_, schema, table] if schema == SCHEMA => Ok(table.clone()),
        _ => Err(SqlError::new(
            "3F000",
            format!("schema of \"{name}\" does not exist"),
        )),
    }
}

/// `serial` and friends: PostgreSQL's shorthand for an integer column
/// filled from its own sequence.
fn serial_type(data_type: &sqlparser::ast::DataType) -> Option<ColumnType> {
    match data_type.to_string().to_ascii_lowercase().as_str() {
        "smallserial" | "serial2" => Some(ColumnType::SmallInt),
        "serial" | "serial4" => Some(ColumnType::Integer),
        "bigserial" | "serial8" => Some(ColumnType::BigInt),
        _ => None,
    }
}

fn key_column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(i) => Some(i.value.to_ascii_lowercase()),
        _ => None,
    }
}

pub async fn create_table(engine: &Engine, create: CreateTable) -> Result<Output, SqlError> {
    let name = table_name(&create.name)?;
    let mut columns = Vec::with_capacity(create.columns.len());
    let mut key: Vec<String> = Vec::new();
    for col in &create.columns {
        let serial = serial_type(&col.data_type);
        let ty = match serial {
            Some(ty) => ty,
            None => column_type(&col.data_type)?,
        };
        let col_name = if col.name.quote_style.is_some() {
            col.name.value.clone()
        } else {
            col.name.value.to_ascii_lowercase()
        };
        // serial is integer NOT NULL DEFAULT nextval(its own sequence).
        let mut nullable = serial.is_none();
        let mut default = serial.map(|_| ColumnDefault::Serial);
        for opt in &col.options {
            match &opt.option {
                ColumnOption::NotNull => nullable = false,
                ColumnOption::Null => nullable = true,
                ColumnOption::PrimaryKey(_) => key.push(col_name.clone()),
                ColumnOption::Default(expr) => {
                    if serial.is_some() {
                        return Err(SqlError::new(
                            sqlstate::SYNTAX_ERROR,
                            format!(
                                "multiple default values specified for column \"{col_name}\" of table \"{name}\""
                            ),
                        ));
                    }
                    default = Some(crate::defaults::column_default(engine, expr, ty).await?);
                }
                _ => {}
            }
        }
        columns.push(ColumnDef {
            name: col_name,
            ty,
            nullable,
            default,
        });
    }
    for constraint in &create.constraints {
        if let TableConstraint::PrimaryKey(pk) = constraint {
            if !key.is_empty() {
                return Err(SqlError::new(
                    "42P16",
                    format!("multiple primary keys for table \"{name}\" are not allowed"),
                ));
            }
            for c in &pk.columns {
                key.push(key_column_name(&c.column.expr).ok_or_else(|| {
                    SqlError::new(sqlstate::SYNTAX_ERROR, "primary key must name columns")
                })?);
            }
        }
    }
    let schema = TableSchema::try_new(columns, &key).map_err(|e| {
        let code = match e {
            quiver_types::SchemaError::DuplicateColumn(_) => "42701",
            quiver_types::SchemaError::UnknownKeyColumn(_) => sqlstate::UNDEFINED_COLUMN,
            _ => sqlstate::FEATURE_NOT_SUPPORTED,
        };
        SqlError::new(code, e.to_string())
    })?;
    engine
        .backends
        .coordinator
        .create_table(&name, schema, create.if_not_exists)
        .await
        .map_err(from_api)?;
    Ok(Output::Command(Tag::new("CREATE TABLE")))
}

pub async fn drop(
    engine: &Engine,
    object_type: ObjectType,
    if_exists: bool,
    names: Vec<ObjectName>,
) -> Result<Output, SqlError> {
    if object_type != ObjectType::Table {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("DROP {object_type} is not supported"),
        ));
    }
    for name in &names {
        let table = table_name(name)?;
        let Some(info) = engine.backends.table_info(&table).await else {
            if if_exists {
                continue;
            }
            return Err(SqlError::new(
                sqlstate::UNDEFINED_TABLE,
                format!("table \"{table}\" does not exist"),
            ));
        };
        // Remove the rows first so a crash in between leaves an empty table,
        // never a dropped table whose rows come back.
        engine
            .backends
            .streaming
            .truncate(&info)
            .await
            .map_err(from_api)?;
        engine
            .backends
            .coordinator
            .drop_table(&table, if_exists)
            .await
            .map_err(from_api)?;
    }
    Ok(Output::Command(Tag::new("DROP TABLE")))
}

pub async fn truncate(engine: &Engine, truncate: Truncate) -> Result<Output, SqlError> {
    for target in &truncate.table_names {
        let table = table_name(&target.name)?;
        let info = engine.backends.lookup_table(&table).await?;
        engine
            .backends
            .streaming
            .truncate(&info)
            .await
            .map_err(from_api)?;
    }
    Ok(Output::Command(Tag::new("TRUNCATE TABLE")))
}

pub fn create_extension(ext: CreateExtension) -> Result<Output, SqlError> {
    if ext.name.value.eq_ignore_ascii_case("vector") {
        Ok(Output::Command(Tag::new("CREATE EXTENSION")))
    } else {
        Err(SqlError::new(
            "58P01",
            format!(
                "extension \"{}\" is not available (Quiver has vector built in)",
                ext.name.value
            ),
        ))
    }
}

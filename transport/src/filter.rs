//! A search's WHERE clause on the wire: the bound physical expression as a
//! DataFusion protobuf, with the schema it is bound to. Functions travel by
//! name and are resolved in the receiving process's function registry, which
//! must hold the same functions the proxy plans with.

use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::execution::TaskContext;
use datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::protobuf;
use prost::Message;
use quiver_api::{ApiError, ApiResult, SearchFilter, StatusCode};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct WireFilter {
    /// `PhysicalExprNode`, protobuf-encoded.
    predicate: Vec<u8>,
    columns: Vec<usize>,
    /// `datafusion.Schema`, protobuf-encoded.
    schema: Vec<u8>,
}

impl WireFilter {
    pub fn encode(filter: &SearchFilter) -> ApiResult<Self> {
        let invalid = |e: &dyn std::fmt::Display| {
            ApiError::new(
                StatusCode::InvalidRequest,
                format!("the filter cannot be sent to a query node: {e}"),
            )
        };
        let predicate =
            serialize_physical_expr(&filter.predicate, &DefaultPhysicalExtensionCodec {})
                .map_err(|e| invalid(&e))?;
        let schema = protobuf::Schema::try_from(filter.schema.as_ref()).map_err(|e| invalid(&e))?;
        Ok(WireFilter {
            predicate: predicate.encode_to_vec(),
            columns: filter.columns.clone(),
            schema: schema.encode_to_vec(),
        })
    }

    pub fn decode(&self, functions: &TaskContext) -> ApiResult<SearchFilter> {
        let invalid = |e: &dyn std::fmt::Display| {
            ApiError::new(
                StatusCode::InvalidRequest,
                format!("the query node cannot evaluate the filter: {e}"),
            )
        };
        let schema = protobuf::Schema::decode(self.schema.as_slice()).map_err(|e| invalid(&e))?;
        let schema = Arc::new(Schema::try_from(&schema).map_err(|e| invalid(&e))?);
        let node = protobuf::PhysicalExprNode::decode(self.predicate.as_slice())
            .map_err(|e| invalid(&e))?;
        let predicate =
            parse_physical_expr(&node, functions, &schema, &DefaultPhysicalExtensionCodec {})
                .map_err(|e| invalid(&e))?;
        Ok(SearchFilter {
            predicate,
            columns: self.columns.clone(),
            schema,
        })
    }
}

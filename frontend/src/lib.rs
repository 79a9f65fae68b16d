//! The frontend (proxy): the PostgreSQL wire protocol and everything a
//! session needs.
//!
//! It accepts connections ([`server`]), keeps per-connection [`session`]
//! state (settings, consistency level, last write timestamp), turns each
//! statement into work for the other roles ([`engine`], [`ddl`], [`dml`]) and
//! exposes tables to DataFusion as providers that fan out to streaming nodes
//! (growing data) and query nodes (sealed segments) at one snapshot
//! timestamp ([`table`]). It holds no durable state of its own, so any number
//! of frontends can serve the same cluster.

pub mod auth;
pub mod catalog_indexes;
pub mod column_names;
pub mod config;
pub mod copy_in;
pub mod copy_out;
pub mod ddl;
pub mod declared_types;
pub mod defaults;
pub mod dml;
pub mod engine;
pub mod error;
pub mod index_ddl;
pub mod knn_fast_path;
pub mod literal_values;
pub mod pg_catalog;
pub mod prepared;
mod ready_status;
mod relation_size;
pub mod roles;
pub mod server;
pub mod session;
pub mod settings;
pub mod system_views;
pub mod table;
pub mod text_format;
pub mod transaction;
pub mod vector_search;

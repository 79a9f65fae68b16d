//! Wiring of Quiver's processes: standalone (every role in one process, or
//! with query and data nodes in processes of their own) and the role
//! processes. What each role does lives in its own crate; this crate only
//! connects them, in-process or through `quiver-transport`.

pub mod cluster;
pub mod nodes;
pub mod standalone;

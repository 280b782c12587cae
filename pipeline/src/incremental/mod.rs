//! Incremental sync: applying a window of Snowflake's change data in place
//! instead of reloading the table (see `shared/snowflake-changes.md` for what
//! Snowflake guarantees about change data).
//!
//! Built so far: [`eligible`], which decides once, from the config and the
//! DataFusion plan of the table's transform, whether a table can ever be
//! loaded incrementally; [`window`], the Snowflake statements that read a
//! window of changes (Snowflake's clock, deleted keys, upserted rows, the
//! count at the window's end).

pub mod eligible;
pub mod window;

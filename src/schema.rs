//! A job's Table Schema: loaded and checked in the parent (a bad schema is the caller's error,
//! exit 2 or 400, with a JSON pointer to the bad part), then handed to the worker in its config,
//! where the engine checks every row against it.

use std::sync::Arc;

use airlock_engine::schema::{Schema, SchemaError};

/// The largest schema accepted, in bytes of JSON: it travels to the worker inside its one
/// command-line argument (at most 128 KiB on Linux), beside the sandbox policy.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// A schema that loaded: its JSON (what the worker gets) and the compiled form.
#[derive(Debug, Clone)]
pub struct JobSchema {
    pub json: serde_json::Value,
    pub compiled: Arc<Schema>,
}

impl JobSchema {
    pub fn parse(text: &str) -> Result<JobSchema, SchemaError> {
        if text.len() > MAX_SCHEMA_BYTES {
            return Err(SchemaError {
                pointer: String::new(),
                message: format!(
                    "{} bytes; a schema is at most {MAX_SCHEMA_BYTES}",
                    text.len()
                ),
            });
        }
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| SchemaError {
            pointer: String::new(),
            message: format!("not JSON (line {}, column {}): {e}", e.line(), e.column()),
        })?;
        let compiled = Arc::new(Schema::from_value(&json)?);
        Ok(JobSchema { json, compiled })
    }

    /// Read and check a schema file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<JobSchema> {
        use anyhow::Context;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("reading the schema {}", path.display()))?;
        if meta.len() > MAX_SCHEMA_BYTES as u64 {
            anyhow::bail!(
                "the schema {} is {} bytes; a schema is at most {MAX_SCHEMA_BYTES}",
                path.display(),
                meta.len()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the schema {}", path.display()))?;
        JobSchema::parse(&text).with_context(|| format!("the schema {}", path.display()))
    }
}

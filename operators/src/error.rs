use std::fmt;

/// A value a geometry function could not use.
///
/// Carried inside `DataFusionError::External` so the pipeline can find it in
/// the error chain and add the table and the absolute row number.
#[derive(Debug, Clone)]
pub struct GeometryError {
    /// The SQL function, e.g. `st_geomfromgeojson`.
    pub function: &'static str,
    /// Row index within the batch the function was evaluated on.
    pub row_in_batch: usize,
    /// The offending value, shortened for display.
    pub value: String,
    /// What was wrong with it.
    pub reason: String,
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: invalid input {}: {}",
            self.function, self.value, self.reason
        )
    }
}

impl std::error::Error for GeometryError {}

/// Shortens a value for an error message: the start of it, quoted.
pub fn show_value(text: &str) -> String {
    const MAX: usize = 80;
    if text.len() <= MAX {
        format!("'{text}'")
    } else {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("'{}…' ({} bytes)", &text[..end], text.len())
    }
}

/// Shows binary input as hex, shortened.
pub fn show_bytes(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().take(40).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 40 {
        format!("\\x{hex}… ({} bytes)", bytes.len())
    } else {
        format!("\\x{hex}")
    }
}

/// Errors setting up or running a transform.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// The transform SQL does not plan (syntax, unknown column or function).
    #[error("transform SQL: {0}")]
    Plan(#[source] datafusion::error::DataFusionError),
    /// Registering the source with DataFusion failed.
    #[error("source: {0}")]
    Source(#[source] datafusion::error::DataFusionError),
}

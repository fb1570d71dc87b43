//! The core's one error type for bad data (cluster files, templates, command output). Decisions that refuse an
//! input are [`crate::core::Rejection`]s, not errors.

/// Bad input data: a malformed cluster file, a template that cannot be rendered, unparsable command output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A cluster file problem, located by file, line (when known) and field.
    #[error("{file}:{}: {field}: {message}", line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()))]
    Config {
        /// The file name as given to the parser.
        file: String,
        /// 1-based line of the offending value.
        line: Option<usize>,
        /// Dotted path of the field, e.g. `nodes[2].executor`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A template placeholder that has no value.
    #[error("cannot render {template:?}: {message}")]
    Template {
        /// The template element being rendered.
        template: String,
        /// What is wrong, naming the placeholder.
        message: String,
    },
    /// Command output that does not have the expected shape.
    #[error("cannot parse {what}: {message}")]
    Parse {
        /// Which output, e.g. `chef-backend-ctl status`.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
}

//! One module per subcommand.

pub mod executor;

//! The seam between the neutral core and the systems built into it. A built-in system (today one,
//! chef-backend, in its own directory) brings a reader of its own command output and a built-in profile; the
//! rest of the core reaches them only through this module, by the name a cluster file or a profile file gives
//! (`read_probe(name, ..)`, `profile(name, ..)`), never by importing a system's items. The tidy test
//! (`workflow/tests/core_tidy.rs`) keeps a system's names inside its directory, with the few lines here that
//! register it as the only exceptions.

use super::error::CoreError;
use super::event::{Observation, Outcome};
use super::observe::Topology;
use super::profile::{Action, Procedure, Profile};

pub mod chef_backend;

pub use chef_backend::{Installer, RecordedFailover, RecordedNodeStatus, RecordedTopology};

/// A probe's result as a reader reads it: an observation; `Err(None)`: the probe did not succeed and its output
/// shows nothing; `Err(Some(e))`: the output could not be read.
pub type Reading = Result<Observation, Option<CoreError>>;

/// One built-in system: its name and what the neutral core may ask of it.
pub struct Builtin {
    /// The name a cluster file's `profile` and a profile file's `reader` give it.
    pub name: &'static str,
    /// Its built-in profile, for the cluster file's package tool and procedure.
    pub profile: fn(Installer, Procedure) -> Profile,
    /// Its reader: a probe's result (`action` ended with `outcome`, its stdout and stderr) as an observation.
    pub read_probe: fn(Action, Outcome, &str, &str) -> Reading,
    /// The version a package file's name shows, if it shows one.
    pub version_from_package: fn(&str) -> Option<String>,
    /// A profile file's topology probe read by it (`reader = NAME`).
    pub topology: fn(&str) -> Result<Topology, CoreError>,
    /// A profile file's node probe read by it: whether the node's services are up.
    pub node_up: fn(&str) -> Result<bool, CoreError>,
    /// A profile file's failover probe read by it: whether automatic failover is blocked.
    pub fence_blocked: fn(&str) -> Result<bool, CoreError>,
    /// A profile file's version probe read by it.
    pub version: fn(&str) -> Result<String, CoreError>,
}

/// The built-in systems.
const BUILTINS: [&Builtin; 1] = [&chef_backend::BUILTIN];

/// Their names, for the cluster file's `profile` and a profile file's `reader`.
pub const NAMES: [&str; 1] = [BUILTINS[0].name];

/// The profile a cluster file that names none runs.
pub const DEFAULT: &str = BUILTINS[0].name;

/// The built-in system named `name`.
pub fn named(name: &str) -> Option<&'static Builtin> {
    BUILTINS.into_iter().find(|b| b.name == name)
}

fn unknown(name: &str) -> CoreError {
    CoreError::Parse {
        what: "built-in reader",
        message: format!("no built-in reader is named `{name}`"),
    }
}

/// The built-in profile named `name`, for the package tool and procedure; `None` if none is named so.
pub fn profile(name: &str, installer: Installer, procedure: Procedure) -> Option<Profile> {
    named(name).map(|b| (b.profile)(installer, procedure))
}

/// Reads a probe's result with the built-in reader named `name` (see [`Builtin::read_probe`]).
pub fn read_probe(
    name: &str,
    action: Action,
    outcome: Outcome,
    stdout: &str,
    stderr: &str,
) -> Reading {
    let builtin = named(name).ok_or_else(|| Some(unknown(name)))?;
    (builtin.read_probe)(action, outcome, stdout, stderr)
}

/// The version a package file's name shows, as the built-in system named `name` names its packages.
pub fn version_from_package(name: &str, path: &str) -> Option<String> {
    named(name).and_then(|b| (b.version_from_package)(path))
}

/// A profile file's topology probe, read by the built-in reader named `name`.
pub fn topology(name: &str, output: &str) -> Result<Topology, CoreError> {
    (named(name).ok_or_else(|| unknown(name))?.topology)(output)
}

/// A profile file's node probe, read by the built-in reader named `name`: whether the node is up.
pub fn node_up(name: &str, output: &str) -> Result<bool, CoreError> {
    (named(name).ok_or_else(|| unknown(name))?.node_up)(output)
}

/// A profile file's failover probe, read by the built-in reader named `name`: whether failover is blocked.
pub fn fence_blocked(name: &str, output: &str) -> Result<bool, CoreError> {
    (named(name).ok_or_else(|| unknown(name))?.fence_blocked)(output)
}

/// A profile file's version probe, read by the built-in reader named `name`.
pub fn version(name: &str, output: &str) -> Result<String, CoreError> {
    (named(name).ok_or_else(|| unknown(name))?.version)(output)
}

//! Fuzzing the API requests as the service decodes them (issue 12): `serde_json::from_slice` into each request
//! type (and the reply the CLI decodes), on arbitrary bytes and mutated valid requests. Nothing may panic, and a
//! decoded value re-encodes to bytes that decode again. A submission's cluster file then goes through
//! `ClusterFile::parse`, as the service does. Needs the `service` feature. `BATON_FUZZ_CASES` sets the inputs.

#[path = "../../tests/fuzz/support.rs"]
mod support;

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use support::{bytes, fuzz, mutated_json, Bytes};
use workflow::core::ClusterFile;
use workflow::service::api::{
    ApiReply, EventsRequest, ListRequest, OperatorRequest, SubmitRequest, UpgradeRef,
};

fn input(valid: Vec<serde_json::Value>) -> impl Strategy<Value = Bytes> {
    prop_oneof![bytes(400), mutated_json(valid)]
}

/// Decodes `bytes` as `T`; when it decodes, its encoding decodes again.
fn round_trip<T: Serialize + DeserializeOwned>(b: &[u8]) -> Result<Option<T>, TestCaseError> {
    let Ok(value) = serde_json::from_slice::<T>(b) else {
        return Ok(None);
    };
    let again = serde_json::to_vec(&value).unwrap();
    prop_assert!(serde_json::from_slice::<T>(&again).is_ok());
    Ok(Some(value))
}

const CLUSTER: &str = r#"
[cluster]
name = "test"
profile = "chef-backend"

[[nodes]]
name = "backend-1"
address = "192.168.33.215"
executor = "g1"

[upgrade]
package = "/var/tmp/chef-backend_3.1.0-1_amd64.deb"
"#;

#[test]
fn fuzz_submit_request() {
    let valid = vec![
        json!({"cluster_file": "c.toml", "cluster_toml": CLUSTER, "package": "/p.deb",
               "target_version": "3.1.0-1", "approve_before": ["before-leader"], "plan_hash": "ab",
               "plan_only": true, "requested_by": "x"}),
        json!({"cluster_file": "c.toml", "cluster_toml": CLUSTER}),
    ];
    fuzz("api::SubmitRequest", input(valid), |b| {
        if let Some(req) = round_trip::<SubmitRequest>(&b.0)? {
            let _ = ClusterFile::parse(&req.cluster_file, &req.cluster_toml);
        }
        Ok(())
    });
}

#[test]
fn fuzz_other_requests() {
    let upgrade = "01JB0000000000000000000000";
    fuzz(
        "api::OperatorRequest",
        input(vec![
            json!({"upgrade": upgrade, "by": "a", "reason": "r", "gate": "before-leader",
                   "step": 3, "resolution": "retry"}),
            json!({"upgrade": upgrade}),
        ]),
        |b| round_trip::<OperatorRequest>(&b.0).map(drop),
    );
    fuzz(
        "api::EventsRequest",
        input(vec![
            json!({"upgrade": upgrade, "from_seq": 1, "limit": 500}),
            json!({"upgrade": upgrade}),
        ]),
        |b| round_trip::<EventsRequest>(&b.0).map(drop),
    );
    fuzz(
        "api::ListRequest",
        input(vec![
            json!({"after": upgrade, "limit": 100, "include_plans": true}),
            json!({}),
        ]),
        |b| round_trip::<ListRequest>(&b.0).map(drop),
    );
    fuzz(
        "api::UpgradeRef",
        input(vec![json!({ "upgrade": upgrade })]),
        |b| round_trip::<UpgradeRef>(&b.0).map(drop),
    );
    fuzz(
        "api::ApiReply",
        input(vec![
            json!({"ok": {"upgrade": upgrade, "events": [], "next_seq": null}}),
            json!({"err": {"kind": "not_found", "message": "no such upgrade"}}),
        ]),
        |b| round_trip::<ApiReply>(&b.0).map(drop),
    );
}

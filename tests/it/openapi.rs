//! The OpenAPI document at `/v1/openapi.json` against the real router: every API route is
//! documented with exactly the methods it serves, and every documented operation exists.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::helpers::{TestApp, TestDb};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `path` with each `{param}` replaced by a value the route accepts as a segment.
fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000-0000-0000-0000-000000000000")
        .replace("{ticket}", "00000000-0000-0000-0000-000000000000")
        .replace("{channel}", "lobby")
}

/// Every `$ref` in `v` names something in `doc`.
fn refs_resolve(doc: &Value, v: &Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                let pointer = r.strip_prefix('#').expect("local references only");
                assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
            }
            o.values().for_each(|x| refs_resolve(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| refs_resolve(doc, x)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_the_gateway_serves() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let r = app
        .http
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    refs_resolve(&doc, &doc);

    let mut documented: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let methods = documented.entry(path.clone()).or_default();
        for m in METHODS {
            if let Some(op) = item.get(m) {
                methods.insert(m);
                assert!(op["responses"].is_object(), "{m} {path} has no responses");
                let id = op["operationId"].as_str().expect("an operationId");
                assert!(
                    operation_ids.insert(id.to_owned()),
                    "operationId {id} twice"
                );
            }
        }
        assert!(!methods.is_empty(), "{path} documents no operation");
    }
    let served: BTreeSet<String> = postgame::gateway::api_paths()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let paths: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(
        served.difference(&paths).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "routes the document does not describe"
    );
    assert_eq!(
        paths.difference(&served).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "documented paths the router does not serve"
    );

    // Probe every method of every path: documented ones are routed (not the 405 fallback,
    // not the 404 of an unknown endpoint), the others answer 405.
    for (path, methods) in &documented {
        let url = app.url(&concrete(path));
        for m in METHODS {
            let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = app.http.request(method, &url).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if methods.contains(m) {
                assert_ne!(status, 405, "{m} {path} is documented but not allowed");
                assert!(
                    !(status == 404 && body.contains("no such endpoint")),
                    "{m} {path} is documented but not routed"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{m} {path} is served ({status}) but not documented"
                );
            }
        }
    }
    // The probe tells an unknown endpoint apart.
    let r = app
        .http
        .get(app.url("/v1/no-such-thing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.text().await.unwrap().contains("no such endpoint"));
    app.shutdown().await;
}

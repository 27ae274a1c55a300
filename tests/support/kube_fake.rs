//! A stateful fake of the Kubernetes API server for the operator's tests, served to a real
//! `kube::Client` through `Client::new(service_fn)`: namespaced objects kept as JSON with
//! resource versions; LIST, WATCH (a stream of changes since a version), GET, POST, PATCH (JSON
//! patch, merge, strategic merge and apply, the last three as merge patches), `/status`
//! subresources, and DELETE with finalizers (the object stays, with a deletion timestamp, until
//! its finalizers are removed). Every version of every object is kept, so a test can check what
//! a status went through. No cluster is needed; no kube-apiserver exists on these machines.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The collection path of `FederatedJob`s in `namespace`.
pub fn jobs(namespace: &str) -> String {
    format!("/apis/cairn.dev/v1alpha1/namespaces/{namespace}/federatedjobs")
}

/// The collection path of `Lease`s in `namespace`.
pub fn leases(namespace: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")
}

/// The collection path of `Event`s (events.k8s.io) in `namespace`.
pub fn events(namespace: &str) -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events")
}

#[derive(Clone)]
struct Change {
    revision: u64,
    collection: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    revision: u64,
    /// (collection, name) → object.
    objects: BTreeMap<(String, String), Value>,
    /// Every change, in order.
    log: Vec<Change>,
}

/// The fake API server. Clones share the same state.
#[derive(Clone)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    /// While set, every request fails with 503 and open watches end: an outage.
    unavailable: Arc<AtomicBool>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        FakeApiServer {
            state: Arc::default(),
            changes: broadcast::channel(4096).0,
            unavailable: Arc::default(),
        }
    }
}

impl FakeApiServer {
    /// A client of this server whose default namespace is `namespace`.
    pub fn client(&self, namespace: &str) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(request).await) }
        });
        kube::Client::new(service, namespace)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (`true`) or ends an outage of the whole API.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Creates `object` in `collection`, as `kubectl create` would.
    pub fn create(&self, collection: &str, object: Value) -> Value {
        self.insert(collection, object)
            .unwrap_or_else(|(_, message)| panic!("{message}"))
    }

    /// The object `name` of `collection`, if it exists.
    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.state()
            .objects
            .get(&(collection.to_string(), name.to_string()))
            .cloned()
    }

    /// Every object of `collection`.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.state()
            .objects
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every version `name` of `collection` had, oldest first.
    pub fn history(&self, collection: &str, name: &str) -> Vec<Value> {
        self.state()
            .log
            .iter()
            .filter(|c| c.collection == collection && c.object["metadata"]["name"] == name)
            .map(|c| c.object.clone())
            .collect()
    }

    /// Changes `name` of `collection` as another client would.
    pub fn update(&self, collection: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut state = self.state();
        let key = (collection.to_string(), name.to_string());
        let mut object = state.objects.get(&key).cloned().expect("object exists");
        change(&mut object);
        self.store(&mut state, collection, object);
    }

    /// Deletes `name` of `collection`, as `kubectl delete` would: at once without finalizers,
    /// else by setting its deletion timestamp.
    pub fn delete(&self, collection: &str, name: &str) {
        self.update(collection, name, |object| {
            object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        });
    }

    fn insert(&self, collection: &str, mut object: Value) -> Result<Value, (StatusCode, String)> {
        let mut state = self.state();
        let name = object["metadata"]["name"]
            .as_str()
            .ok_or((
                StatusCode::UNPROCESSABLE_ENTITY,
                "metadata.name is required".to_string(),
            ))?
            .to_string();
        if state
            .objects
            .contains_key(&(collection.to_string(), name.clone()))
        {
            return Err((StatusCode::CONFLICT, format!("{name} already exists")));
        }
        let uid = format!("uid-{}-{}", name, state.revision + 1);
        object["metadata"]["uid"] = json!(uid);
        object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        Ok(self.store(&mut state, collection, object))
    }

    /// Stores a new version of `object`: bumps the resource version, removes an object being
    /// deleted whose finalizers are all gone, and tells the watchers.
    fn store(&self, state: &mut State, collection: &str, mut object: Value) -> Value {
        state.revision += 1;
        object["metadata"]["resourceVersion"] = json!(state.revision.to_string());
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (collection.to_string(), name);
        let deleting = !object["metadata"]["deletionTimestamp"].is_null();
        let finalized = object["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        let kind = if deleting && finalized {
            state.objects.remove(&key);
            "DELETED"
        } else if state.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let change = Change {
            revision: state.revision,
            collection: collection.to_string(),
            kind,
            object: object.clone(),
        };
        state.log.push(change.clone());
        let _ = self.changes.send(change);
        object
    }

    async fn handle(&self, request: Request<kube::client::Body>) -> Response<Body> {
        if self.unavailable.load(Ordering::SeqCst) {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the API server is unavailable",
            );
        }
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let segments: Vec<&str> = parts
            .uri
            .path()
            .trim_start_matches('/')
            .split('/')
            .collect();
        let Some(at) = segments.iter().position(|s| *s == "namespaces") else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "only namespaced paths are served",
            );
        };
        let Some(end) = segments.get(at + 2).map(|_| at + 3) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "no resource in the path");
        };
        let collection = format!("/{}", segments[..end].join("/"));
        let name = segments.get(end).copied();
        let subresource = segments.get(end + 1).copied();
        let query: BTreeMap<&str, &str> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|p| p.split_once('='))
            .collect();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        match (parts.method.as_str(), name) {
            ("GET", None) if query.get("watch") == Some(&"true") => {
                let since = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.watch(collection, since)
            }
            ("GET", None) => {
                let revision = self.state().revision;
                let items = self.list(&collection);
                ok(json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "metadata": {"resourceVersion": revision.to_string()},
                    "items": items,
                }))
            }
            ("GET", Some(name)) => match self.get(&collection, name) {
                Some(object) => ok(object),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{name} not found"),
                ),
            },
            ("POST", None) => match serde_json::from_slice(&body) {
                Ok(object) => match self.insert(&collection, object) {
                    Ok(created) => respond(StatusCode::CREATED, created),
                    Err((code, message)) => status(code, "AlreadyExists", &message),
                },
                Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            },
            ("PATCH", Some(name)) => {
                self.patch(&collection, name, subresource, &content_type, &body)
            }
            ("DELETE", Some(name)) => match self.get(&collection, name) {
                Some(_) => {
                    self.delete(&collection, name);
                    ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
                }
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{name} not found"),
                ),
            },
            (method, _) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{method} is not served"),
            ),
        }
    }

    fn patch(
        &self,
        collection: &str,
        name: &str,
        subresource: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> Response<Body> {
        let patch: Value = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        };
        let mut state = self.state();
        let key = (collection.to_string(), name.to_string());
        let Some(mut object) = state.objects.get(&key).cloned() else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{name} not found"),
            );
        };
        if content_type.starts_with("application/json-patch+json") {
            // The API server tests a missing field as null.
            if object["metadata"]["finalizers"].is_null() {
                object["metadata"]["finalizers"] = Value::Null;
            }
            let operations: json_patch::Patch = match serde_json::from_value(patch) {
                Ok(p) => p,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            };
            if let Err(e) = json_patch::patch(&mut object, &operations) {
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e.to_string());
            }
            if object["metadata"]["finalizers"].is_null()
                && let Some(meta) = object["metadata"].as_object_mut()
            {
                meta.remove("finalizers");
            }
        } else if subresource == Some("status") {
            json_patch::merge(&mut object["status"], &patch["status"]);
        } else {
            json_patch::merge(&mut object, &patch);
        }
        let stored = self.store(&mut state, collection, object);
        ok(stored)
    }

    /// A watch from `since`: the logged changes after it, then the live ones.
    fn watch(&self, collection: String, since: u64) -> Response<Body> {
        let (backlog, live) = {
            let state = self.state();
            let live = self.changes.subscribe();
            let backlog: Vec<Change> = state
                .log
                .iter()
                .filter(|c| c.collection == collection && c.revision > since)
                .cloned()
                .collect();
            (backlog, live)
        };
        let last = backlog.last().map_or(since, |c| c.revision);
        let wanted = collection.clone();
        let unavailable = self.unavailable.clone();
        // A watcher that fell behind, or an outage, ends the stream, as a real server closes
        // it: the client then lists again rather than miss changes.
        let live = tokio_stream::wrappers::BroadcastStream::new(live)
            .take_while(move |c| {
                let open = c.is_ok() && !unavailable.load(Ordering::SeqCst);
                async move { open }
            })
            .filter_map(move |c| {
                let wanted = wanted.clone();
                async move {
                    c.ok()
                        .filter(|c| c.collection == wanted && c.revision > last)
                }
            });
        let lines = futures_util::stream::iter(backlog).chain(live).map(|c| {
            let mut line = serde_json::to_vec(&json!({"type": c.kind, "object": c.object}))
                .unwrap_or_default();
            line.push(b'\n');
            Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(StreamBody::new(lines).boxed_unsync())
            .unwrap_or_default()
    }
}

fn respond(code: StatusCode, value: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed_unsync())
        .unwrap_or_default()
}

fn ok(value: Value) -> Response<Body> {
    respond(StatusCode::OK, value)
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

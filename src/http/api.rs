//! The JSON API under `/api/v1/`: read the running relay (status, queue, suppressions,
//! explain) and steer it (pause, resume, retry, delete, suppress, reload) — every route
//! through the one [`RelayHandle`](crate::relay::RelayHandle), the same one the control
//! socket uses, so the CLI and the API can never disagree.
//!
//! Errors are JSON, `{"error": "..."}`, with a status that says whose fault it was (400
//! bad input, 404 unknown id, 409 not in this mode, 500 the relay's own trouble).
//!
//! It must never return a message body, a password or the token, and never change the
//! spool or the suppression list except through the handle.

use super::guard::json_error;
use super::state::AppState;
use crate::policy::suppression::{normalize, Entry, Source};
use crate::policy::verdict::Phase;
use crate::queue::record::{Message, RcptState};
use crate::queue::{QueueId, Which};
use crate::smtp::codes::{enhanced_meaning, meaning, Lang};
use crate::smtp::Reply;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// The routes, to be nested under `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/status", get(status))
        .route("/queue", get(queue_list))
        .route("/queue/retry", post(queue_retry_all))
        .route("/queue/{id}", get(queue_show).delete(queue_delete))
        .route("/queue/{id}/retry", post(queue_retry))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/suppressions", get(suppressions).post(suppress_add))
        .route("/suppressions/export", get(suppressions_export))
        .route(
            "/suppressions/{address}",
            axum::routing::delete(suppress_remove),
        )
        .route("/explain", get(explain))
        .route("/reload", post(reload))
        .route("/control", post(control))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such API route") })
}

/// An API error: its status and the message for `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.0, self.1)
    }
}

fn err(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

/// A message from the handle: "no message ..." is the caller's fault (404), passthrough
/// mode has no queue (409), anything else is the relay's (500).
fn handle_error(e: String) -> ApiError {
    let status = if e.starts_with("no message") {
        StatusCode::NOT_FOUND
    } else if e == crate::queue::control::NO_QUEUE {
        StatusCode::CONFLICT
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    err(status, e)
}

fn parse_id(id: &str) -> Result<QueueId, ApiError> {
    id.parse::<QueueId>()
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("queue id {id:?}: {e}")))
}

/// Everything the dashboard shows, in one answer.
async fn status(State(s): State<AppState>) -> ApiResult {
    ok(super::view::status(&s).await)
}

fn message_json(m: &Message, full: bool) -> Value {
    let pending = m.rcpts.iter().filter(|r| !r.state.is_final()).count();
    let mut v = json!({
        "id": m.id.to_string(),
        "from": m.envelope.from,
        "received": m.received,
        "size": m.body_len,
        "recipients": m.rcpts.len(),
        "pending": pending,
        "next_attempt": m.rcpts.iter().filter_map(|r| match r.state {
            RcptState::Pending { next_attempt, .. } => Some(next_attempt),
            _ => None,
        }).min(),
    });
    if full {
        v["rcpts"] = json!(m.rcpts);
    } else {
        v["last_reply"] = json!(m.rcpts.iter().find_map(|r| match &r.state {
            RcptState::Pending {
                last_reply: Some(r),
                ..
            } => Some(r.to_string()),
            _ => None,
        }));
    }
    v
}

async fn queue_list(State(s): State<AppState>) -> ApiResult {
    let spool = s
        .handle
        .spool()
        .ok_or_else(|| handle_error(crate::queue::control::NO_QUEUE.into()))?
        .clone();
    let msgs = tokio::task::spawn_blocking(move || spool.list())
        .await
        .map_err(|e| handle_error(format!("queue list task failed: {e}")))?
        .map_err(|e| handle_error(e.to_string()))?;
    let list: Vec<Value> = msgs.iter().map(|m| message_json(m, false)).collect();
    ok(json!({ "messages": list, "paused": s.handle.operator_paused() }))
}

async fn queue_show(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let spool = s
        .handle
        .spool()
        .ok_or_else(|| handle_error(crate::queue::control::NO_QUEUE.into()))?;
    match spool.get(id).map_err(|e| handle_error(e.to_string()))? {
        Some(m) => ok(message_json(&m, true)),
        None => Err(handle_error(format!("no message {id} in the spool"))),
    }
}

async fn queue_retry(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let n = s.handle.retry(Which::One(id)).await.map_err(handle_error)?;
    ok(json!({ "due_now": n }))
}

async fn queue_retry_all(State(s): State<AppState>) -> ApiResult {
    let n = s.handle.retry(Which::All).await.map_err(handle_error)?;
    ok(json!({ "due_now": n }))
}

async fn queue_delete(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    s.handle.delete(id).await.map_err(handle_error)?;
    ok(json!({ "deleted": id.to_string() }))
}

async fn pause(State(s): State<AppState>) -> ApiResult {
    s.handle.pause().map_err(handle_error)?;
    ok(json!({ "paused": true }))
}

async fn resume(State(s): State<AppState>) -> ApiResult {
    s.handle.resume().map_err(handle_error)?;
    ok(json!({ "paused": false }))
}

async fn suppressions(State(s): State<AppState>) -> ApiResult {
    let list = s.handle.policy().suppressions.list();
    ok(json!({ "entries": list }))
}

async fn suppressions_export(State(s): State<AppState>) -> ApiResult {
    let list = s.handle.policy().suppressions.list();
    let mut out = Vec::new();
    crate::store::suppression_csv::export(&list, &mut out)
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"suppressions.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    address: String,
    #[serde(default)]
    reason: Option<String>,
}

fn bad_json(e: JsonRejection) -> ApiError {
    err(
        StatusCode::BAD_REQUEST,
        format!("bad JSON: {}", e.body_text()),
    )
}

async fn suppress_add(
    State(s): State<AppState>,
    body: Result<Json<AddRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body.map_err(bad_json)?;
    let address = normalize(&req.address);
    if address.is_empty() || !address.contains('@') || address.chars().any(char::is_control) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("address {:?}: expected local@domain", req.address),
        ));
    }
    let now = crate::policy::clock::wall_ms() / 1000;
    let entry = Entry {
        address: address.clone(),
        code: 550,
        enhanced: Some("5.1.1".into()),
        text: req.reason.unwrap_or_else(|| "added by the operator".into()),
        first_seen: now,
        last_seen: now,
        count: 1,
        source: Source::Manual,
        suppressed: true,
        soft_times: Vec::new(),
        soft_marks: Vec::new(),
    };
    s.handle
        .policy()
        .suppressions
        .add_all(vec![entry])
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((StatusCode::CREATED, Json(json!({ "added": address }))).into_response())
}

async fn suppress_remove(State(s): State<AppState>, Path(address): Path<String>) -> ApiResult {
    let removed = s
        .handle
        .policy()
        .suppressions
        .remove(&address)
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if !removed {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("{address} is not on the suppression list"),
        ));
    }
    ok(json!({ "removed": normalize(&address) }))
}

#[derive(Deserialize)]
struct ExplainQuery {
    reply: Option<String>,
    phase: Option<String>,
    lang: Option<String>,
}

/// What a reply means and what this relay's rules (its profile and `[[rules]]`) decide.
async fn explain(State(s): State<AppState>, Query(q): Query<ExplainQuery>) -> ApiResult {
    let Some(text) = q.reply.filter(|r| !r.trim().is_empty()) else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "give the reply, e.g. /api/v1/explain?reply=550%205.1.1%20user%20unknown",
        ));
    };
    let lang = match q.lang.as_deref() {
        None => Lang::En,
        Some(tag) => Lang::from_tag(tag).ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                format!("lang {tag:?}: expected en or de"),
            )
        })?,
    };
    let reply = Reply::parse_lenient(&text)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("not an SMTP reply: {e}")))?;
    let phase = match q.phase.as_deref() {
        None => Phase::Rcpt,
        Some(p) => Phase::parse(p).ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                format!("phase {p:?}: one of greeting, ehlo, starttls, auth, mail, rcpt, data, data-end"),
            )
        })?,
    };
    let classifier = s.handle.policy().current_classifier();
    let c = classifier.classify(phase, &reply);
    ok(json!({
        "reply": reply.to_string(),
        "phase": phase.name(),
        "verdict": c.verdict.name(),
        "rule": format!("{} rule {}: {}", c.origin, c.index, c.description),
        "meaning": meaning(reply.code, lang),
        "enhanced_meaning": reply.enhanced.and_then(|e| enhanced_meaning(e, lang)),
    }))
}

async fn reload(State(s): State<AppState>) -> ApiResult {
    let handle = s.handle.clone();
    let outcome = tokio::task::spawn_blocking(move || handle.reload())
        .await
        .map_err(|e| handle_error(format!("reload task failed: {e}")))?;
    match outcome {
        Ok(report) => ok(json!(report)),
        Err(e) => Err(err(StatusCode::UNPROCESSABLE_ENTITY, e)),
    }
}

/// `POST /api/v1/control`: one control-socket request (its command line, then for
/// `suppress add` the entries) answered with the very text the socket answers, so
/// `mailvalve queue` and `mailvalve suppress` print the same through either (they use
/// this where there is no control socket: not on Unix, or `--api URL`). The body is
/// bounded by axum's default limit (2 MiB).
/// A client that found this listener at `http.listen` of its configuration names its
/// spool directory (`X-Mailvalve-Spool`); another instance's spool is refused (409), so
/// `mailvalve queue -c other.toml` never steers the wrong instance.
async fn control(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(theirs) = headers.get("x-mailvalve-spool") {
        let canon =
            |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let same = theirs
            .to_str()
            .map(|t| canon(std::path::Path::new(t)) == canon(s.handle.spool_dir()))
            .unwrap_or(false);
        if !same {
            return json_error(
                StatusCode::CONFLICT,
                "this instance serves another spool directory (queue.dir)",
            );
        }
    }
    let (line, rest) = match body.iter().position(|&b| b == b'\n') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (&body[..], &[][..]),
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return json_error(StatusCode::BAD_REQUEST, "the command line is not UTF-8");
    };
    let instance = s.handle.control_instance();
    match instance.answer(line.trim(), rest).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(e) => json_error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    }
}

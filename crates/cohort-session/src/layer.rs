//! The tower layer and the axum extractor.
//!
//! [`SessionLayer`] reads the session cookie, loads the session (serialising the requests of
//! one session on this member: they run one after the other, so none loses another's change),
//! gives the handler a [`Session`], and at the end of the response replicates what changed
//! (or batches the access time), sets the cookie for a new session, and rewrites the cookie's
//! route suffix when the session now lives on this member (after a failover, as Tomcat's
//! `JvmRouteBinderValve`; the id stays, so nothing is lost).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{COOKIE, HeaderValue, SET_COOKIE};
use http::request::Parts;
use http::{Request, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::manager::{SessionError, SessionManager};
use crate::model::{Changes, Meta, SessionData, SessionId};

/// The default cookie name.
pub const COOKIE_NAME: &str = "COHORTSESSIONID";

/// Which requests skip sessions entirely (static resources: Tomcat's `ReplicationValve`
/// filter).
pub type Filter = Arc<dyn Fn(&Request<Body>) -> bool + Send + Sync>;

struct Shared {
    manager: SessionManager,
    cookie: String,
    route: Option<String>,
    secure: bool,
    fail_on_replication_error: bool,
    filter: Option<Filter>,
}

impl Shared {
    fn cookie_value(&self, id: SessionId) -> String {
        match &self.route {
            Some(r) => format!("{id}.{r}"),
            None => id.to_string(),
        }
    }

    fn set_cookie(&self, res: &mut Response, value: &str, expire: bool) {
        let mut c = format!("{}={value}; Path=/; HttpOnly; SameSite=Lax", self.cookie);
        if self.secure {
            c.push_str("; Secure");
        }
        if expire {
            c.push_str("; Max-Age=0");
        }
        if let Ok(v) = HeaderValue::from_str(&c) {
            res.headers_mut().append(SET_COOKIE, v);
        }
    }
}

/// The session cookie of a request: the id, and the route suffix if any.
fn read_cookie(req: &Request<Body>, name: &str) -> Option<(SessionId, Option<String>)> {
    for header in req.headers().get_all(COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k != name {
                continue;
            }
            let (id, route) = match v.split_once('.') {
                Some((id, r)) => (id, Some(r.to_owned())),
                None => (v, None),
            };
            if let Ok(id) = id.parse() {
                return Some((id, route));
            }
        }
    }
    None
}

/// Sessions for an axum app (or any tower service over `http::Request<axum::body::Body>`).
///
/// ```no_run
/// # async fn demo(channel: cohort_channel::ChannelHandle) -> Result<(), Box<dyn std::error::Error>> {
/// use axum::{Router, routing::get};
/// use cohort_session::{ManagerKind, Session, SessionConfig, SessionLayer, SessionManager};
///
/// async fn count(session: Session) -> String {
///     let n: u64 = session.get("count").unwrap_or_default().unwrap_or(0) + 1;
///     session.insert("count", &n).unwrap();
///     n.to_string()
/// }
///
/// let manager = SessionManager::start(&channel, ManagerKind::Delta, SessionConfig::default()).await?;
/// let app: Router = Router::new()
///     .route("/count", get(count))
///     .layer(SessionLayer::new(manager).route("node-a"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl SessionLayer {
    /// A layer over `manager`, cookie [`COOKIE_NAME`], no route suffix, replication failures
    /// reported but not failing the response.
    pub fn new(manager: SessionManager) -> Self {
        Self {
            shared: Arc::new(Shared {
                manager,
                cookie: COOKIE_NAME.into(),
                route: None,
                secure: false,
                fail_on_replication_error: false,
                filter: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            f(s);
        }
        self
    }

    /// The cookie's name.
    #[must_use]
    pub fn cookie_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.edit(|s| s.cookie = name)
    }

    /// This member's route: the cookie reads `<id>.<route>`, for sticky load balancers, and
    /// is rewritten when a session moves here.
    #[must_use]
    pub fn route(self, route: impl Into<String>) -> Self {
        let route = route.into();
        self.edit(|s| s.route = Some(route))
    }

    /// Marks the cookie `Secure`.
    #[must_use]
    pub fn secure(self, secure: bool) -> Self {
        self.edit(|s| s.secure = secure)
    }

    /// Whether a change that could not be replicated fails the response (503) instead of
    /// only being reported (logged, counted, and the header `x-cohort-replication: failed`).
    #[must_use]
    pub fn fail_on_replication_error(self, fail: bool) -> Self {
        self.edit(|s| s.fail_on_replication_error = fail)
    }

    /// Requests for which `skip` is true get no session and replicate nothing.
    #[must_use]
    pub fn filter(self, skip: impl Fn(&Request<Body>) -> bool + Send + Sync + 'static) -> Self {
        let f: Filter = Arc::new(skip);
        self.edit(|s| s.filter = Some(f))
    }
}

impl<S> tower_layer::Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around the app.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower_service::Service<Request<Body>> for SessionService<S>
where
    S: tower_service::Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if shared.filter.as_ref().is_some_and(|skip| skip(&req)) {
                return inner.call(req).await;
            }
            let cookie = read_cookie(&req, &shared.cookie);
            let _serial = match &cookie {
                Some((id, _)) => Some(shared.manager.lock(*id).await),
                None => None,
            };
            let loaded = match &cookie {
                Some((id, _)) => match shared.manager.load(*id).await {
                    Ok(s) => s,
                    Err(e) => {
                        // Never a fresh session in its place: the client's session exists
                        // somewhere, and a new one would lose it. It can retry.
                        tracing::warn!(session = %id, error = %e, "session not loaded");
                        return Ok(unavailable(&e));
                    }
                },
                None => None,
            };
            let session = Session::new(loaded, shared.manager.config().max_inactive);
            req.extensions_mut().insert(session.clone());
            let mut res = inner.call(req).await?;
            finish(&shared, &session, cookie.and_then(|c| c.1), &mut res).await;
            Ok(res)
        })
    }
}

fn unavailable(e: &SessionError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("session not replicated: {e}"),
    )
        .into_response()
}

/// The end of a request: replicate, touch, or invalidate, and set the cookie.
async fn finish(shared: &Shared, session: &Session, route: Option<String>, res: &mut Response) {
    let st = std::mem::take(&mut *session.state());
    let manager = &shared.manager;
    let now = manager.now_ms();
    if st.invalidated {
        if let Some((id, _)) = st.loaded {
            if let Err(e) = manager.invalidate(id).await {
                tracing::warn!(session = %id, error = %e, "session not invalidated everywhere");
            }
            shared.set_cookie(res, "", true);
        }
        return;
    }
    let (id, meta, created) = match st.loaded {
        Some((id, meta)) => (
            id,
            Meta {
                last_access_ms: now,
                max_inactive_ms: st.max_inactive_ms,
                ..meta
            },
            false,
        ),
        None if st.changes.set.is_empty() => return, // a session is made by its first attribute
        None => (
            st.new_id.unwrap_or_else(SessionId::random),
            Meta {
                created_ms: now,
                last_access_ms: now,
                max_inactive_ms: st.max_inactive_ms,
            },
            true,
        ),
    };
    if st.changes.is_empty() && !created && !st.times_changed {
        manager.touch(id, meta);
    } else {
        let data = SessionData {
            id,
            meta,
            attributes: st.attributes,
        };
        if let Err(e) = manager.commit(&data, &st.changes, created).await {
            tracing::warn!(session = %id, error = %e, "session change not replicated");
            if shared.fail_on_replication_error {
                *res = unavailable(&e);
                return;
            }
            res.headers_mut()
                .insert("x-cohort-replication", HeaderValue::from_static("failed"));
        }
    }
    if created || route != shared.route {
        shared.set_cookie(res, &shared.cookie_value(id), false);
    }
}

#[derive(Default)]
struct State {
    loaded: Option<(SessionId, Meta)>,
    /// The id of a session this request creates (drawn at its first attribute).
    new_id: Option<SessionId>,
    attributes: BTreeMap<String, Bytes>,
    changes: Changes,
    invalidated: bool,
    max_inactive_ms: u64,
    times_changed: bool,
}

/// The session of the current request (an axum extractor; [`SessionLayer`] must wrap the
/// route). A new session exists once an attribute is set; changes are replicated when the
/// response is produced.
#[derive(Clone)]
pub struct Session {
    state: Arc<Mutex<State>>,
}

impl Session {
    fn new(loaded: Option<SessionData>, max_inactive: std::time::Duration) -> Self {
        let max_inactive_ms = u64::try_from(max_inactive.as_millis()).unwrap_or(u64::MAX);
        let state = match loaded {
            Some(d) => State {
                max_inactive_ms: d.meta.max_inactive_ms,
                loaded: Some((d.id, d.meta)),
                attributes: d.attributes,
                ..State::default()
            },
            None => State {
                max_inactive_ms,
                ..State::default()
            },
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id: the loaded session's, or for a new one the id it will have once created
    /// (drawn when its first attribute is set; `None` before).
    pub fn id(&self) -> Option<SessionId> {
        let st = self.state();
        st.loaded.map(|(id, _)| id).or(st.new_id)
    }

    /// True for a session this request is creating.
    pub fn is_new(&self) -> bool {
        self.state().loaded.is_none()
    }

    /// The attribute `name`, deserialised.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, SessionError> {
        let st = self.state();
        match st.attributes.get(name) {
            Some(v) => serde_json::from_slice(v)
                .map(Some)
                .map_err(|e| SessionError::Attribute {
                    name: name.into(),
                    reason: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// Sets the attribute `name` (replicated at the end of the request; setting the value it
    /// already has changes nothing).
    pub fn insert<T: Serialize>(&self, name: &str, value: &T) -> Result<(), SessionError> {
        let v = serde_json::to_vec(value).map_err(|e| SessionError::Attribute {
            name: name.into(),
            reason: e.to_string(),
        })?;
        let v = Bytes::from(v);
        let mut st = self.state();
        if st.loaded.is_none() && st.new_id.is_none() {
            st.new_id = Some(SessionId::random());
        }
        if st.attributes.get(name) == Some(&v) {
            return Ok(());
        }
        st.attributes.insert(name.into(), v.clone());
        st.changes.removed.remove(name);
        st.changes.set.insert(name.into(), v);
        Ok(())
    }

    /// Removes the attribute `name`; true when it was there.
    pub fn remove(&self, name: &str) -> bool {
        let mut st = self.state();
        let was = st.attributes.remove(name).is_some();
        st.changes.set.remove(name);
        if was && st.loaded.is_some() {
            st.changes.removed.insert(name.into());
        }
        was
    }

    /// The names of the attributes.
    pub fn keys(&self) -> Vec<String> {
        self.state().attributes.keys().cloned().collect()
    }

    /// Sets how long this session may idle.
    pub fn set_max_inactive(&self, d: std::time::Duration) {
        let mut st = self.state();
        st.max_inactive_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        // Travels with the session's times, written with the next commit.
        st.times_changed = true;
    }

    /// Ends the session everywhere at the end of the request (and clears the cookie).
    pub fn invalidate(&self) {
        self.state().invalidated = true;
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "no SessionLayer around this route",
        ))
    }
}

//! A `tower_sessions::SessionStore` backed by a [`SessionManager`] (feature `tower-sessions`,
//! tower-sessions-core 0.15), for apps that already use tower-sessions: their sessions then
//! survive a node failure. Each save is diffed against the record last saved or loaded here,
//! so only the keys that changed travel (with the delta manager).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

use crate::manager::SessionManager;
use crate::model::{Changes, Meta, SessionData, SessionId};

/// Records remembered for diffing; past it the memory is cleared (a save then diffs against
/// the manager's copy, loaded again).
pub const MAX_REMEMBERED: usize = 100_000;

/// A tower-sessions store over a Cohort session manager.
///
/// ```no_run
/// # async fn demo(manager: cohort_session::SessionManager) {
/// use cohort_session::CohortStore;
/// let store = CohortStore::new(manager);
/// // tower_sessions::SessionManagerLayer::new(store) ...
/// # let _ = store;
/// # }
/// ```
pub struct CohortStore {
    manager: SessionManager,
    last: Mutex<HashMap<i128, SessionData>>,
}

impl std::fmt::Debug for CohortStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CohortStore")
            .field("manager", &self.manager.kind())
            .finish_non_exhaustive()
    }
}

impl CohortStore {
    /// A store over `manager`.
    pub fn new(manager: SessionManager) -> Self {
        Self {
            manager,
            last: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, id: i128, data: SessionData) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.len() >= MAX_REMEMBERED {
            last.clear();
        }
        last.insert(id, data);
    }

    fn forget(&self, id: i128) -> Option<SessionData> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }
}

fn session_id(id: &Id) -> SessionId {
    SessionId::from_bytes(id.0.to_be_bytes())
}

fn backend(e: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

fn to_record(id: Id, data: &SessionData) -> session_store::Result<Record> {
    let mut values = HashMap::with_capacity(data.attributes.len());
    for (k, v) in &data.attributes {
        let value: Value =
            serde_json::from_slice(v).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        values.insert(k.clone(), value);
    }
    let expiry = i128::from(data.meta.expires_at_ms()) * 1_000_000;
    Ok(Record {
        id,
        data: values,
        expiry_date: OffsetDateTime::from_unix_timestamp_nanos(expiry)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?,
    })
}

#[async_trait]
impl SessionStore for CohortStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // A fresh id that no member knows.
        while self
            .manager
            .load(session_id(&record.id))
            .await
            .map_err(backend)?
            .is_some()
        {
            record.id = Id::default();
        }
        self.save(record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let id = session_id(&record.id);
        let now = self.manager.now_ms();
        let previous = match self.forget(record.id.0) {
            Some(p) => Some(p),
            None => self.manager.load(id).await.map_err(backend)?,
        };
        let mut changes = Changes::default();
        let mut attributes = std::collections::BTreeMap::new();
        for (k, v) in &record.data {
            let bytes = Bytes::from(
                serde_json::to_vec(v).map_err(|e| session_store::Error::Encode(e.to_string()))?,
            );
            if previous
                .as_ref()
                .is_none_or(|p| p.attributes.get(k) != Some(&bytes))
            {
                changes.set.insert(k.clone(), bytes.clone());
            }
            attributes.insert(k.clone(), bytes);
        }
        if let Some(p) = &previous {
            for k in p.attributes.keys() {
                if !record.data.contains_key(k) {
                    changes.removed.insert(k.clone());
                }
            }
        }
        let expiry_ms =
            u64::try_from(record.expiry_date.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let meta = Meta {
            created_ms: previous.as_ref().map_or(now, |p| p.meta.created_ms),
            last_access_ms: now,
            max_inactive_ms: expiry_ms.saturating_sub(now),
        };
        let data = SessionData {
            id,
            meta,
            attributes,
        };
        let result = self
            .manager
            .commit(&data, &changes, previous.is_none())
            .await;
        self.remember(record.id.0, data);
        result.map_err(backend)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self.manager.load(session_id(id)).await.map_err(backend)? {
            Some(data) => {
                let record = to_record(*id, &data)?;
                self.remember(id.0, data);
                Ok(Some(record))
            }
            None => Ok(None),
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.forget(id.0);
        self.manager
            .invalidate(session_id(id))
            .await
            .map_err(backend)
    }
}

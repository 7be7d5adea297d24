use std::time::Duration;

use cohort_maps::Change;
use cohort_session::{CohortStore, ManagerKind, SessionConfig, SessionEvent, SessionManager};
use serde_json::json;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::SessionStore;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_sessions_store_replicates_only_changed_keys_and_reads_anywhere() {
    let ch = cluster(2).await;
    let a = SessionManager::start(&ch[0], ManagerKind::Delta, SessionConfig::default())
        .await
        .unwrap();
    let b = SessionManager::start(&ch[1], ManagerKind::Delta, SessionConfig::default())
        .await
        .unwrap();
    let (sa, sb) = (CohortStore::new(a), CohortStore::new(b.clone()));
    let mut record = Record {
        id: Id::default(),
        data: [
            ("user".to_string(), json!("ada")),
            ("cart".to_string(), json!([1, 2])),
            ("theme".to_string(), json!("dark")),
        ]
        .into_iter()
        .collect(),
        expiry_date: OffsetDateTime::now_utc() + time::Duration::minutes(30),
    };
    // Subscribed before the create: its events may reach b's subscribers after the load
    // below, and must not be taken for the save's.
    let mut events = b.events();
    sa.create(&mut record).await.unwrap();
    let loaded = sb
        .load(&record.id)
        .await
        .unwrap()
        .expect("on the other member");
    assert_eq!(loaded.data, record.data);
    assert!((loaded.expiry_date - record.expiry_date).abs() < time::Duration::seconds(2));
    // One key changes, one goes: only those travel.
    record.data.insert("cart".into(), json!([1, 2, 3]));
    record.data.remove("theme");
    sa.save(&record).await.unwrap();
    // Every attribute event after the create's three additions, until both changes came and
    // then 300 ms passed without another.
    let mut seen = Vec::new();
    let mut created = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let both = |seen: &[(String, Change)]| {
        seen.iter()
            .any(|(n, c)| n == "cart" && *c == Change::Updated)
            && seen
                .iter()
                .any(|(n, c)| n == "theme" && *c == Change::Removed)
    };
    loop {
        let wait = if both(&seen) {
            Duration::from_millis(300)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Ok(SessionEvent::Attribute { name, change, .. })) => {
                // The create's additions, once per key; anything else is the save's.
                let from_create = change == Change::Added && created.insert(name.clone());
                if !from_create {
                    seen.push((name, change));
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("events: {e}"),
            Err(_) if both(&seen) => break,
            Err(_) => panic!("not both changes within 20 s: {seen:?}"),
        }
    }
    seen.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        seen,
        vec![
            ("cart".to_string(), Change::Updated),
            ("theme".to_string(), Change::Removed)
        ]
    );
    assert_eq!(
        sb.load(&record.id).await.unwrap().unwrap().data,
        record.data
    );
    sb.delete(&record.id).await.unwrap();
    assert!(sa.load(&record.id).await.unwrap().is_none());
    for c in &ch {
        c.stop().await;
    }
}

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
    sa.create(&mut record).await.unwrap();
    let loaded = sb
        .load(&record.id)
        .await
        .unwrap()
        .expect("on the other member");
    assert_eq!(loaded.data, record.data);
    assert!((loaded.expiry_date - record.expiry_date).abs() < time::Duration::seconds(2));
    // One key changes, one goes: only those travel.
    let mut events = b.events();
    record.data.insert("cart".into(), json!([1, 2, 3]));
    record.data.remove("theme");
    sa.save(&record).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        if let SessionEvent::Attribute { name, change, .. } = e {
            seen.push((name, change));
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

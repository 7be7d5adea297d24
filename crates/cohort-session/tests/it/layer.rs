use std::time::Duration;

use cohort_session::{DestroyReason, ManagerKind, SessionConfig, SessionEvent};

use crate::support::*;

async fn failover(kind: ManagerKind) {
    let ch = cluster(3).await;
    let apps = apps(&ch, kind, &SessionConfig::default()).await;
    // A new client gets a cookie routed to the member that made the session.
    let first = get_path(&apps[0].router, "/count", None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["count"], 1);
    let cookie = first.set_cookie.expect("a cookie for a new session");
    assert!(cookie.ends_with(".n0"), "{cookie}");
    let id = first.body["session"]
        .as_str()
        .expect("a new session's id in its first answer");
    assert!(cookie.starts_with(id), "{cookie} carries {id}");
    for n in 2..=5 {
        let a = get_path(&apps[0].router, "/count", Some(&cookie)).await;
        assert_eq!(a.body["count"], n);
        assert!(a.set_cookie.is_none(), "the cookie is set once");
    }
    // Another member serves it (SYNC_ACK: the change was there before the answer), and
    // rewrites the route.
    let b = get_path(&apps[1].router, "/count", Some(&cookie)).await;
    assert_eq!(b.body["count"], 6, "{:?}", b.body);
    let moved = b.set_cookie.expect("the route is rewritten");
    assert_eq!(moved.split('.').next(), cookie.split('.').next(), "same id");
    assert!(moved.ends_with(".n1"));
    // The member that made it leaves; the others keep counting.
    apps[0].manager.stop().await;
    ch[0].stop().await;
    for (i, n) in [(2usize, 7), (1, 8), (2, 9)] {
        let a = get_path(&apps[i].router, "/count", Some(&moved)).await;
        assert_eq!(a.body["count"], n, "{kind:?} on n{i}: {:?}", a.body);
    }
    for c in &ch[1..] {
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sessions_are_served_anywhere_and_survive_their_member() {
    failover(ManagerKind::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_sessions_are_served_anywhere_and_survive_their_member() {
    failover(ManagerKind::Backup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_one_session_on_one_member_lose_no_increment() {
    let ch = cluster(2).await;
    let apps = apps(&ch, ManagerKind::Delta, &SessionConfig::default()).await;
    let cookie = get_path(&apps[0].router, "/count", None)
        .await
        .set_cookie
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let r = apps[0].router.clone();
        let c = cookie.clone();
        tasks.push(tokio::spawn(async move {
            get_path(&r, "/count", Some(&c)).await.body["count"].as_u64()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (2..=21).collect::<Vec<u64>>(),
        "serialised: every request saw the one before"
    );
    assert_eq!(
        get_path(&apps[1].router, "/count", Some(&cookie))
            .await
            .body["count"],
        22
    );
    for c in &ch {
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire_everywhere_and_used_ones_do_not() {
    let ch = cluster(2).await;
    let cfg = SessionConfig {
        max_inactive: Duration::from_millis(1500),
        expiry_grace: Duration::from_millis(300),
        access_flush_interval: Duration::from_millis(100),
        expiry_check_interval: Duration::from_millis(200),
        ..SessionConfig::default()
    };
    let apps = apps(&ch, ManagerKind::Delta, &cfg).await;
    let mut events = apps[1].manager.events();
    let idle = get_path(&apps[0].router, "/count", None)
        .await
        .set_cookie
        .unwrap();
    let used = get_path(&apps[0].router, "/count", None)
        .await
        .set_cookie
        .unwrap();
    // `used` is read (not changed) on the other member: only its access time travels.
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            get_path(&apps[1].router, "/peek", Some(&used)).await.body["new"],
            false
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for app in &apps {
        assert_eq!(
            get_path(&app.router, "/peek", Some(&idle)).await.body["new"],
            true,
            "idle session gone"
        );
        assert_eq!(
            get_path(&app.router, "/peek", Some(&used)).await.body["count"],
            1,
            "used session kept"
        );
    }
    let idle_id: cohort_session::SessionId = idle.split('.').next().unwrap().parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("a destroyed event")
            .unwrap();
        if let SessionEvent::Destroyed { id, reason } = e {
            if id == idle_id {
                assert!(matches!(
                    reason,
                    DestroyReason::Expired | DestroyReason::Replicated
                ));
                break;
            }
        }
    }
    for c in &ch {
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_session_replicates_with_both_managers() {
    for kind in [ManagerKind::Delta, ManagerKind::Backup] {
        let ch = cluster(2).await;
        let apps = apps(&ch, kind, &SessionConfig::default()).await;
        let a = get_path(&apps[0].router, "/big", None).await;
        assert_eq!(a.status, 200);
        let cookie = a.set_cookie.unwrap();
        let b = get_path(&apps[1].router, "/big", Some(&cookie)).await;
        assert_eq!(b.body["count"], 2, "{kind:?}: {:?}", b.body);
        for c in &ch {
            c.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_invalidates_everywhere_and_filtered_requests_get_no_session() {
    let ch = cluster(2).await;
    let apps = apps(&ch, ManagerKind::Backup, &SessionConfig::default()).await;
    let cookie = get_path(&apps[0].router, "/count", None)
        .await
        .set_cookie
        .unwrap();
    let out = get_path(&apps[1].router, "/logout", Some(&cookie)).await;
    assert_eq!(out.set_cookie.as_deref(), Some(""), "the cookie is cleared");
    for app in &apps {
        assert_eq!(
            get_path(&app.router, "/peek", Some(&cookie)).await.body["new"],
            true
        );
    }
    let js = get_path(&apps[0].router, "/static/app.js", Some(&cookie)).await;
    assert_eq!(js.status, 200);
    assert!(js.set_cookie.is_none());
    for c in &ch {
        c.stop().await;
    }
}

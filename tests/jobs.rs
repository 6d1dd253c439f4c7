//! The job store conformance suite, run against PostgreSQL (a fresh schema per test, in the
//! machine's `test` database) and SQLite (a fresh file per test). The clock is passed in: no test
//! sleeps.

use std::collections::HashSet;
use std::sync::Arc;

use airlock::jobs::{
    Completion, FailureCode, JobError, JobState, JobStore, NewJob, Retry, Submitted,
};

pub fn pg_url() -> String {
    std::env::var("AIRLOCK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub async fn postgres() -> (Arc<dyn JobStore>, Option<tempfile::TempDir>) {
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = airlock::jobs::postgres::connect(&pg_url(), Some(schema))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is required for this test: {e}", pg_url()));
    store.migrate().await.unwrap();
    (Arc::new(store), None)
}

pub async fn sqlite() -> (Arc<dyn JobStore>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    let store = airlock::jobs::sqlite::open(&dir.path().join("jobs.db"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (Arc::new(store), Some(dir))
}

fn job(tenant: &str, key: Option<&str>) -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4(),
        tenant: tenant.into(),
        idempotency_key: key.map(String::from),
        plan: "default".into(),
        input_key: airlock::storage::ObjectKey::new(airlock::storage::Kind::Input).to_string(),
        input_bytes: 10,
        file_name: "leads.csv".into(),
        max_attempts: 5,
        schema: None,
    }
}

fn done(state: JobState) -> Completion {
    Completion {
        state,
        result_code: None,
        output_key: Some("out/x.csv".into()),
        rejects_key: None,
        report_key: None,
        summary: airlock::jobs::JobSummary {
            status: airlock_report::Status::Accepted,
            rejection: None,
            input: airlock::jobs::InputSummary {
                bytes: 10,
                sha256: "ab".into(),
                detected_type: "text/csv".into(),
            },
            rows: Default::default(),
            issue_counts: Default::default(),
            output: airlock_report::OutputInfo {
                bytes: 1,
                sha256: "cd".into(),
            },
        },
    }
}

const LEASE: i64 = 30_000;

async fn lifecycle_with_audit(store: Arc<dyn JobStore>) {
    let id = store.submit(&job("acme", None), 1_000).await.unwrap().id();
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        JobState::Queued
    );
    let c = store.claim("sup-1", LEASE, 2_000).await.unwrap().unwrap();
    assert_eq!((c.id, c.attempt, c.fence), (id, 1, 1));
    assert!(
        store.claim("sup-2", LEASE, 2_001).await.unwrap().is_none(),
        "nothing else to claim"
    );
    assert!(store.heartbeat(id, c.fence, LEASE, 3_000).await.unwrap());
    store
        .complete(id, c.fence, &done(JobState::Succeeded), 4_000)
        .await
        .unwrap();
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Succeeded);
    assert_eq!(rec.finished_at, Some(4_000));
    assert_eq!(rec.output_key.as_deref(), Some("out/x.csv"));
    let audit: Vec<String> = store
        .audit(id)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, to, _)| to)
        .collect();
    assert_eq!(audit, ["queued", "running", "succeeded"]);
}

async fn fencing_refuses_a_stale_supervisor(store: Arc<dyn JobStore>) {
    let id = store.submit(&job("acme", None), 0).await.unwrap().id();
    let first = store.claim("sup-1", LEASE, 1_000).await.unwrap().unwrap();
    // sup-1 stalls; its lease expires and the reaper requeues the job (with backoff).
    assert_eq!(
        store.reap(1_000 + LEASE - 1).await.unwrap(),
        0,
        "not expired yet"
    );
    assert_eq!(store.reap(1_000 + LEASE + 1).await.unwrap(), 1);
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        JobState::Queued
    );
    let later = 1_000 + LEASE + 400_000;
    let second = store.claim("sup-2", LEASE, later).await.unwrap().unwrap();
    assert_eq!(second.id, id);
    assert!(second.fence > first.fence);
    // The stale supervisor can neither heartbeat nor record its result.
    assert!(!store
        .heartbeat(id, first.fence, LEASE, later + 1)
        .await
        .unwrap());
    let err = store
        .complete(id, first.fence, &done(JobState::Succeeded), later + 2)
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::StaleFence(..)), "{err}");
    assert!(matches!(
        store
            .fail(
                id,
                first.fence,
                FailureCode::InputMissing,
                "x",
                Retry::Never,
                later + 2
            )
            .await,
        Err(JobError::StaleFence(..))
    ));
    store
        .complete(id, second.fence, &done(JobState::Succeeded), later + 3)
        .await
        .unwrap();
    assert_eq!(store.get(id).await.unwrap().unwrap().attempts, 2);
}

async fn reaper_fails_a_job_once_attempts_are_spent(store: Arc<dyn JobStore>) {
    let id = store.submit(&job("acme", None), 0).await.unwrap().id();
    let mut now = 0;
    // max_attempts is 5, as in production.
    for attempt in 1..=5 {
        now += 1_000_000;
        let c = store.claim("sup", LEASE, now).await.unwrap().unwrap();
        assert_eq!(c.attempt, attempt);
        now += LEASE + 1;
        store.reap(now).await.unwrap();
        if attempt < 5 {
            assert_eq!(
                store.get(id).await.unwrap().unwrap().state,
                JobState::Queued
            );
        }
    }
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(rec.result_code.as_deref(), Some("lease_expired"));
}

async fn retries_wait_for_their_backoff(store: Arc<dyn JobStore>) {
    let id = store.submit(&job("acme", None), 0).await.unwrap().id();
    let c = store.claim("sup", LEASE, 1_000).await.unwrap().unwrap();
    let state = store
        .fail(
            id,
            c.fence,
            FailureCode::Internal,
            "task panicked",
            Retry::Attempt { delay_ms: 8_000 },
            2_000,
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Queued);
    assert!(
        store.claim("sup", LEASE, 9_999).await.unwrap().is_none(),
        "not before its backoff"
    );
    let c = store.claim("sup", LEASE, 10_000).await.unwrap().unwrap();
    assert_eq!(
        c.attempt, 2,
        "a retry the job may have caused spends an attempt"
    );
    // Permanent: no retry even with attempts left.
    assert_eq!(
        store
            .fail(
                id,
                c.fence,
                FailureCode::InputMissing,
                "HEAD found nothing at in/…",
                Retry::Never,
                11_000
            )
            .await
            .unwrap(),
        JobState::Failed
    );
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.result_code.as_deref(), Some("input_missing"));
    // The free text is in the audit detail, never in the result code.
    let (_, to, detail) = store.audit(id).await.unwrap().pop().unwrap();
    assert_eq!(to, "failed");
    assert!(detail.unwrap().contains("HEAD found nothing"));
}

/// Infrastructure failures give the attempt back, back off as long as the outage has lasted
/// (5 s to 5 min), and fail the job only once the outage budget is spent. A job-caused retry
/// in between restarts the outage clock.
async fn outages_spend_no_attempts_within_their_budget(store: Arc<dyn JobStore>) {
    const BUDGET: i64 = 3_600_000;
    let id = store.submit(&job("acme", None), 0).await.unwrap().id();
    let outage = Retry::Outage { budget_ms: BUDGET };
    let mut now = 1_000;
    let mut expected_delays = Vec::new();
    let mut delays = Vec::new();
    // Twelve failures in a row (about 30 minutes of outage): far more than max_attempts (5).
    for _ in 0..12 {
        let c = store.claim("sup", LEASE, now).await.unwrap().unwrap();
        assert_eq!(c.attempt, 1, "an outage spends no attempt");
        let state = store
            .fail(
                id,
                c.fence,
                FailureCode::StorageUnavailable,
                "GET: timed out",
                outage,
                now,
            )
            .await
            .unwrap();
        assert_eq!(state, JobState::Queued);
        expected_delays.push((now - 1_000).clamp(5_000, 300_000));
        let mut next = now;
        while store.claim("probe", LEASE, next).await.unwrap().is_none() {
            next += 1_000;
        }
        // The probe took it: give it back without counting.
        let probe = store.get(id).await.unwrap().unwrap();
        store.release(id, probe.fence, next).await.unwrap();
        delays.push(next - now);
        now = next;
    }
    for (got, want) in delays.iter().zip(&expected_delays) {
        assert!(
            *got >= *want && *got < *want + 1_000,
            "{delays:?} vs {expected_delays:?}"
        );
    }
    assert_eq!(store.get(id).await.unwrap().unwrap().attempts, 0);
    // Past the budget, counted from the first failure at 1 s: failed for good.
    let c = store
        .claim("sup", LEASE, BUDGET + 2_000)
        .await
        .unwrap()
        .unwrap();
    let state = store
        .fail(
            id,
            c.fence,
            FailureCode::StorageUnavailable,
            "GET: timed out",
            outage,
            BUDGET + 2_000,
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Failed);
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.result_code.as_deref(), Some("outage_budget_spent"));

    // A job-caused retry restarts the outage clock.
    let id = store.submit(&job("acme", None), 0).await.unwrap().id();
    let t0 = 10 * BUDGET;
    let c = store.claim("sup", LEASE, t0).await.unwrap().unwrap();
    store
        .fail(id, c.fence, FailureCode::WorkDir, "disk full", outage, t0)
        .await
        .unwrap();
    let c = store
        .claim("sup", LEASE, t0 + 5_000)
        .await
        .unwrap()
        .unwrap();
    store
        .fail(
            id,
            c.fence,
            FailureCode::Internal,
            "bug",
            Retry::Attempt { delay_ms: 0 },
            t0 + BUDGET,
        )
        .await
        .unwrap();
    let c = store
        .claim("sup", LEASE, t0 + BUDGET + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.attempt, 2);
    let state = store
        .fail(
            id,
            c.fence,
            FailureCode::WorkDir,
            "disk full",
            outage,
            t0 + BUDGET + 2,
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Queued, "a new outage, not the old one");
}

/// A retried job goes to the back of its tenant's queue instead of keeping its old position.
async fn a_retried_job_takes_a_new_position(store: Arc<dyn JobStore>) {
    let a1 = store.submit(&job("acme", None), 1).await.unwrap().id();
    let a2 = store.submit(&job("acme", None), 2).await.unwrap().id();
    let a3 = store.submit(&job("acme", None), 3).await.unwrap().id();
    let c = store.claim("sup", LEASE, 10).await.unwrap().unwrap();
    assert_eq!(c.id, a1);
    store
        .fail(
            a1,
            c.fence,
            FailureCode::Internal,
            "bug",
            Retry::Attempt { delay_ms: 0 },
            11,
        )
        .await
        .unwrap();
    let mut order = Vec::new();
    while let Some(c) = store.claim("sup", LEASE, 20).await.unwrap() {
        order.push(c.id);
    }
    assert_eq!(order, [a2, a3, a1]);
    for id in order {
        let fence = store.get(id).await.unwrap().unwrap().fence;
        store
            .complete(id, fence, &done(JobState::Succeeded), 30)
            .await
            .unwrap();
    }
    // The same for a job the reaper requeues.
    let b1 = store.submit(&job("beta", None), 30).await.unwrap().id();
    let b2 = store.submit(&job("beta", None), 31).await.unwrap().id();
    assert_eq!(store.claim("sup", LEASE, 40).await.unwrap().unwrap().id, b1);
    assert_eq!(store.reap(40 + LEASE + 1).await.unwrap(), 1);
    let later = 40 + LEASE + 1_000_000;
    assert_eq!(
        store.claim("sup", LEASE, later).await.unwrap().unwrap().id,
        b2
    );
    assert_eq!(
        store.claim("sup", LEASE, later).await.unwrap().unwrap().id,
        b1
    );
}

/// An erasure cancels a tenant's queued and running jobs in one go: the running job's holder
/// can neither heartbeat nor record, and no reaper brings it back.
async fn erasure_cancels_queued_and_running_jobs(store: Arc<dyn JobStore>) {
    let running = store.submit(&job("acme", None), 1).await.unwrap().id();
    let queued = store.submit(&job("acme", None), 2).await.unwrap().id();
    let other = store.submit(&job("beta", None), 3).await.unwrap().id();
    let c = store.claim("sup", LEASE, 10).await.unwrap().unwrap();
    assert_eq!(c.id, running);
    assert_eq!(store.active_of("acme", 15).await.unwrap(), 2);
    let mut cancelled = store.cancel_tenant("acme", 20).await.unwrap();
    cancelled.sort_by_key(|(_, s)| s.as_str());
    assert_eq!(
        cancelled,
        [(queued, JobState::Queued), (running, JobState::Running)]
    );
    // The cancelled running job counts until its old lease runs out: its attempt may upload.
    assert_eq!(store.active_of("acme", 21).await.unwrap(), 1);
    assert_eq!(store.active_of("acme", 10 + LEASE + 1).await.unwrap(), 0);
    let rec = store.get(running).await.unwrap().unwrap();
    assert_eq!(
        rec.attempt_keys.len(),
        3,
        "the attempt's keys are on the row"
    );
    assert!(rec
        .attempt_keys
        .iter()
        .any(|k| *k == c.keys.output.to_string()));
    assert!(!store.heartbeat(running, c.fence, LEASE, 21).await.unwrap());
    assert!(matches!(
        store
            .complete(running, c.fence, &done(JobState::Succeeded), 22)
            .await,
        Err(JobError::StaleFence(..))
    ));
    assert_eq!(store.reap(10 + LEASE + 1).await.unwrap(), 0);
    for id in [running, queued] {
        let rec = store.get(id).await.unwrap().unwrap();
        assert_eq!(rec.state, JobState::Cancelled);
        assert_eq!(rec.finished_at, Some(20));
    }
    assert_eq!(
        store.get(other).await.unwrap().unwrap().state,
        JobState::Queued
    );
}

async fn idempotency_keys_are_per_tenant(store: Arc<dyn JobStore>) {
    let a = store
        .submit(&job("acme", Some("upload-7")), 0)
        .await
        .unwrap();
    let b = store
        .submit(&job("acme", Some("upload-7")), 1)
        .await
        .unwrap();
    assert!(matches!(a, Submitted::Created(_)));
    assert_eq!(b, Submitted::Existing(a.id()));
    let c = store
        .submit(&job("globex", Some("upload-7")), 2)
        .await
        .unwrap();
    assert!(matches!(c, Submitted::Created(id) if id != a.id()));
    assert_eq!(
        store.find_idempotent("acme", "upload-7").await.unwrap(),
        Some(a.id())
    );
    assert_eq!(store.counts().await.unwrap()["queued"], 2);
}

async fn cancel_and_release(store: Arc<dyn JobStore>) {
    let a = store.submit(&job("acme", None), 0).await.unwrap().id();
    let b = store.submit(&job("acme", None), 1).await.unwrap().id();
    assert_eq!(store.cancel(a, 5).await.unwrap(), JobState::Cancelled);
    let c = store.claim("sup", LEASE, 10).await.unwrap().unwrap();
    assert_eq!(c.id, b, "a cancelled job is never claimed");
    assert!(matches!(
        store.cancel(b, 11).await,
        Err(JobError::WrongState { .. })
    ));
    store.release(b, c.fence, 12).await.unwrap();
    let again = store.claim("sup", LEASE, 13).await.unwrap().unwrap();
    assert_eq!(
        (again.id, again.attempt),
        (b, 1),
        "a released attempt is not counted"
    );
}

async fn one_tenants_backlog_does_not_starve_another(store: Arc<dyn JobStore>) {
    for i in 0..500 {
        store.submit(&job("tenant-a", None), i).await.unwrap();
    }
    let mut b_ids = HashSet::new();
    for i in 0..5 {
        b_ids.insert(
            store
                .submit(&job("tenant-b", None), 1_000 + i)
                .await
                .unwrap()
                .id(),
        );
    }
    let mut a_claimed = 0;
    let mut b_claimed = 0;
    let mut now = 10_000;
    while b_claimed < 5 {
        now += 1;
        let c = store.claim("sup", LEASE, now).await.unwrap().unwrap();
        if b_ids.contains(&c.id) {
            b_claimed += 1;
        } else {
            a_claimed += 1;
        }
        store
            .complete(c.id, c.fence, &done(JobState::Succeeded), now)
            .await
            .unwrap();
    }
    // Start-time fair queuing puts B's first job one past the queue's front and the rest one
    // apart, so claims alternate: at most one more of A's than B's five.
    assert!(
        a_claimed <= 6,
        "B's 5 jobs all started within A's first 6 (A got {a_claimed})"
    );
}

async fn concurrent_claims_take_each_job_once(store: Arc<dyn JobStore>) {
    for i in 0..120 {
        store
            .submit(&job(&format!("t{}", i % 3), None), i)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(c) = store
                .claim(&format!("sup-{w}"), LEASE, 1_000)
                .await
                .unwrap()
            {
                got.push(c.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 120);
    assert_eq!(unique.len(), 120);
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn lifecycle() {
                let (s, _d) = super::$backend().await;
                lifecycle_with_audit(s).await;
            }
            #[tokio::test]
            async fn fencing() {
                let (s, _d) = super::$backend().await;
                fencing_refuses_a_stale_supervisor(s).await;
            }
            #[tokio::test]
            async fn reaper() {
                let (s, _d) = super::$backend().await;
                reaper_fails_a_job_once_attempts_are_spent(s).await;
            }
            #[tokio::test]
            async fn retries() {
                let (s, _d) = super::$backend().await;
                retries_wait_for_their_backoff(s).await;
            }
            #[tokio::test]
            async fn outages() {
                let (s, _d) = super::$backend().await;
                outages_spend_no_attempts_within_their_budget(s).await;
            }
            #[tokio::test]
            async fn retry_position() {
                let (s, _d) = super::$backend().await;
                a_retried_job_takes_a_new_position(s).await;
            }
            #[tokio::test]
            async fn erasure() {
                let (s, _d) = super::$backend().await;
                erasure_cancels_queued_and_running_jobs(s).await;
            }
            #[tokio::test]
            async fn idempotency() {
                let (s, _d) = super::$backend().await;
                idempotency_keys_are_per_tenant(s).await;
            }
            #[tokio::test]
            async fn cancel_release() {
                let (s, _d) = super::$backend().await;
                cancel_and_release(s).await;
            }
            #[tokio::test]
            async fn fairness() {
                let (s, _d) = super::$backend().await;
                one_tenants_backlog_does_not_starve_another(s).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_claims() {
                let (s, _d) = super::$backend().await;
                concurrent_claims_take_each_job_once(s).await;
            }
        }
    };
}

conformance!(postgres);
conformance!(sqlite);

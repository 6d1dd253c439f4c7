//! The tenant API over real HTTP against a real `airlock serve` (embedded default: SQLite and a
//! local directory): authentication, and the cross-tenant suite — tenant B's key on tenant A's
//! job gets exactly the 404 of a random id, and listings never show A's jobs; a missing,
//! malformed, revoked or query-string key gets one 401.

use std::process::Child;
use std::time::Duration;

use serde_json::Value;

use crate::common::{airlock, fixture};
use crate::service::Deployment;

pub(crate) struct Server {
    pub(crate) d: Deployment,
    pub(crate) base: String,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a suite runs: the embedded default, or PostgreSQL plus SeaweedFS.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    Embedded,
    Production,
}

impl Server {
    /// The `serve` process's id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        self.d.run(args)
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    async fn start() -> Self {
        Self::start_with(&["--supervise", "0"]).await
    }

    /// An embedded server with these `serve` flags.
    async fn start_with(flags: &[&str]) -> Self {
        Self::on(Backend::Embedded, flags).await
    }

    /// A server on `backend` with these `serve` flags (its database already migrated).
    pub(crate) async fn on(backend: Backend, flags: &[&str]) -> Self {
        Self::on_env(backend, flags, &[]).await
    }

    /// [`Server::on`], with these variables in `serve`'s environment (and every command's).
    pub(crate) async fn on_env(backend: Backend, flags: &[&str], env: &[(&str, &str)]) -> Self {
        let mut d = match backend {
            Backend::Embedded => Deployment::embedded(),
            Backend::Production => Deployment::production().await,
        };
        d.vars
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let child = d
            .cmd()
            .arg("serve")
            .env("AIRLOCK_LISTEN", format!("127.0.0.1:{port}"))
            .env("AIRLOCK_PUBLIC_URL", &base)
            // Jobs stay queued unless a test runs them (`start`): these tests look at every
            // state.
            .args(flags)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { d, base, child };
        // Generous: a start cleans the leftovers of killed servers from the temp directory.
        for _ in 0..2400 {
            if let Ok(r) = reqwest::get(format!("{}/healthz", server.base)).await {
                if r.status() == 200 {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("serve never answered /healthz");
    }

    /// The deployment's job store, read directly (audit rows).
    async fn store(&self) -> std::sync::Arc<airlock::jobs::sql::SqlStore> {
        let url = &self
            .d
            .vars
            .iter()
            .find(|(k, _)| k == "AIRLOCK_DATABASE_URL")
            .unwrap()
            .1;
        airlock::jobs::open_sql(url, false).await.unwrap()
    }

    pub(crate) fn key(&self, tenant: &str) -> (String, String) {
        let v: Value =
            serde_json::from_str(&self.ok(&["key", "create", "--tenant", tenant])).unwrap();
        (
            v["key"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        )
    }

    pub(crate) async fn get(
        &self,
        path: &str,
        key: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or(Value::Null);
        (status, headers, body)
    }
}

/// An error body without its request id (which differs per request by design).
fn without_request_id(mut v: Value) -> Value {
    if let Some(e) = v.get_mut("error") {
        assert!(
            e["request_id"].as_str().is_some_and(|r| r.len() >= 32),
            "{v}"
        );
        e.as_object_mut().unwrap().remove("request_id");
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tenant_comes_from_the_key_and_other_tenants_jobs_do_not_exist() {
    cross_tenant_suite(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tenant_comes_from_the_key_and_other_tenants_jobs_do_not_exist_on_postgres_and_s3() {
    cross_tenant_suite(Backend::Production).await;
}

/// Row-level security on its own: with the application's `WHERE tenant = …` taken out of the
/// job reads (a test-only switch), tenant B's key still never sees tenant A's job on PostgreSQL,
/// by id or in a listing. On SQLite, which has no row-level security, the same switch does leak
/// A's job, which shows the switch really removes the filter.
#[tokio::test(flavor = "multi_thread")]
async fn row_level_security_alone_keeps_other_tenants_jobs_out() {
    for backend in [Backend::Production, Backend::Embedded] {
        let s = Server::on_env(
            backend,
            &["--supervise", "0"],
            &[("AIRLOCK_TEST_DROP_TENANT_FILTER", "1")],
        )
        .await;
        s.ok(&["tenant", "create", "acme"]);
        s.ok(&["tenant", "create", "globex"]);
        let (globex, _) = s.key("globex");
        let a_job = s.ok(&[
            "submit",
            "--tenant",
            "acme",
            fixture("valid/leads.csv").to_str().unwrap(),
        ]);
        let g_job = s.ok(&[
            "submit",
            "--tenant",
            "globex",
            fixture("valid/leads.csv").to_str().unwrap(),
        ]);
        let (status, _, _) = s.get(&format!("/v1/jobs/{a_job}"), Some(&globex)).await;
        let (_, _, list) = s.get("/v1/jobs", Some(&globex)).await;
        let listed: Vec<&str> = list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect();
        match backend {
            Backend::Production => {
                assert_eq!(status, 404, "row-level security let globex read acme's job");
                assert_eq!(listed, vec![g_job.as_str()]);
            }
            Backend::Embedded => {
                assert_eq!(status, 200, "the switch did not remove the filter");
                assert!(listed.contains(&a_job.as_str()), "{list}");
            }
        }
    }
}

async fn cross_tenant_suite(backend: Backend) {
    let s = Server::on(backend, &["--supervise", "0"]).await;
    s.ok(&["tenant", "create", "acme"]);
    s.ok(&["tenant", "create", "globex"]);
    let (acme, _) = s.key("acme");
    let (globex, globex_id) = s.key("globex");
    let a_jobs: Vec<String> = (0..3)
        .map(|_| {
            s.ok(&[
                "submit",
                "--tenant",
                "acme",
                fixture("valid/leads.csv").to_str().unwrap(),
            ])
        })
        .collect();
    let g_job = s.ok(&[
        "submit",
        "--tenant",
        "globex",
        fixture("valid/leads.csv").to_str().unwrap(),
    ]);

    // The owner sees its job, with the security headers and a request id.
    let (status, headers, body) = s.get(&format!("/v1/jobs/{}", a_jobs[0]), Some(&acme)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], a_jobs[0].as_str());
    assert_eq!(body["state"], "queued");
    assert!(
        !headers.contains_key("strict-transport-security"),
        "plain http: no HSTS"
    );
    for (h, v) in [
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("content-security-policy", "default-src 'none'"),
    ] {
        assert_eq!(headers[h], v, "{h}");
    }
    assert!(headers.contains_key("x-request-id"));

    // Cross-tenant: B's key on each of A's jobs is the 404 of a random id, body for body.
    let (_, _, random) = s
        .get(&format!("/v1/jobs/{}", uuid::Uuid::new_v4()), Some(&globex))
        .await;
    let random = without_request_id(random);
    assert_eq!(random["error"]["code"], "not_found");
    let mut checked = 0;
    for id in &a_jobs {
        let (status, headers, body) = s.get(&format!("/v1/jobs/{id}"), Some(&globex)).await;
        assert_eq!(status, 404);
        assert_eq!(
            body["error"]["request_id"].as_str(),
            headers["x-request-id"].to_str().ok(),
            "the error carries the request's id"
        );
        assert_eq!(without_request_id(body), random);
        checked += 1;
    }
    let (status, _, body) = s.get("/v1/jobs/not-a-uuid", Some(&globex)).await;
    assert_eq!((status, without_request_id(body)), (404, random.clone()));
    assert_eq!(checked, 3);

    // Listings: only the caller's jobs, paged with a cursor.
    let (status, _, body) = s.get("/v1/jobs?limit=2", Some(&acme)).await;
    assert_eq!(status, 200, "{body}");
    let mut seen: Vec<String> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen.len(), 2);
    let cursor = body["next_cursor"].as_str().unwrap().to_string();
    let (_, _, body) = s
        .get(&format!("/v1/jobs?limit=2&cursor={cursor}"), Some(&acme))
        .await;
    seen.extend(
        body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string()),
    );
    assert!(body["next_cursor"].is_null());
    seen.sort();
    let mut want = a_jobs.clone();
    want.sort();
    assert_eq!(seen, want);
    let (_, _, body) = s.get("/v1/jobs?state=queued", Some(&globex)).await;
    let ids: Vec<&str> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [g_job.as_str()]);
    let (status, _, body) = s.get("/v1/jobs?state=bogus", Some(&acme)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );

    // Every way of not presenting a valid key gets the same 401.
    let (status, headers, unauth) = s.get("/v1/jobs", None).await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));
    let unauth = without_request_id(unauth);
    assert_eq!(unauth["error"]["code"], "unauthenticated");
    let revoked = {
        let (k, id) = s.key("acme");
        s.ok(&["key", "revoke", &id]);
        k
    };
    let mut forged = acme.clone();
    forged.replace_range(30..31, if &acme[30..31] == "x" { "y" } else { "x" });
    let client = reqwest::Client::new();
    let mut variants = 0;
    for (path, auth) in [
        (
            format!("/v1/jobs/{}", a_jobs[0]),
            Some(format!("Bearer {revoked}")),
        ),
        (
            format!("/v1/jobs/{}", a_jobs[0]),
            Some(format!("Bearer {forged}")),
        ),
        (
            format!("/v1/jobs/{}", a_jobs[0]),
            Some("Bearer al_live_short".to_string()),
        ),
        (
            format!("/v1/jobs/{}", a_jobs[0]),
            Some(format!("Basic {acme}")),
        ),
        (format!("/v1/jobs/{}", a_jobs[0]), Some(acme.clone())),
        (format!("/v1/jobs/{}?api_key={acme}", a_jobs[0]), None),
        // A valid key in the header does not excuse one in the URL.
        (
            format!("/v1/jobs/{}?key={acme}", a_jobs[0]),
            Some(format!("Bearer {acme}")),
        ),
        (format!("/v1/jobs?x={acme}"), Some(format!("Bearer {acme}"))),
        // However it is encoded.
        (
            format!("/v1/jobs?access%5Ftoken={}", &acme[8..]),
            Some(format!("Bearer {acme}")),
        ),
        (
            format!("/v1/jobs?x=al%5Flive%5F{}", &acme[8..]),
            Some(format!("Bearer {acme}")),
        ),
        (
            format!("/v1/jobs?API-Key={}", &acme[8..]),
            Some(format!("Bearer {acme}")),
        ),
    ] {
        let mut req = client.get(format!("{}{path}", s.base));
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{path} {auth:?}");
        assert_eq!(
            without_request_id(serde_json::from_slice(&res.bytes().await.unwrap()).unwrap()),
            unauth,
            "{path}"
        );
        variants += 1;
    }
    assert_eq!(variants, 11);
    // The security headers are on every response, not only /v1's.
    for path in ["/healthz", "/nowhere", "/v1/nowhere"] {
        let res = reqwest::get(format!("{}{path}", s.base)).await.unwrap();
        assert_eq!(res.headers()["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(
            res.headers()["content-security-policy"],
            "default-src 'none'",
            "{path}"
        );
    }
    // Revoking B's key shuts B out at once; A is unaffected.
    s.ok(&["key", "revoke", &globex_id]);
    assert_eq!(s.get("/v1/jobs", Some(&globex)).await.0, 401);
    assert_eq!(s.get("/v1/jobs", Some(&acme)).await.0, 200);
}

/// `POST /v1/jobs`: the body is the CSV, streamed to storage and enqueued for the key's tenant;
/// the size is refused before a byte is read; only CSV media types; the same Idempotency-Key
/// gives the same job, per tenant.
#[tokio::test(flavor = "multi_thread")]
async fn posting_a_csv_makes_a_job_for_the_keys_tenant() {
    posting_suite(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn posting_a_csv_makes_a_job_for_the_keys_tenant_on_postgres_and_s3() {
    posting_suite(Backend::Production).await;
}

async fn posting_suite(backend: Backend) {
    let s = Server::on(backend, &["--supervise", "0"]).await;
    s.ok(&["tenant", "create", "acme"]);
    s.ok(&["tenant", "create", "globex"]);
    let (acme, _) = s.key("acme");
    let (globex, _) = s.key("globex");
    let csv = std::fs::read(fixture("valid/leads.csv")).unwrap();
    let client = reqwest::Client::new();
    let post = |key: &str, body: Vec<u8>, ctype: &str, extra: &[(&str, &str)]| {
        let mut req = client
            .post(format!("{}/v1/jobs?name=../../etc/Leads%20Q3.csv", s.base))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", ctype)
            .body(body);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let res = post(&acme, csv.clone(), "text/csv; charset=utf-8", &[])
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (job["tenant"].as_str(), job["state"].as_str()),
        (Some("acme"), Some("queued"))
    );
    let id = job["id"].as_str().unwrap().to_string();

    // Idempotency: the same key gives the same job for the same tenant, a new one for another.
    let idem = [("idempotency-key", "upload-42")];
    let first: Value = serde_json::from_slice(
        &post(&acme, csv.clone(), "text/csv", &idem)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let again: Value = serde_json::from_slice(
        &post(&acme, csv.clone(), "text/csv", &idem)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["id"], again["id"]);
    let theirs: Value = serde_json::from_slice(
        &post(&globex, csv.clone(), "application/octet-stream", &idem)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_ne!(theirs["id"], first["id"]);
    assert_eq!(theirs["tenant"], "globex");

    // Refusals.
    let res = post(&acme, csv.clone(), "application/json", &[])
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = client
        .post(format!("{}/v1/jobs", s.base))
        .header("content-type", "text/csv")
        .body(csv.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // Too large: refused on the headers alone, before any of the body is sent.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acme}\r\nContent-Type: text/csv\r\nContent-Length: 5000000000\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");

    // A body cut short of its Content-Length is refused and nothing is queued for it.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acme}\r\nContent-Type: text/csv\r\nContent-Length: 1000\r\n\r\nemail\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await;

    // The job runs like any other, under its sanitised name.
    let out = s.cli(&["supervise", "--until-idle", "-c", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, job) = s.get(&format!("/v1/jobs/{id}"), Some(&acme)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, _, list) = s.get("/v1/jobs", Some(&acme)).await;
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        2,
        "two acme jobs: {list}"
    );
    let link = s.ok(&["link", &id, "--artifact", "output"]);
    // `../../etc/` is gone; the name is the last component.
    assert!(
        link.contains("Leads%20Q3") && !link.contains("etc"),
        "{link}"
    );
}

/// Downloads through the API (303 to a fresh link, audited; refused for unfinished and purged
/// jobs and for other tenants), DELETE (cancel a queued job, erase a finished one with a
/// receipt), receipts, and readiness.
#[tokio::test(flavor = "multi_thread")]
async fn download_delete_receipts_and_readiness() {
    download_suite(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn download_delete_receipts_and_readiness_on_postgres_and_s3() {
    download_suite(Backend::Production).await;
}

async fn download_suite(backend: Backend) {
    let s = Server::on(backend, &["--supervise", "0"]).await;
    s.ok(&["tenant", "create", "acme"]);
    s.ok(&["tenant", "create", "globex"]);
    let (acme, _) = s.key("acme");
    let (globex, _) = s.key("globex");
    let file = fixture("valid/leads.csv");
    let done = s.ok(&["submit", "--tenant", "acme", file.to_str().unwrap()]);
    let out = s.cli(&["supervise", "--until-idle", "-c", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queued = s.ok(&["submit", "--tenant", "acme", file.to_str().unwrap()]);
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let fetch = |path: String, key: String| {
        no_redirects
            .get(format!("{}{path}", s.base))
            .header("authorization", format!("Bearer {key}"))
            .send()
    };

    // 303 to a link that downloads exactly what `airlock process` writes.
    let res = fetch(format!("/v1/jobs/{done}/output"), acme.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let bytes = reqwest::get(&location)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reference = crate::common::process(&file, &[]);
    assert_eq!(
        Some(String::from_utf8_lossy(&bytes).into_owned()),
        reference.output()
    );
    let store = s.store().await;
    use airlock::jobs::JobStore;
    let audit = store
        .audit(uuid::Uuid::parse_str(&done).unwrap())
        .await
        .unwrap();
    assert!(
        audit.iter().any(|(_, _, d)| d
            .as_deref()
            .is_some_and(|d| d.starts_with("link issued: output"))),
        "{audit:?}"
    );
    // Other tenants: the 404 of a random id. Unfinished: 409. Unknown artifact: 404.
    let random = fetch(
        format!("/v1/jobs/{}/output", uuid::Uuid::new_v4()),
        globex.clone(),
    )
    .await
    .unwrap();
    let random: Value =
        without_request_id(serde_json::from_slice(&random.bytes().await.unwrap()).unwrap());
    let theirs = fetch(format!("/v1/jobs/{done}/output"), globex.clone())
        .await
        .unwrap();
    assert_eq!(theirs.status(), 404);
    assert_eq!(
        without_request_id(serde_json::from_slice(&theirs.bytes().await.unwrap()).unwrap()),
        random
    );
    let res = fetch(format!("/v1/jobs/{queued}/report"), acme.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(
        fetch(format!("/v1/jobs/{done}/input"), acme.clone())
            .await
            .unwrap()
            .status(),
        404
    );

    // DELETE: another tenant's job is not found; a queued one is cancelled and erased; a
    // finished one is erased with a receipt; after that its files are gone (410).
    let delete = |id: &str, key: &str| {
        no_redirects
            .delete(format!("{}/v1/jobs/{id}", s.base))
            .header("authorization", format!("Bearer {key}"))
            .send()
    };
    assert_eq!(delete(&done, &globex).await.unwrap().status(), 404);
    let res = delete(&queued, &acme).await.unwrap();
    assert_eq!(res.status(), 200);
    let job: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(job["state"], "purged");
    let res = delete(&done, &acme).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        fetch(format!("/v1/jobs/{done}/output"), acme.clone())
            .await
            .unwrap()
            .status(),
        410
    );
    assert_eq!(
        reqwest::get(&location).await.unwrap().status(),
        404,
        "the file is gone"
    );
    assert_eq!(delete(&done, &acme).await.unwrap().status(), 410);
    let (_, _, receipts) = s.get("/v1/receipts", Some(&acme)).await;
    let ids: Vec<&str> = receipts["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{receipts}");
    assert!(ids.contains(&done.as_str()) && ids.contains(&queued.as_str()));
    let (_, _, theirs) = s.get("/v1/receipts", Some(&globex)).await;
    assert_eq!(theirs["receipts"], serde_json::json!([]));

    let ready = reqwest::get(format!("{}/readyz", s.base)).await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// The embedded default's quickstart: `airlock serve` in an empty directory creates the
/// database, a tenant and its key (printed once), runs jobs in the same process, and a client's
/// X-Request-Id reaches the response, the error bodies and the job's audit rows.
#[tokio::test(flavor = "multi_thread")]
async fn serve_alone_is_the_quickstart() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let start = || {
        airlock()
            .arg("serve")
            .current_dir(dir.path())
            .env_remove("AIRLOCK_DATABASE_URL")
            .env_remove("AIRLOCK_STORAGE_URL")
            .env("AIRLOCK_LISTEN", format!("127.0.0.1:{port}"))
            .env("AIRLOCK_PUBLIC_URL", &base)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_ready = || async {
        for _ in 0..2400 {
            if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("serve never answered /healthz");
    };
    let stop = |mut child: Child| {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        let mut out = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        (status, out)
    };

    let first = start();
    wait_ready().await;
    let client = reqwest::Client::new();
    let file = fixture("valid/leads.csv");
    let res = client
        .post(format!("{base}/v1/jobs"))
        .header("content-type", "text/csv")
        .body(std::fs::read(&file).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no key yet");
    // The key is on standard output; it has to be read after the server stops, so stop it,
    // start it again (no new key: the database exists), and use the first key.
    let (status, out) = stop(first);
    assert!(status.success(), "{status:?}");
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("al_live_"))
        .unwrap_or_else(|| panic!("no key printed: {out:?}"))
        .to_string();
    assert!(out.contains("\"demo\""), "{out}");

    let second = start();
    wait_ready().await;
    let res = client
        .post(format!("{base}/v1/jobs?name=leads.csv"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "text/csv")
        .header("x-request-id", "pipeline-run-42")
        .body(std::fs::read(&file).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.headers()["x-request-id"], "pipeline-run-42");
    let job: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(job["tenant"], "demo");
    let id = job["id"].as_str().unwrap().to_string();
    // An unacceptable request id is replaced, never echoed.
    let res = client
        .get(format!("{base}/v1/jobs/{}", uuid::Uuid::new_v4()))
        .header("authorization", format!("Bearer {key}"))
        .header("x-request-id", "bad id <script>")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 36, "{rid}");
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["request_id"], rid.as_str());

    // The in-process supervisor runs it.
    let mut state = Value::Null;
    for _ in 0..400 {
        let v: Value = client
            .get(format!("{base}/v1/jobs/{id}"))
            .header("authorization", format!("Bearer {key}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap();
        state = v["state"].clone();
        if state == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "succeeded");
    let clean = client
        .get(format!("{base}/v1/jobs/{id}/output"))
        .header("authorization", format!("Bearer {key}"))
        .header("x-request-id", "fetch-7")
        .send()
        .await
        .unwrap();
    assert_eq!(clean.status(), 200, "followed the 303");
    assert_eq!(
        Some(String::from_utf8_lossy(&clean.bytes().await.unwrap()).into_owned()),
        crate::common::process(&file, &[]).output()
    );
    let (status, out) = stop(second);
    assert!(status.success(), "{status:?}");
    assert!(!out.contains("al_live_"), "a second start prints no key");

    // The request ids are in the audit trail: the enqueue and the link.
    use sqlx::Row;
    let db = dir.path().join("airlock-data/airlock.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT to_state, detail, request_id FROM airlock_audit WHERE job_id = ? ORDER BY id",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let rows: Vec<(String, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows.first().map(|r| (r.0.as_str(), r.2.as_deref())),
        Some(("queued", Some("pipeline-run-42"))),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.1.as_deref() == Some("link issued: output")
                && r.2.as_deref() == Some("fetch-7")),
        "{rows:?}"
    );
    // Rows the supervisor wrote carry no request.
    assert!(
        rows.iter().any(|r| r.0 == "succeeded" && r.2.is_none()),
        "{rows:?}"
    );
}

/// `/healthz` fails, naming the part, when a heartbeat stops: the runtime's ticker, or an
/// in-process supervisor's claim loop.
#[tokio::test(flavor = "multi_thread")]
async fn healthz_fails_when_a_part_stalls() {
    use airlock::jobs::JobStore;
    use airlock::liveness::Liveness;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/airlock.db", dir.path().display());
    airlock::jobs::open_sql(&url, true)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let store = airlock::jobs::open_sql(&url, false).await.unwrap();
    let objects: std::sync::Arc<dyn airlock::storage::ObjectStore> = std::sync::Arc::new(
        airlock::storage::fs::FsStore::open(&dir.path().join("storage"), "http://127.0.0.1:1")
            .unwrap(),
    );
    let policies = std::sync::Arc::new(airlock::policy::Policies::load(None).unwrap());
    let serve = |liveness: Liveness| {
        let api = std::sync::Arc::new(
            airlock::api::Api::new(
                store.clone(),
                objects.clone(),
                policies.clone(),
                dir.path().to_path_buf(),
            )
            .with_liveness(liveness),
        );
        let app = airlock::serve::app(api, None);
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(airlock::serve::serve_router(
                listener,
                app,
                airlock::serve::Limits::default(),
                std::future::pending(),
            ));
            base
        }
    };
    let health = |base: String| async move {
        let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };

    // A ticking runtime and a turning supervisor: healthy.
    let live =
        Liveness::with_limits(Duration::from_millis(1500), Duration::from_millis(1500)).ticking();
    let base = serve(live.clone()).await;
    let turning = live.clone();
    let last_beat = std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    let beat_at = last_beat.clone();
    let beating = tokio::spawn(async move {
        loop {
            turning.beat_supervisor();
            *beat_at.lock().unwrap() = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Healthy throughout more than a whole limit while both beat: every answer polled is 200.
    let polled = std::time::Instant::now();
    while polled.elapsed() < Duration::from_millis(2000) {
        let (status, body) = health(base.clone()).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The supervisor's loop stops turning: 503 once its limit passes, and not before.
    beating.abort();
    let _ = beating.await;
    // Read just after the last beat, so never later than the server's own measure.
    let stopped = *last_beat.lock().unwrap();
    let (status, body) = until_status(&health, &base, 503).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"supervisor\""), "{body}");
    assert!(
        stopped.elapsed() >= Duration::from_millis(1450),
        "unhealthy {:?} after the last beat, inside the 1.5 s limit",
        stopped.elapsed()
    );
    // A supervisor that stopped on purpose is no longer watched.
    live.supervisor_stopped();
    assert_eq!(health(base).await.0, 200);

    // A runtime whose ticker never runs (blocked, or starved) is reported as such.
    let stalled = Liveness::with_limits(Duration::from_millis(500), Duration::from_secs(60));
    let base = serve(stalled).await;
    let (status, body) = until_status(&health, &base, 503).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"runtime\""), "{body}");
}

/// `/healthz` polled until it answers `want` (at most 30 s): the last answer.
async fn until_status<F, Fut>(health: &F, base: &str, want: u16) -> (u16, String)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (u16, String)>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = health(base.to_string()).await;
        if status == want || std::time::Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /v1/openapi.json` documents exactly the routes the server answers: every documented
/// path and method reaches a handler (never the router's bare 404/405), and the key routes are
/// all there.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_the_routes() {
    let s = Server::start().await;
    let (status, headers, doc) = s.get("/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut want = vec![
        "GET /healthz",
        "GET /metrics",
        "GET /readyz",
        "GET /v1/openapi.json",
        "GET /v1/jobs",
        "POST /v1/jobs",
        "GET /v1/jobs/{id}",
        "DELETE /v1/jobs/{id}",
        "GET /v1/jobs/{id}/{artifact}",
        "GET /v1/receipts",
        "GET /v1/audit",
        "POST /v1/uploads",
        "POST /v1/uploads/{id}/complete",
        "GET /v1/webhooks",
        "POST /v1/webhooks",
        "GET /v1/webhooks/{id}",
        "DELETE /v1/webhooks/{id}",
        "POST /v1/webhooks/{id}/rotate",
        "GET /v1/webhooks/{id}/deliveries",
        "POST /v1/webhooks/{id}/replay",
        "GET /v1/schemas",
        "PUT /v1/schemas/{id}",
        "GET /v1/schemas/{id}",
        "DELETE /v1/schemas/{id}",
    ];
    want.sort();
    assert_eq!(documented, want);
    // Each reaches its handler: a JSON error or success, not an empty router miss.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{artifact}", "output")
            .replace("/replay", "/replay?since=0");
        let res = client
            .request(method.parse().unwrap(), format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.bytes().await.unwrap();
        assert!(status != 405 && !body.is_empty(), "{route}: {status}");
        if status == 404 {
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], "not_found", "{route}");
        }
    }
    // The error codes and the key scheme are documented.
    let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    assert!(codes.as_array().unwrap().len() >= 15, "{codes}");
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}

/// Past its budget a key gets 429 `rate_limited` with `Retry-After`, and other keys do not
/// notice; past the per-IP budget every request from that address does, key or not.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_per_key_and_per_ip() {
    let s = Server::start_with(&[
        "--supervise",
        "0",
        "--rate-per-key",
        "2",
        "--rate-per-ip",
        "0",
    ])
    .await;
    s.ok(&["tenant", "create", "acme"]);
    s.ok(&["tenant", "create", "globex"]);
    let (acme, _) = s.key("acme");
    let (globex, _) = s.key("globex");
    let mut limited = None;
    for _ in 0..20 {
        let (status, headers, body) = s.get("/v1/jobs", Some(&acme)).await;
        if status == 429 {
            limited = Some((headers, body));
            break;
        }
        assert_eq!(status, 200);
    }
    let (headers, body) = limited.expect("20 requests at once passed a 2/s budget");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another key is on its own budget.
    assert_eq!(s.get("/v1/jobs", Some(&globex)).await.0, 200);
    // After the wait, the key works again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(s.get("/v1/jobs", Some(&acme)).await.0, 200);
    drop(s);

    let s = Server::start_with(&[
        "--supervise",
        "0",
        "--rate-per-key",
        "0",
        "--rate-per-ip",
        "3",
    ])
    .await;
    s.ok(&["tenant", "create", "acme"]);
    let (acme, _) = s.key("acme");
    let mut statuses = Vec::new();
    for i in 0..20 {
        // Unauthenticated guesses spend the same budget as real requests.
        let key = if i % 2 == 0 {
            Some(acme.as_str())
        } else {
            None
        };
        statuses.push(s.get("/v1/jobs", key).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses[..6].iter().all(|&st| st == 200 || st == 401),
        "{statuses:?}"
    );
    // The liveness probe is not limited; the readiness probe spends the same per-IP budget
    // (README: "covers `/readyz` too"), so with it spent `/readyz` is refused as well.
    for _ in 0..20 {
        assert_eq!(s.get("/healthz", None).await.0, 200);
    }
    // Sent at once, so no slow answer lets the budget refill between them.
    let probes: Vec<_> = (0..10)
        .map(|_| {
            let url = format!("{}/readyz", s.base);
            tokio::spawn(async move {
                let r = reqwest::get(url).await.unwrap();
                let status = r.status().as_u16();
                let v: Value =
                    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
                (status, v["error"]["code"].as_str().map(str::to_string))
            })
        })
        .collect();
    let mut ready = Vec::new();
    for p in probes {
        ready.push(p.await.unwrap());
    }
    assert!(
        ready.contains(&(429, Some("rate_limited".into()))),
        "10 readiness probes at once passed a 3/s budget: {ready:?}"
    );
}

/// `/metrics` counts requests, claims, outcomes and durations, and reads jobs by state and
/// each tenant's queue age from the database; only operators see it.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_for_operators_only() {
    let s = Server::start_with(&["--supervise", "0"]).await;
    s.ok(&["tenant", "create", "acme"]);
    let (acme, _) = s.key("acme");
    let file = fixture("valid/leads.csv");
    let client = reqwest::Client::new();
    let post = client
        .post(format!("{}/v1/jobs", s.base))
        .header("authorization", format!("Bearer {acme}"))
        .header("content-type", "text/csv")
        .body(std::fs::read(&file).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 202);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let scrape = |headers: Vec<(&'static str, String)>| {
        let mut req = client.get(format!("{}/metrics", s.base));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let (status, text) = scrape(vec![]).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("airlock_jobs{state=\"queued\"} 1"), "{text}");
    assert!(
        text.contains("airlock_jobs{state=\"succeeded\"} 0"),
        "{text}"
    );
    let age = text
        .lines()
        .find(|l| l.starts_with("airlock_queue_age_seconds{tenant=\"acme\"}"))
        .unwrap_or_else(|| panic!("{text}"));
    let age: f64 = age.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((1.0..60.0).contains(&age), "{age}");
    assert!(
        text.contains(
            "airlock_http_requests_total{route=\"/v1/jobs\",method=\"POST\",status=\"202\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("airlock_http_request_duration_seconds_bucket{le="),
        "{text}"
    );
    // Through a proxy, or from elsewhere: a plain 404, nothing about tenants.
    let (status, text) = scrape(vec![("x-forwarded-for", "203.0.113.9".into())]).await;
    assert_eq!(status, 404);
    assert!(!text.contains("acme"));
    drop(s);

    // With a token: that token from anywhere, nothing without it. An in-process supervisor's
    // claims, outcomes and job durations are counted.
    let s = Server::start_with(&["--supervise", "1", "--metrics-token", "op-secret"]).await;
    s.ok(&["tenant", "create", "acme"]);
    let (acme, _) = s.key("acme");
    let post = client
        .post(format!("{}/v1/jobs", s.base))
        .header("authorization", format!("Bearer {acme}"))
        .header("content-type", "text/csv")
        .body(std::fs::read(&file).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 202);
    let scrape = |token: Option<&str>| {
        let mut req = client.get(format!("{}/metrics", s.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    assert_eq!(scrape(None).await.0, 404);
    assert_eq!(scrape(Some("wrong")).await.0, 404);
    assert_eq!(
        scrape(Some(&acme)).await.0,
        404,
        "a tenant key is not the token"
    );
    let mut text = String::new();
    for _ in 0..200 {
        let (status, t) = scrape(Some("op-secret")).await;
        assert_eq!(status, 200);
        text = t;
        if text.contains("airlock_jobs{state=\"succeeded\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("airlock_jobs{state=\"succeeded\"} 1"),
        "{text}"
    );
    assert!(text.contains("airlock_claims_total 1"), "{text}");
    assert!(
        text.contains("airlock_worker_outcomes_total{outcome=\"succeeded\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("airlock_job_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        !text.contains("airlock_queue_age_seconds{"),
        "nothing queued: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_uploads() {
    direct_upload_suite(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_uploads_on_postgres_and_s3() {
    direct_upload_suite(Backend::Production).await;
}

/// `POST /v1/uploads` gives a presigned PUT bound to the exact size and SHA-256; the store
/// refuses any other body; `complete` checks what was stored and enqueues the job (the same job
/// on every call); another tenant's upload does not exist; an upload never completed is an
/// orphan the sweep deletes.
/// The stable code of a refusal: the `error.code` of Airlock's JSON envelope, or the `<Code>`
/// of an S3 XML error.
fn refusal_code(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        if let Some(c) = v["error"]["code"].as_str() {
            return c.to_string();
        }
    }
    body.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map_or_else(|| format!("no code in {body:?}"), |(c, _)| c.to_string())
}

/// The local backend's upload links (`serve`'s `/u/...`) against forgery: a changed signature,
/// an expired link, one signed for longer than any link may live, one moved to another object,
/// and one whose size was raised, each refused with its code before a byte is stored. The
/// correctly signed variants are made with the deployment's own key, so only the check under
/// test stands between them and the store.
async fn local_put_links_are_checked(
    s: &Server,
    url: &str,
    bytes: &[u8],
    headers: &[(String, String)],
) {
    let root =
        s.d.vars
            .iter()
            .find(|(k, _)| k == "AIRLOCK_STORAGE_URL")
            .unwrap()
            .1
            .clone();
    let store = airlock::storage::fs::FsStore::open(
        std::path::Path::new(root.strip_prefix("file://").unwrap()),
        &s.base,
    )
    .unwrap();
    let key = store.signing_key();
    let (path, query) = url.split_once('?').unwrap();
    let object = path.rsplit_once("/u/").unwrap().1.to_string();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    let (exp, len, sha_enc, sig) = (param("exp"), param("len"), param("sha"), param("sig"));
    let sha_b64 = percent_encoding::percent_decode_str(&sha_enc)
        .decode_utf8()
        .unwrap()
        .into_owned();
    let exp: u64 = exp.parse().unwrap();
    let len: u64 = len.parse().unwrap();
    assert!(key.verify_put(&object, exp, len, &sha_b64, &sig), "{url}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let link = |object: &str, exp: u64, len: u64, sig: &str| {
        format!(
            "{}/u/{object}?exp={exp}&len={len}&sha={sha_enc}&sig={sig}",
            s.base
        )
    };
    let client = reqwest::Client::new();
    let send = |url: String, body: Vec<u8>| {
        let mut req = client.put(url).body(body);
        for (k, v) in headers {
            if k != "content-length" {
                req = req.header(k, v);
            }
        }
        req.send()
    };
    let mut forged = sig.clone().into_bytes();
    forged[10] = if forged[10] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    let other = airlock::storage::ObjectKey::new(airlock::storage::Kind::Input).to_string();
    let long = now + 24 * 3600;
    /// What is sent (a name, the link, the body) and the refusal expected.
    type Case<'a> = (&'a str, String, Vec<u8>, (u16, &'a str));
    let cases: Vec<Case> = vec![
        (
            "a forged signature",
            link(&object, exp, len, &forged),
            bytes.to_vec(),
            (403, "link_invalid"),
        ),
        (
            "a link moved to another object",
            link(&other, exp, len, &sig),
            bytes.to_vec(),
            (403, "link_invalid"),
        ),
        (
            "a link whose size was raised",
            link(&object, exp, len + 1, &sig),
            [bytes, b"x"].concat(),
            (403, "link_invalid"),
        ),
        (
            "a link whose expiry was moved (within the cap)",
            link(&object, exp - 60, len, &sig),
            bytes.to_vec(),
            (403, "link_invalid"),
        ),
        (
            "a correctly signed link that has expired",
            link(
                &object,
                now - 5,
                len,
                &key.sign_put(&object, now - 5, len, &sha_b64),
            ),
            bytes.to_vec(),
            (403, "link_expired"),
        ),
        (
            "a correctly signed link that outlives the cap",
            link(
                &object,
                long,
                len,
                &key.sign_put(&object, long, len, &sha_b64),
            ),
            bytes.to_vec(),
            (403, "link_invalid"),
        ),
    ];
    for (what, url, body, want) in cases {
        let res = send(url, body).await.unwrap();
        let status = res.status().as_u16();
        let code = refusal_code(&String::from_utf8_lossy(&res.bytes().await.unwrap()));
        assert_eq!((status, code.as_str()), want, "{what}");
    }
    // The moved link's target was never written either.
    let moved = airlock::storage::ObjectKey::parse(&other).unwrap();
    use airlock::storage::ObjectStore;
    assert!(store.head(&moved).await.unwrap().is_none());
}

async fn direct_upload_suite(backend: Backend) {
    use sha2::Digest;
    let s = Server::on(backend, &["--supervise", "0"]).await;
    s.ok(&["tenant", "create", "acme"]);
    s.ok(&["tenant", "create", "globex"]);
    let (acme, _) = s.key("acme");
    let (globex, _) = s.key("globex");
    let file = fixture("valid/leads.csv");
    let bytes = std::fs::read(&file).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let client = reqwest::Client::new();
    let post = |path: String, key: &str, body: String| {
        client
            .post(format!("{}{path}", s.base))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let json = |res: reqwest::Response| async move {
        let status = res.status().as_u16();
        let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or(Value::Null);
        (status, v)
    };
    let ask = |key: &str, size: u64| {
        post(
            "/v1/uploads".into(),
            key,
            serde_json::json!({"size": size, "sha256": sha, "name": "Q4 leads.csv"}).to_string(),
        )
    };

    // Malformed requests, and more than the plan allows, before any link exists.
    let (status, v) = json(post("/v1/uploads".into(), &acme, "{".into()).await.unwrap()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = json(
        post(
            "/v1/uploads".into(),
            &acme,
            serde_json::json!({"size": 10, "sha256": "zz"}).to_string(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, v) = json(ask(&acme, 1 << 50).await.unwrap()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("too_large"))
    );
    let (status, _) = json(
        client
            .post(format!("{}/v1/uploads", s.base))
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    // A ticket: the link is bound to the size and checksum, and lives at most 15 minutes.
    let (status, ticket) = json(ask(&acme, bytes.len() as u64).await.unwrap()).await;
    assert_eq!(status, 201, "{ticket}");
    let id = ticket["id"].as_str().unwrap().to_string();
    let url = ticket["url"].as_str().unwrap().to_string();
    let headers: Vec<(String, String)> = ticket["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&bytes))
    };
    assert!(headers.contains(&("content-length".into(), bytes.len().to_string())));
    assert!(headers.contains(&("x-amz-checksum-sha256".into(), b64.clone())));
    if matches!(backend, Backend::Production) {
        let signed = url
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("X-Amz-SignedHeaders="))
            .unwrap_or_else(|| panic!("{url}"));
        assert!(
            signed.contains("content-length") && signed.contains("x-amz-checksum-sha256"),
            "{signed}"
        );
    }
    let ttl_ms = ticket["expires_at_ms"].as_i64().unwrap()
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
    assert!((0..=15 * 60 * 1000 + 5000).contains(&ttl_ms), "{ttl_ms}");
    assert_eq!(ticket["complete_url"], format!("/v1/uploads/{id}/complete"));

    // Completing before the PUT: nothing is there yet.
    let complete =
        |key: &str, id: &str| post(format!("/v1/uploads/{id}/complete"), key, String::new());
    let (status, v) = json(complete(&acme, &id).await.unwrap()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("upload_mismatch")),
        "{v}"
    );

    // Another tenant's upload is exactly a random id's 404.
    let (theirs_status, theirs) = json(complete(&globex, &id).await.unwrap()).await;
    let (random_status, random) = json(
        complete(&globex, &uuid::Uuid::new_v4().to_string())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((theirs_status, random_status), (404, 404));
    assert_eq!(without_request_id(theirs), without_request_id(random));

    let put = |body: Vec<u8>, headers: &[(String, String)]| {
        let mut req = client.put(&url).body(body);
        for (k, v) in headers {
            if k != "content-length" {
                req = req.header(k, v);
            }
        }
        req.send()
    };
    // The same size with other bytes, a shorter body, a missing checksum header: refused with
    // the store's own code, and nothing is stored.
    let refused = |res: reqwest::Response| async move {
        let status = res.status().as_u16();
        let body = String::from_utf8_lossy(&res.bytes().await.unwrap()).into_owned();
        (status, refusal_code(&body))
    };
    let (bad_digest, short_body, unsigned_header) = match backend {
        Backend::Embedded => (
            (400, "bad_digest"),
            (403, "headers_not_signed"),
            (403, "headers_not_signed"),
        ),
        Backend::Production => (
            (400, "BadDigest"),
            (403, "SignatureDoesNotMatch"),
            (403, "SignatureDoesNotMatch"),
        ),
    };
    let mut other = bytes.clone();
    other[0] ^= 1;
    let got = refused(put(other, &headers).await.unwrap()).await;
    assert_eq!(got, (bad_digest.0, bad_digest.1.into()), "tampered body");
    let got = refused(
        put(bytes[..bytes.len() - 1].to_vec(), &headers)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got, (short_body.0, short_body.1.into()), "short body");
    let without: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k != "x-amz-checksum-sha256")
        .cloned()
        .collect();
    let got = refused(put(bytes.clone(), &without).await.unwrap()).await;
    assert_eq!(
        got,
        (unsigned_header.0, unsigned_header.1.into()),
        "no checksum header"
    );
    if matches!(backend, Backend::Embedded) {
        local_put_links_are_checked(&s, &url, &bytes, &headers).await;
    }
    let (status, _) = json(complete(&acme, &id).await.unwrap()).await;
    assert_eq!(status, 409, "nothing stored by the refused PUTs");

    // The real PUT, then complete: the job has the upload's id; completing again is the same job.
    let res = put(bytes.clone(), &headers).await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let (status, job) = json(complete(&acme, &id).await.unwrap()).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(
        (job["id"].as_str(), job["state"].as_str()),
        (Some(id.as_str()), Some("queued"))
    );
    assert_eq!(job["tenant"], "acme");
    let (status, again) = json(complete(&acme, &id).await.unwrap()).await;
    assert_eq!((status, again["id"].as_str()), (202, Some(id.as_str())));
    let out = s.cli(&["supervise", "--until-idle", "-c", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, done) = s.get(&format!("/v1/jobs/{id}"), Some(&acme)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let clean = client
        .get(format!("{}/v1/jobs/{id}/output", s.base))
        .header("authorization", format!("Bearer {acme}"))
        .send()
        .await
        .unwrap();
    assert_eq!(clean.status(), 200);
    assert!(clean.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("Q4 leads.clean.csv"));
    assert_eq!(
        Some(String::from_utf8_lossy(&clean.bytes().await.unwrap()).into_owned()),
        crate::common::process(&file, &[]).output()
    );

    // An upload never completed: its object is an orphan, and the sweep deletes it once the
    // orphan grace has passed; the completed upload's object (the job's input) stays.
    let (_, left) = json(ask(&acme, bytes.len() as u64).await.unwrap()).await;
    let left_url = left["url"].as_str().unwrap().to_string();
    let mut req = client.put(&left_url).body(bytes.clone());
    for (k, v) in left["headers"].as_object().unwrap() {
        if k != "content-length" {
            req = req.header(k, v.as_str().unwrap());
        }
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    let store = s.store().await;
    let objects: std::sync::Arc<dyn airlock::storage::ObjectStore> = match backend {
        Backend::Embedded => {
            let root =
                s.d.vars
                    .iter()
                    .find(|(k, _)| k == "AIRLOCK_STORAGE_URL")
                    .unwrap()
                    .1
                    .clone();
            std::sync::Arc::new(
                airlock::storage::fs::FsStore::open(
                    std::path::Path::new(root.strip_prefix("file://").unwrap()),
                    &s.base,
                )
                .unwrap(),
            )
        }
        Backend::Production => {
            let env = crate::storage::s3_env();
            std::sync::Arc::new(airlock::storage::s3::S3Store::explicit(
                airlock::storage::s3::Explicit {
                    endpoint: &env.endpoint,
                    region: "us-east-1",
                    access_key: &env.access_key,
                    secret_key: env.secret_key.clone().into(),
                },
                s.d.bucket.as_ref().unwrap(),
            ))
        }
    };
    let left_upload = store
        .upload(uuid::Uuid::parse_str(left["id"].as_str().unwrap()).unwrap())
        .await
        .unwrap()
        .unwrap();
    let left_key = airlock::storage::ObjectKey::parse(&left_upload.object_key).unwrap();
    let done_input = airlock::storage::ObjectKey::parse(
        &store
            .upload(uuid::Uuid::parse_str(&id).unwrap())
            .await
            .unwrap()
            .unwrap()
            .object_key,
    )
    .unwrap();
    assert!(objects.head(&left_key).await.unwrap().is_some());
    use airlock::jobs::JobStore;
    let now = store.now().await.unwrap();
    let policies = airlock::policy::Policies::load(None).unwrap();
    let sweeper =
        airlock::sweeper::Sweeper::new(store.clone(), objects.clone(), policies.retention.clone());
    let soon = sweeper
        .sweep(airlock::jobs::Clock::Fixed(now + 3_600_000), false)
        .await
        .unwrap();
    assert_eq!(soon.orphans_deleted, 0, "{soon:?}");
    let later = sweeper
        .sweep(
            airlock::jobs::Clock::Fixed(
                now + policies.retention.orphan_grace.as_millis() as i64 + 3_600_000,
            ),
            false,
        )
        .await
        .unwrap();
    assert_eq!(later.orphans_deleted, 1, "{later:?}");
    assert!(objects.head(&left_key).await.unwrap().is_none());
    assert!(objects.head(&done_input).await.unwrap().is_some());
}

/// Behind a TLS terminator (an https public URL), every response carries HSTS.
#[tokio::test(flavor = "multi_thread")]
async fn hsts_when_clients_arrive_over_tls() {
    let s = Server::start_with(&[
        "--supervise",
        "0",
        "--public-url",
        "https://airlock.example",
    ])
    .await;
    for path in ["/healthz", "/v1/jobs", "/nowhere"] {
        let (_, headers, _) = s.get(path, None).await;
        assert_eq!(
            headers["strict-transport-security"], "max-age=31536000; includeSubDomains",
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_hides_other_tenants() {
    isolation_matrix(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_hides_other_tenants_on_postgres_and_s3() {
    isolation_matrix(Backend::Production).await;
}

/// The cross-tenant matrix: tenant B's key on every route that names an id, against tenant A's
/// ids (a finished job, a queued job, an upload) and against random ids: the same status and
/// body, and timings within the same range. A revoked key, a malformed key, no key, and a key
/// in the query string get one 401 on every route. B's listings and receipts never show A's.
async fn isolation_matrix(backend: Backend) {
    use sha2::Digest;
    let s = Server::on(
        backend,
        &[
            "--supervise",
            "0",
            "--rate-per-key",
            "0",
            "--rate-per-ip",
            "0",
        ],
    )
    .await;
    s.ok(&["tenant", "create", "acme"]);
    s.ok(&["tenant", "create", "globex"]);
    let (a_key, _) = s.key("acme");
    let (b_key, _) = s.key("globex");
    let file = fixture("valid/leads.csv");
    let finished = s.ok(&["submit", "--tenant", "acme", file.to_str().unwrap()]);
    let out = s.cli(&["supervise", "--until-idle", "-c", "1"]);
    assert!(out.status.success());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let ticket: Value = client
        .post(format!("{}/v1/uploads", s.base))
        .header("authorization", format!("Bearer {a_key}"))
        .body(
            serde_json::json!({"size": bytes.len(), "sha256": hex::encode(sha2::Sha256::digest(&bytes))})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload = ticket["id"].as_str().unwrap().to_string();
    // A stored schema of A's.
    let schema = fixture("schema/leads.schema.json");
    s.ok(&[
        "schema",
        "put",
        "leads",
        "--tenant",
        "acme",
        schema.to_str().unwrap(),
    ]);
    // A receipt for A.
    let res = client
        .delete(format!("{}/v1/jobs/{finished}", s.base))
        .header("authorization", format!("Bearer {a_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let finished = s.ok(&["submit", "--tenant", "acme", file.to_str().unwrap()]);
    let out = s.cli(&["supervise", "--until-idle", "-c", "1"]);
    assert!(out.status.success());
    // The first queued job ran with it; this one stays queued.
    let queued = s.ok(&["submit", "--tenant", "acme", file.to_str().unwrap()]);

    let send = |method: reqwest::Method, path: String, auth: Option<String>| {
        let mut req = client.request(method, format!("{}{path}", s.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move {
            let started = std::time::Instant::now();
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value =
                serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or(Value::Null);
            (status, without_request_id(body), started.elapsed())
        }
    };
    let routes: Vec<(reqwest::Method, &str)> = vec![
        (reqwest::Method::GET, "/v1/jobs/{id}"),
        (reqwest::Method::GET, "/v1/jobs/{id}/output"),
        (reqwest::Method::GET, "/v1/jobs/{id}/rejects"),
        (reqwest::Method::GET, "/v1/jobs/{id}/report"),
        (reqwest::Method::DELETE, "/v1/jobs/{id}"),
        (reqwest::Method::POST, "/v1/uploads/{id}/complete"),
        (reqwest::Method::GET, "/v1/schemas/{id}"),
        (reqwest::Method::DELETE, "/v1/schemas/{id}"),
    ];
    let b_auth = Some(format!("Bearer {b_key}"));
    let a_auth = Some(format!("Bearer {a_key}"));
    let mut requests = 0;
    let mut timed = 0;
    for (method, template) in &routes {
        let theirs_ids: Vec<&str> = if template.starts_with("/v1/uploads") {
            vec![&upload]
        } else if template.starts_with("/v1/schemas") {
            vec!["leads"]
        } else {
            vec![&finished, &queued]
        };
        for theirs in theirs_ids {
            let mut slower = 0;
            let mut diffs = Vec::new();
            for i in 0..TIMING_PAIRS {
                // The owner reads its job first, so a row the hot cache holds (PostgreSQL)
                // is there when B asks: a cache that ignored the tenant would answer B.
                if template.starts_with("/v1/jobs") {
                    let (status, _, _) = send(
                        reqwest::Method::GET,
                        format!("/v1/jobs/{theirs}"),
                        a_auth.clone(),
                    )
                    .await;
                    assert_eq!(status, 200, "A reads its own job {theirs}");
                    requests += 1;
                }
                let random = uuid::Uuid::new_v4().to_string();
                let probe_random = send(
                    method.clone(),
                    template.replace("{id}", &random),
                    b_auth.clone(),
                );
                let probe_theirs = send(
                    method.clone(),
                    template.replace("{id}", theirs),
                    b_auth.clone(),
                );
                // Interleaved, in alternating order, so drift and load fall on both alike.
                let ((rs, rb, rt), (ts, tb, tt)) = if i % 2 == 0 {
                    let r = probe_random.await;
                    (r, probe_theirs.await)
                } else {
                    let t = probe_theirs.await;
                    (probe_random.await, t)
                };
                assert_eq!(rs, 404, "{method} {template}");
                assert_eq!((ts, &tb), (rs, &rb), "{method} {template} on A's {theirs}");
                slower += usize::from(tt > rt);
                diffs.push(tt.as_secs_f64() - rt.as_secs_f64());
                requests += 2;
            }
            diffs.sort_by(f64::total_cmp);
            eprintln!(
                "isolation timing {method} {template}: A's id slower in {slower} of {TIMING_PAIRS} pairs, median difference {:+.3} ms",
                diffs[diffs.len() / 2] * 1000.0
            );
            // A sign test on the pairs: with the same lookup cost, A's id is the slower of a
            // pair about half the time, whatever the load (outside the bounds by chance:
            // p < 3e-5 per route and id). A real difference larger than the noise (a branch
            // that does more work for an existing id) makes nearly every pair one-sided. The
            // median difference must also pass a floor, so the microseconds an index hit
            // costs over a miss do not count as a difference.
            let median_diff = diffs[diffs.len() / 2];
            assert!(
                TIMING_SIGN_BOUNDS.contains(&slower) || median_diff.abs() < TIMING_FLOOR_S,
                "{method} {template}: A's id was the slower in {slower} of {TIMING_PAIRS} pairs \
                 (median difference {:+.3} ms): its lookup costs differ from a random id's",
                median_diff * 1000.0
            );
            timed += 1;
        }
    }
    assert_eq!(timed, 13, "route and id pairs timed");
    // A's jobs are untouched by all of that.
    let (_, _, job) = s.get(&format!("/v1/jobs/{queued}"), Some(&a_key)).await;
    assert_eq!(job["state"], "queued");
    let (_, _, job) = s.get(&format!("/v1/jobs/{finished}"), Some(&a_key)).await;
    assert_eq!(job["state"], "succeeded");
    let (status, _, stored) = s.get("/v1/schemas/leads", Some(&a_key)).await;
    assert_eq!((status, &stored["id"]), (200, &"leads".into()), "{stored}");

    // Listings and receipts: B sees none of A's.
    let (_, _, list) = s.get("/v1/jobs", Some(&b_key)).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");
    let (_, _, receipts) = s.get("/v1/receipts", Some(&b_key)).await;
    assert_eq!(
        receipts["receipts"].as_array().unwrap().len(),
        0,
        "{receipts}"
    );
    let (_, _, receipts) = s.get("/v1/receipts", Some(&a_key)).await;
    assert_eq!(
        receipts["receipts"].as_array().unwrap().len(),
        1,
        "{receipts}"
    );
    requests += 4;

    // Every route, every way of not holding a valid key: one 401.
    let revoked = {
        let (k, id) = s.key("acme");
        s.ok(&["key", "revoke", &id]);
        k
    };
    let (_, unauth, _) = send(reqwest::Method::GET, "/v1/jobs".into(), None).await;
    assert_eq!(unauth["error"]["code"], "unauthenticated");
    let mut all_routes: Vec<(reqwest::Method, String)> = routes
        .iter()
        .map(|(m, t)| {
            let id = if t.starts_with("/v1/uploads") {
                &upload
            } else if t.starts_with("/v1/schemas") {
                "leads"
            } else {
                &queued
            };
            (m.clone(), t.replace("{id}", id))
        })
        .collect();
    all_routes.extend([
        (reqwest::Method::GET, "/v1/jobs".to_string()),
        (reqwest::Method::POST, "/v1/jobs".to_string()),
        (reqwest::Method::GET, "/v1/receipts".to_string()),
        (reqwest::Method::POST, "/v1/uploads".to_string()),
        (reqwest::Method::GET, "/v1/schemas".to_string()),
        (reqwest::Method::PUT, "/v1/schemas/leads".to_string()),
    ]);
    for (method, path) in &all_routes {
        for (what, path, auth) in [
            ("no key", path.clone(), None),
            ("revoked", path.clone(), Some(format!("Bearer {revoked}"))),
            (
                "malformed",
                path.clone(),
                Some("Bearer al_live_nope".to_string()),
            ),
            ("query", format!("{path}?api_key={a_key}"), None),
            (
                "query beside a valid header",
                format!("{path}?token={a_key}"),
                Some(format!("Bearer {a_key}")),
            ),
        ] {
            let (status, body, _) = send(method.clone(), path.clone(), auth).await;
            assert_eq!((status, &body), (401, &unauth), "{what}: {method} {path}");
            requests += 1;
        }
    }
    eprintln!(
        "isolation matrix: {requests} requests over {} routes",
        all_routes.len()
    );
    // The matrix's size: 13 route and id pairs timed (10 of them on job routes, each pair
    // preceded by the owner's read), the listings, and 5 ways without a valid key on 14 routes.
    assert_eq!(all_routes.len(), 14);
    assert_eq!(
        requests,
        10 * TIMING_PAIRS * 3 + 3 * TIMING_PAIRS * 2 + 4 + 14 * 5
    );
}

/// Pairs (A's id, a random id) timed per route and id in the isolation matrix.
const TIMING_PAIRS: usize = 41;
/// How many of [`TIMING_PAIRS`] may have A's id the slower, for lookups of the same cost.
const TIMING_SIGN_BOUNDS: std::ops::RangeInclusive<usize> = 8..=33;
/// The paired difference below which A's id and a random one count as the same cost (0.25 ms;
/// a database round trip on loopback costs more).
const TIMING_FLOOR_S: f64 = 0.000_25;

/// A body above the multipart threshold goes to S3 part by part while it arrives: stored whole
/// and exact. One that stops short stores nothing (its parts are aborted) and queues nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_post_is_stored_in_parts_as_it_arrives() {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let s = Server::on(Backend::Production, &["--supervise", "0"]).await;
    s.ok(&["tenant", "create", "acme"]);
    let (key, _) = s.key("acme");
    let line = b"a@acme.example,Ana,Garcia,Acme,CTO,+34 600 000 000,ES,lorem ipsum dolor\n";
    let mut body = b"email,first,last,company,title,phone,country,notes\n".to_vec();
    while body.len() < 70 << 20 {
        body.extend_from_slice(line);
    }
    let res = reqwest::Client::new()
        .post(format!("{}/v1/jobs", s.base))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "text/csv")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let env = crate::storage::s3_env();
    let store = airlock::storage::s3::S3Store::explicit(
        airlock::storage::s3::Explicit {
            endpoint: &env.endpoint,
            region: "us-east-1",
            access_key: &env.access_key,
            secret_key: env.secret_key.clone().into(),
        },
        s.d.bucket.as_ref().unwrap(),
    );
    use airlock::storage::ObjectStore;
    let listed = store.list("in/", None).await.unwrap().objects;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let stored = store
        .digest(
            &airlock::storage::ObjectKey::parse(&listed[0].key).unwrap(),
            u64::MAX,
        )
        .await
        .unwrap()
        .unwrap();
    use base64::Engine;
    assert_eq!(stored.size, body.len() as u64);
    assert_eq!(
        stored.sha256_b64,
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body))
    );

    // Cut short after 40 MiB.
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..40 << 20]).await.unwrap();
    // The parts already on disk are going up before the body has ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s3_client_uploads(s.d.bucket.as_ref().unwrap()).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no multipart upload while the body arrives"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(conn);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let uploads = s3_client_uploads(s.d.bucket.as_ref().unwrap()).await;
        if uploads == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{uploads} multipart uploads left open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(store.list("in/", None).await.unwrap().objects.len(), 1);
    let (_, _, list) = s.get("/v1/jobs", Some(&key)).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
}

/// Multipart uploads still open in `bucket`.
async fn s3_client_uploads(bucket: &str) -> usize {
    crate::storage::s3_client()
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
        .len()
}

/// With `serve`'s key and job cache (PostgreSQL): a key in use, and so cached, is refused on
/// the very next request once `airlock key revoke` has returned; a job another process changes
/// shows its new state within the cache's 100 ms; another tenant's job costs the same database
/// read as a random id (see `every_route_hides_other_tenants_on_postgres_and_s3`).
#[tokio::test(flavor = "multi_thread")]
async fn the_cache_never_outlives_a_revocation() {
    let s = Server::on(Backend::Production, &["--supervise", "0"]).await;
    s.ok(&["tenant", "create", "acme"]);
    let (key, key_id) = s.key("acme");
    let file = fixture("valid/leads.csv");
    let id = s.ok(&["submit", "--tenant", "acme", file.to_str().unwrap()]);
    // Warm: many reads, the key and the job are cached.
    for _ in 0..50 {
        let (status, _, job) = s.get(&format!("/v1/jobs/{id}"), Some(&key)).await;
        assert_eq!((status, job["state"].as_str()), (200, Some("queued")));
    }
    let hits = cache_hits(&s).await;
    assert!(hits >= 40, "the reads came from the cache: {hits} hits");
    // Another process runs the job; the next read after 100 ms shows it.
    let out = s.cli(&["supervise", "--until-idle", "-c", "1"]);
    assert!(out.status.success());
    // Every cached copy was read before `ran`: a request sent 100 ms after it or later must not
    // be answered from the cache (load can only delay an answer, never make a stale one fresh).
    let ran = std::time::Instant::now();
    loop {
        let sent = ran.elapsed();
        let (_, _, job) = s.get(&format!("/v1/jobs/{id}"), Some(&key)).await;
        if job["state"] == "succeeded" {
            break;
        }
        assert_eq!(job["state"], "queued", "{job}");
        assert!(
            sent < Duration::from_millis(105),
            "a request sent {sent:?} after the job ran got the cached row, older than 100 ms: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Revoked while cached: refused on the next request, every route.
    s.ok(&["key", "revoke", &key_id]);
    for path in [format!("/v1/jobs/{id}"), "/v1/jobs".to_string()] {
        let (status, _, body) = s.get(&path, Some(&key)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthenticated")),
            "{path}"
        );
    }
}

/// The local backend takes one upload per link at a time: a second PUT while the first is still
/// sending is refused (409), so one link cannot open many transfers.
#[tokio::test(flavor = "multi_thread")]
async fn one_local_upload_per_link_at_a_time() {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let s = Server::start().await;
    s.ok(&["tenant", "create", "acme"]);
    let (key, _) = s.key("acme");
    let bytes = std::fs::read(fixture("valid/leads.csv")).unwrap();
    let ticket: Value = reqwest::Client::new()
        .post(format!("{}/v1/uploads", s.base))
        .header("authorization", format!("Bearer {key}"))
        .body(
            serde_json::json!({"size": bytes.len(), "sha256": hex::encode(sha2::Sha256::digest(&bytes))})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = ticket["url"].as_str().unwrap().to_string();
    let b64 = ticket["headers"]["x-amz-checksum-sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let path = url.trim_start_matches(&s.base).to_string();
    let mut slow = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nx-amz-checksum-sha256: {b64}\r\n\r\n",
        bytes.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&bytes[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = reqwest::Client::new()
        .put(&url)
        .header("x-amz-checksum-sha256", &b64)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 409);
    // The first finishes and is stored.
    slow.write_all(&bytes[10..]).await.unwrap();
    let mut reply = vec![0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut slow, &mut reply)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&reply[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply[..n])
    );
}

/// The webhook routes: an endpoint is made with its secret shown once, listed without it,
/// rotated, logged, replayed and removed by its tenant; for any other tenant every route is the
/// 404 of a random id. A server without a key-encryption key cannot make secrets (503).
#[tokio::test(flavor = "multi_thread")]
async fn webhook_endpoints_over_the_api() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(
        &kek,
        base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
    )
    .unwrap();
    let kek_arg = kek.display().to_string();
    let s = Server::start_with(&[
        "--supervise",
        "0",
        "--kek-file",
        &kek_arg,
        "--webhook-allow",
        "127.0.0.1",
    ])
    .await;
    s.ok(&["tenant", "create", "acme"]);
    s.ok(&["tenant", "create", "globex"]);
    let (acme, _) = s.key("acme");
    let (globex, _) = s.key("globex");
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, key: String, body: Option<Value>| {
        let mut req = client
            .request(method, format!("{}{path}", s.base))
            .header("authorization", format!("Bearer {key}"));
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let v: Value =
                serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or(Value::Null);
            (status, v)
        }
    };
    use reqwest::Method;
    let (status, v) = call(
        Method::POST,
        "/v1/webhooks".into(),
        acme.clone(),
        Some(serde_json::json!({"url": "http://hooks.example/x"})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "https only: {v}"
    );
    let (status, made) = call(Method::POST, "/v1/webhooks".into(), acme.clone(),
        Some(serde_json::json!({"url": "http://127.0.0.1:9/x", "events": ["job.succeeded", "job.failed"]}))).await;
    assert_eq!(status, 201, "{made}");
    assert!(made["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(
        made["events"],
        serde_json::json!(["job.succeeded", "job.failed"])
    );
    let id = made["id"].as_str().unwrap().to_string();
    let (_, list) = call(Method::GET, "/v1/webhooks".into(), acme.clone(), None).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains("whsec_"));
    let (_, theirs) = call(Method::GET, "/v1/webhooks".into(), globex.clone(), None).await;
    assert_eq!(theirs["webhooks"].as_array().unwrap().len(), 0);

    // Another tenant: every route is a random id's 404.
    let random = uuid::Uuid::new_v4().to_string();
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::DELETE, ""),
        (Method::POST, "/rotate"),
        (Method::GET, "/deliveries"),
        (Method::POST, "/replay?since=0"),
    ] {
        let (a, va) = call(
            method.clone(),
            format!("/v1/webhooks/{id}{suffix}"),
            globex.clone(),
            None,
        )
        .await;
        let (b, vb) = call(
            method.clone(),
            format!("/v1/webhooks/{random}{suffix}"),
            globex.clone(),
            None,
        )
        .await;
        assert_eq!(
            (a, without_request_id(va)),
            (b, without_request_id(vb)),
            "{method} {suffix}"
        );
        assert_eq!(a, 404);
    }

    // The owner: rotate, log, replay, remove.
    let (status, rotated) = call(
        Method::POST,
        format!("/v1/webhooks/{id}/rotate"),
        acme.clone(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["secret"], made["secret"]);
    assert!(rotated["previous_secret_until_ms"].is_i64());
    let (status, log) = call(
        Method::GET,
        format!("/v1/webhooks/{id}/deliveries"),
        acme.clone(),
        None,
    )
    .await;
    assert_eq!(
        (status, log["attempts"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, replayed) = call(
        Method::POST,
        format!("/v1/webhooks/{id}/replay?since=0"),
        acme.clone(),
        None,
    )
    .await;
    assert_eq!((status, replayed["queued"].as_u64()), (202, Some(0)));
    let (status, _) = call(
        Method::DELETE,
        format!("/v1/webhooks/{id}"),
        acme.clone(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, list) = call(Method::GET, "/v1/webhooks".into(), acme.clone(), None).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 0);
    drop(s);

    // No key-encryption key: no secrets can be made.
    let s = Server::start().await;
    s.ok(&["tenant", "create", "acme"]);
    let (acme, _) = s.key("acme");
    let res = reqwest::Client::new()
        .post(format!("{}/v1/webhooks", s.base))
        .header("authorization", format!("Bearer {acme}"))
        .body(r#"{"url": "https://hooks.example/x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
}

/// A raw HTTP/1.1 request to `base` whose body is not (yet) sent in full: the stream, for the
/// test to trickle or hold.
async fn raw_request(base: &str, head: &str, body_start: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stream.write_all(body_start).await.unwrap();
    stream
}

/// The status line's code and the JSON body of a response read to its end from `stream`.
async fn raw_response(stream: &mut tokio::net::TcpStream) -> (u16, Value) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(90), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // A chunked body: the JSON is between the first chunk size line and its end.
    let json = body
        .find('{')
        .and_then(|i| body.rfind('}').map(|j| &body[i..=j]))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// `POST /v1/jobs` holds at most 8 uploads in progress per tenant: a ninth from the same
/// tenant gets 429 `too_many_uploads` while another tenant's upload still goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_holds_at_most_eight_uploads_at_once() {
    let s = Server::start().await;
    s.ok(&["tenant", "create", "acme"]);
    s.ok(&["tenant", "create", "globex"]);
    let (acme, _) = s.key("acme");
    let (globex, _) = s.key("globex");
    let head = |key: &str| {
        format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: airlock\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: text/csv\r\nContent-Length: 100000"
        )
    };
    // Eight uploads that have sent their headers and a first line, and then wait.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(raw_request(&s.base, &head(&acme), b"id,name\n").await);
    }
    let post = |key: String| {
        reqwest::Client::new()
            .post(format!("{}/v1/jobs", s.base))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "text/csv")
            .body("id,name\n1,a\n")
            .send()
    };
    // A held upload sends a byte now and then, so the 30 s idle limit never ends it here.
    let mut trickled = std::time::Instant::now();
    let mut trickle = |held: &mut Vec<tokio::net::TcpStream>| {
        if trickled.elapsed() >= Duration::from_secs(3) {
            for stream in held.iter() {
                let _ = stream.try_write(b"x");
            }
            trickled = std::time::Instant::now();
        }
    };
    // The held uploads take their slots as the server reads their headers; until all eight
    // have, a ninth may still pass. Wait for the refusal itself (bounded, generously: a loaded
    // machine may take seconds to read eight requests' headers).
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut replaced = Vec::new();
    let refused = loop {
        trickle(&mut held);
        // A held upload answered by a transient failure (a 503 from a busy database on a
        // loaded machine) holds no slot: note it and hold another. One refused for too many
        // uploads means the cap is below eight.
        for slot in held.iter_mut() {
            let mut buf = [0u8; 512];
            if let Ok(n) = slot.try_read(&mut buf) {
                let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(
                    !answer.contains("too_many_uploads"),
                    "one of the first eight uploads was refused: {answer}"
                );
                replaced.push(answer);
                *slot = raw_request(&s.base, &head(&acme), b"id,name\n").await;
            }
        }
        let res = post(acme.clone()).await.unwrap();
        let status = res.status().as_u16();
        let retry = res.headers().get("retry-after").cloned();
        let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or(Value::Null);
        if status == 429 {
            break (v, retry);
        }
        assert_eq!(status, 202, "{v}");
        seen.push(status);
        if std::time::Instant::now() >= deadline {
            // What the held uploads were told, if anything: the reason they hold no slot.
            let answers: Vec<String> = held
                .iter()
                .map(|stream| {
                    let mut buf = [0u8; 512];
                    match stream.try_read(&mut buf) {
                        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                        Err(e) => e.to_string(),
                    }
                })
                .collect();
            panic!(
                "a ninth upload was never refused while eight were held: {} accepted; the held ones got {answers:#?}; replaced: {replaced:#?}",
                seen.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        refused.0["error"]["code"], "too_many_uploads",
        "{}",
        refused.0
    );
    assert!(refused.1.is_some(), "a 429 says when to retry");
    // All eight held uploads were admitted: none has been answered (a lower cap would have
    // refused some of them at once).
    for (i, stream) in held.iter().enumerate() {
        let mut buf = [0u8; 64];
        match stream.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!(
                "held upload {i} was answered: {other:?} {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    // Another tenant is on its own share.
    let res = post(globex.clone()).await.unwrap();
    assert_eq!(res.status(), 202);
    // Releasing one held upload frees its slot.
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        trickle(&mut held);
        if post(acme.clone()).await.unwrap().status() == 202 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped upload's slot was never given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An upload whose body stops arriving is answered 408 `body_timeout` after 30 s of silence,
/// and one without `Content-Length` (chunked) 411 `length_required`.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_and_unsized_upload_bodies_are_refused() {
    let s = Server::start().await;
    s.ok(&["tenant", "create", "acme"]);
    let (acme, _) = s.key("acme");
    let mut chunked = raw_request(
        &s.base,
        &format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: airlock\r\nAuthorization: Bearer {acme}\r\n\
             Content-Type: text/csv\r\nTransfer-Encoding: chunked\r\nConnection: close"
        ),
        b"8\r\nid,name\n\r\n0\r\n\r\n",
    )
    .await;
    let (status, v) = raw_response(&mut chunked).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (411, Some("length_required")),
        "{v}"
    );

    let started = std::time::Instant::now();
    let mut stalled = raw_request(
        &s.base,
        &format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: airlock\r\nAuthorization: Bearer {acme}\r\n\
             Content-Type: text/csv\r\nContent-Length: 1000\r\nConnection: close"
        ),
        b"id,name\n1,a\n",
    )
    .await;
    let (status, v) = raw_response(&mut stalled).await;
    let waited = started.elapsed();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (408, Some("body_timeout")),
        "{v}"
    );
    // The idle limit is 30 s: not cut short, and not left to hang.
    assert!(
        waited >= Duration::from_secs(29) && waited < Duration::from_secs(80),
        "{waited:?}"
    );
    // Nothing was kept of it.
    let (_, _, jobs) = s.get("/v1/jobs", Some(&acme)).await;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "{jobs}");
}

/// The per-IP budget (1/s, bursts of 2) over IPv6 covers a client's whole /64: in a private
/// network namespace
/// whose loopback carries `::1` and three more addresses, a second address in the spent /64 is
/// refused at once, while an address in another /64 and `::1` have budgets of their own.
#[tokio::test(flavor = "multi_thread")]
async fn ipv6_clients_share_a_budget_per_64() {
    const CLIENT: &str = r#"
import http.client, json, sys, time
port = int(sys.argv[1])
for _ in range(600):
    try:
        c = http.client.HTTPConnection("::1", port, timeout=2); c.request("GET", "/healthz")
        if c.getresponse().status == 200: break
    except OSError: pass
    time.sleep(0.05)
def get(src):
    dst = "::1" if src == "::1" else "2001:db8:1:1::1"
    c = http.client.HTTPConnection(dst, port, source_address=(src, 0), timeout=10)
    c.request("GET", "/v1/jobs"); return c.getresponse().status
# Spend the first address's budget, then ask from its neighbour, another /64 and ::1.
out = {"first": [get("2001:db8:1:1::1") for _ in range(10)]}
out["same_64"] = get("2001:db8:1:1::2")
out["other_64"] = get("2001:db8:1:2::1")
out["loopback"] = get("::1")
print(json.dumps(out))
"#;
    let d = crate::service::Deployment::embedded();
    let port = crate::common::free_port();
    let setup = "ip link set lo up && \
                 ip -6 addr add 2001:db8:1:1::1/64 dev lo nodad && \
                 ip -6 addr add 2001:db8:1:1::2/64 dev lo nodad && \
                 ip -6 addr add 2001:db8:1:2::1/64 dev lo nodad && \
                 \"$0\" serve --supervise 0 --rate-per-key 0 --rate-per-ip 1 > /dev/null 2>&1 & \
                 python3 -c \"$1\" \"$2\"";
    let base = d.cmd();
    let out = std::process::Command::new("unshare")
        // A pid namespace too: when the shell (its pid 1) ends, so does the server.
        .args([
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "sh",
            "-c",
            setup,
        ])
        .arg(env!("CARGO_BIN_EXE_airlock"))
        .arg(CLIENT)
        .arg(port.to_string())
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("AIRLOCK_LISTEN", format!("[::]:{port}"))
        .env("AIRLOCK_PUBLIC_URL", format!("http://[::1]:{port}"))
        .current_dir(d.dir.path())
        .output()
        .expect("unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let first: Vec<u64> = v["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert!(first[..2].iter().all(|&s| s == 401), "{v}");
    assert!(
        first.contains(&429),
        "10 requests at once passed a 1/s budget: {v}"
    );
    assert_eq!(
        v["same_64"], 429,
        "a neighbour in the spent /64 has its own budget: {v}"
    );
    assert_eq!(v["other_64"], 401, "another /64 was refused: {v}");
    assert_eq!(v["loopback"], 401, "::1 was refused: {v}");
}

/// `airlock_cache_hits_total` from `serve`'s metrics.
async fn cache_hits(s: &Server) -> u64 {
    let metrics = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("airlock_cache_hits_total "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap()
}

/// The hot cache answers only while this server's heartbeat comes back through LISTEN: with the
/// heartbeat's database session frozen (SIGSTOP on its PostgreSQL backend, found by its
/// application name) and the listener still connected (the same session throughout, kept busy
/// by heartbeats of another instance), the cache stops answering within its freshness bound,
/// and every request after that authenticates against the database.
#[tokio::test(flavor = "multi_thread")]
async fn the_cache_answers_only_while_its_heartbeat_returns() {
    let s = Server::on(Backend::Production, &["--supervise", "0"]).await;
    s.ok(&["tenant", "create", "acme"]);
    let (key, _) = s.key("acme");
    // Control: once the first heartbeat is back, reads are answered from the cache.
    let started = std::time::Instant::now();
    loop {
        let hits = cache_hits(&s).await;
        assert_eq!(s.get("/v1/jobs", Some(&key)).await.0, 200);
        if cache_hits(&s).await > hits {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cache never answered"
        );
    }
    let before = cache_hits(&s).await;
    for _ in 0..30 {
        assert_eq!(s.get("/v1/jobs", Some(&key)).await.0, 200);
    }
    let warm = cache_hits(&s).await - before;
    assert!(warm >= 20, "the cache answered only {warm} of 30 reads");

    // The PostgreSQL sessions of this server's heartbeat and listener, on this machine.
    let store = s.store().await;
    let url = crate::jobs::pg_url();
    assert!(
        url.contains("@127.0.0.1") || url.contains("@localhost"),
        "the test freezes a local backend: {url}"
    );
    // As the database's superuser: the service role may not see other sessions' state.
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let session = |name: String| {
        let pool = admin.clone();
        async move {
            let row: (i32, String, String) = sqlx::query_as(
                "SELECT pid, COALESCE(state, ''), backend_start::text FROM pg_stat_activity \
                 WHERE application_name = $1",
            )
            .bind(&name)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("no session named {name:?}: {e}"));
            row
        }
    };
    let listener = session(format!("airlock cache listener {}", s.pid())).await;
    // Other heartbeats on the channel keep the listener from going silent (it reconnects after
    // 2 s without any notification): only this server's freshness can turn the cache off.
    let noise = {
        let pool = store.pool().clone();
        tokio::spawn(async move {
            loop {
                let _ = sqlx::query("SELECT pg_notify('airlock_hb', 'another-instance:0')")
                    .execute(&pool)
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    struct Abort(tokio::task::AbortHandle);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _noise = Abort(noise.abort_handle());
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let pid = rustix::process::Pid::from_raw(self.0).expect("a pid");
            rustix::process::kill_process(pid, rustix::process::Signal::CONT)
                .expect("the frozen backend resumes");
        }
    }
    // Freeze the heartbeat's backend while it is idle (never inside a NOTIFY's commit, which
    // holds a lock every NOTIFY in the cluster waits for).
    let heartbeat = format!("airlock cache heartbeat {}", s.pid());
    let mut tries = 0;
    let (backend, _resume) = loop {
        let (pid, _, _) = session(heartbeat.clone()).await;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "postgres",
            "pid {pid} is not a PostgreSQL backend"
        );
        let raw = rustix::process::Pid::from_raw(pid).expect("a pid");
        rustix::process::kill_process(raw, rustix::process::Signal::STOP).unwrap();
        let resume = Resume(pid);
        let (_, state, _) = session(heartbeat.clone()).await;
        if state == "idle" {
            break (pid, resume);
        }
        drop(resume);
        tries += 1;
        assert!(
            tries < 50,
            "the heartbeat's session was never idle: {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let frozen = std::time::Instant::now();
    // The cache stops answering (three reads in a row with no hit) within 2.5 s: the 500 ms
    // freshness bound, and time to notice it on a loaded machine.
    let mut misses = 0;
    while misses < 3 {
        let hits = cache_hits(&s).await;
        assert_eq!(s.get("/v1/jobs", Some(&key)).await.0, 200);
        if cache_hits(&s).await == hits {
            misses += 1;
        } else {
            misses = 0;
        }
        assert!(
            frozen.elapsed() < Duration::from_millis(2500),
            "the cache kept answering {:?} after its heartbeat stopped (backend {backend})",
            frozen.elapsed()
        );
    }
    // From then on, every read goes to the database.
    let stale = cache_hits(&s).await;
    for _ in 0..30 {
        assert_eq!(s.get("/v1/jobs", Some(&key)).await.0, 200);
    }
    assert_eq!(
        cache_hits(&s).await,
        stale,
        "the cache answered with its heartbeat {:?} old",
        frozen.elapsed()
    );
    // The listener was the same session throughout: no reconnection emptied the cache.
    let (pid, _, since) = session(format!("airlock cache listener {}", s.pid())).await;
    assert_eq!((pid, since), (listener.0, listener.2));
}

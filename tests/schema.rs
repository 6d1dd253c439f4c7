//! Table Schemas through the real sandboxed worker: the verdict, the rejects and the report's
//! schema section; bad schemas as usage errors; a pattern that would stall a backtracking engine;
//! unique keys over many rows, and the key budget, all under the full lockdown.

use std::io::Write;

use serde_json::json;

use crate::common::{airlock, fixture, process, write_temp};

fn schema_file(dir: &std::path::Path, schema: serde_json::Value) -> String {
    write_temp(dir, "schema.json", schema.to_string().as_bytes())
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_lead_list_is_checked_against_its_schema_in_the_sandbox() {
    let schema = fixture("schema/leads.schema.json");
    let p = process(
        &fixture("schema/leads.csv"),
        &["--schema", schema.to_str().unwrap()],
    );
    assert_eq!(p.status(), "accepted", "{}", p.report);
    assert_eq!(
        p.report["rows"],
        json!({"total": 20, "accepted": 18, "rejected": 2, "blank": 0})
    );
    let issues: Vec<(String, u64, String)> = p.report["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["code"].as_str().unwrap().to_string(),
                i["row"].as_u64().unwrap(),
                i["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        issues,
        [
            ("type_error".to_string(), 10, "email".to_string()),
            ("unique_error".to_string(), 13, "email".to_string())
        ]
    );
    // Aliases and case-insensitive labels map the header; the clean CSV names the fields.
    let mapping = &p.report["schema"]["header_mapping"];
    assert_eq!(mapping["E-mail"], "email");
    assert_eq!(mapping["First Name"], "first_name");
    let output = p.output().unwrap();
    assert!(
        output.starts_with("email,first_name,last_name,company,title,phone,country,employees\n")
    );
    assert_eq!(output.lines().count(), 19);
    let rejects = p.rejects().unwrap();
    assert!(rejects.contains("10,10,type_error,"), "{rejects}");
    assert!(rejects.contains("13,13,unique_error,"), "{rejects}");
    assert_eq!(p.report["schema"]["fields"][0]["errors"], 2);
    assert_eq!(p.report["sandbox"]["enforced"].as_array().unwrap().len(), 7);
}

#[test]
fn a_bad_schema_is_a_usage_error_that_points_at_the_bad_part() {
    let dir = tempfile::tempdir().unwrap();
    for (schema, pointer) in [
        (
            json!({"fields": [{"name": "a", "type": "integr"}]}),
            "/fields/0/type",
        ),
        (
            json!({"fields": [{"name": "a", "constraints": {"pattern": "(unclosed"}}]}),
            "/fields/0/constraints/pattern",
        ),
        (
            json!({"fields": [{"name": "a"}], "primaryKey": ["b"]}),
            "/primaryKey/0",
        ),
        (
            json!({"fields": [{"name": "a", "type": "integer", "constraints": {"enum": ["x"]}}]}),
            "/fields/0/constraints/enum/0",
        ),
        (
            json!({"fields": [{"name": "a", "colour": "red"}]}),
            "/fields/0/colour",
        ),
        (json!({"fields": []}), "/fields"),
    ] {
        let path = schema_file(dir.path(), schema);
        let out = airlock()
            .args([
                "process",
                fixture("valid/leads.csv").to_str().unwrap(),
                "--schema",
                &path,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("at {pointer}:")),
            "{pointer}: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "no report for a job that never started"
        );
    }
}

#[test]
fn a_header_that_does_not_fit_is_a_schema_mismatch_naming_the_columns() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_file(
        dir.path(),
        json!({"fields": [
            {"name": "email", "constraints": {"required": true}},
            {"name": "name"}
        ], "fieldsMatch": "subset"}),
    );
    let input = write_temp(dir.path(), "in.csv", b"name,phone\nAna,1\n");
    let p = process(&input, &["--schema", &schema]);
    assert_eq!(p.rejection_code(), Some("schema_mismatch"), "{}", p.report);
    let message = p.report["rejection"]["message"].as_str().unwrap();
    assert!(message.contains("missing column(s) \"email\""), "{message}");
    assert!(p.output().is_none());
}

#[test]
fn a_pattern_that_would_stall_a_backtracking_engine_runs_in_linear_time() {
    // (a|aa)*c against a long run of 'a' takes exponential time by backtracking; the worker's
    // CPU limit (10 s in this plan) would end it as cpu_limit. The linear-time engine decides.
    let dir = crate::common::tiny_policy_dir();
    let limits = std::fs::read_to_string(dir.path().join("limits.toml"))
        .unwrap()
        .replace("max_bytes = 4096", "max_bytes = 1048576")
        .replace("max_field_bytes = 16", "max_field_bytes = 65536")
        .replace("max_record_bytes = 40", "max_record_bytes = 131072");
    std::fs::write(dir.path().join("limits.toml"), limits).unwrap();
    let schema = schema_file(
        dir.path(),
        json!({"fields": [{"name": "id"}, {"name": "v", "constraints": {"pattern": "(a|aa)*c"}}]}),
    );
    let mut csv = b"id,v\n1,".to_vec();
    csv.extend(std::iter::repeat_n(b'a', 60_000));
    csv.extend_from_slice(b"\n2,aac\n3,aaac\n4,aaac\n5,aac\n");
    let input = write_temp(dir.path(), "in.csv", &csv);
    let policy = dir.path().to_str().unwrap().to_string();
    let p = process(&input, &["--schema", &schema, "--policy-dir", &policy]);
    // One of five rows broke the pattern: over the plan's 10%, so the file is rejected, but by
    // the engine's verdict, not by a limit.
    assert_eq!(
        p.rejection_code(),
        Some("too_many_bad_rows"),
        "{}",
        p.report
    );
    assert_eq!(p.report["issues"][0]["code"], "constraint_error");
    assert_eq!(p.report["issues"][0]["row"], 2);
}

/// Unique keys over many rows, through the real worker: the key table (allocated from the
/// plan's budget) works under the lockdown, and the one repeat is found at its row.
#[test]
fn unique_emails_over_two_hundred_thousand_rows() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_file(
        dir.path(),
        json!({"fields": [
            {"name": "email", "format": "email", "constraints": {"unique": true}},
            {"name": "n", "type": "integer"}
        ], "primaryKey": ["email", "n"]}),
    );
    let path = dir.path().join("in.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(f, "email,n").unwrap();
    for i in 0..200_000 {
        writeln!(f, "user{i}@example.com,{i}").unwrap();
    }
    writeln!(f, "user77@example.com,77").unwrap();
    drop(f);
    let schema_arg = schema.clone();
    let p = process(&path, &["--schema", &schema_arg]);
    assert_eq!(p.status(), "accepted", "{}", p.report);
    assert_eq!(p.report["rows"]["rejected"], 1);
    let issues = p.report["issues"].as_array().unwrap();
    let rows: Vec<(u64, &str)> = issues
        .iter()
        .map(|i| (i["row"].as_u64().unwrap(), i["code"].as_str().unwrap()))
        .collect();
    // The email repeats, and so does the (email, n) primary key.
    assert_eq!(rows, [(200_002, "unique_error"), (200_002, "unique_error")]);
}

/// Rows at the plan's largest record size wait for their keys like any others: the queue's
/// buffers are reserved up front and never grow (growing a large one needs `mremap`, which the
/// allowlist refuses: 40 rows of 960 KiB here once killed the worker with `sandbox_violation`).
#[test]
fn rows_of_the_largest_size_wait_for_their_keys_under_the_lockdown() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_file(
        dir.path(),
        json!({"fields": [{"name": "email", "constraints": {"unique": true}}],
               "fieldsMatch": "partial"}),
    );
    let path = dir.path().join("in.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let header: Vec<String> = (0..15).map(|j| format!("n{j}")).collect();
    writeln!(f, "email,{}", header.join(",")).unwrap();
    // An email and 15 cells of up to 65,536 bytes (the default plan's field limit): 983,039
    // bytes (960 KiB) a row, near the plan's record limit of 1 MiB.
    let cell = "x".repeat(65_536);
    for i in 0..40 {
        let email = format!("u{i}@e.com");
        let last = &cell[..65_536 - email.len() - 16];
        let cells: Vec<&str> = (0..14).map(|_| cell.as_str()).chain([last]).collect();
        writeln!(f, "{email},{}", cells.join(",")).unwrap();
    }
    writeln!(f, "u3@e.com,{}", vec!["y"; 15].join(",")).unwrap();
    drop(f);
    let p = process(&path, &["--schema", &schema]);
    assert_eq!(p.status(), "accepted", "{}", p.report);
    assert_eq!(p.report["rows"]["accepted"], 40);
    assert_eq!(p.report["issues"][0]["code"], "unique_error");
    assert_eq!(p.report["issues"][0]["row"], 42);
}

#[test]
fn past_the_key_budget_the_file_is_rejected_not_killed() {
    let dir = tempfile::tempdir().unwrap();
    let limits = std::fs::read_to_string(fixture("../policies/limits.toml"))
        .unwrap()
        .replacen(
            "schema_key_bytes = 67_108_864",
            "schema_key_bytes = 4_096",
            1,
        );
    std::fs::write(dir.path().join("limits.toml"), limits).unwrap();
    let schema = schema_file(
        dir.path(),
        json!({"fields": [{"name": "id", "type": "integer", "constraints": {"unique": true}}]}),
    );
    let mut csv = String::from("id\n");
    for i in 0..1000 {
        csv.push_str(&format!("{i}\n"));
    }
    let input = write_temp(dir.path(), "in.csv", csv.as_bytes());
    let policy = dir.path().to_str().unwrap().to_string();
    let p = process(&input, &["--schema", &schema, "--policy-dir", &policy]);
    assert_eq!(
        p.rejection_code(),
        Some("key_budget_exceeded"),
        "{}",
        p.report
    );
    // 4,096 bytes hold 256 slots, filled to 7/8: 224 keys.
    assert_eq!(p.report["rejection"]["limit"], 224);
}

/// Stored schemas through the tenant API and the CLI, on `backend`: put (checked, with a JSON
/// pointer for a bad one), list, get, delete, the tenant's default, `?schema=` and `none`,
/// `submit --schema FILE`; jobs keep the copy they took; another tenant sees none of it; every
/// change is in the tenant's audit chain, which still verifies.
async fn stored_schemas_suite(backend: crate::api::Backend) {
    use crate::api::Server;
    let s = Server::on(backend, &["--supervise", "0"]).await;
    s.ok(&["tenant", "create", "acme"]);
    s.ok(&["tenant", "create", "globex"]);
    let (acme, _) = s.key("acme");
    let (globex, _) = s.key("globex");
    let client = reqwest::Client::new();
    let schema_text = std::fs::read_to_string(fixture("schema/leads.schema.json")).unwrap();
    let send = |method: reqwest::Method, path: &str, key: &str, body: Option<Vec<u8>>| {
        let mut req = client
            .request(method, format!("{}{path}", s.base))
            .header("authorization", format!("Bearer {key}"));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or_default();
            (status, body)
        }
    };
    let put = reqwest::Method::PUT;
    let get = reqwest::Method::GET;
    let (st, stored) = send(
        put.clone(),
        "/v1/schemas/leads?default=true",
        &acme,
        Some(schema_text.clone().into_bytes()),
    )
    .await;
    assert_eq!(st, 201, "{stored}");
    assert_eq!(
        (
            stored["id"].as_str(),
            stored["default"].as_bool(),
            stored["fields"].as_u64()
        ),
        (Some("leads"), Some(true), Some(8))
    );
    // Replacing keeps the id; a bad schema is refused with a pointer and changes nothing.
    let (st, again) = send(
        put.clone(),
        "/v1/schemas/leads?default=true",
        &acme,
        Some(schema_text.clone().into_bytes()),
    )
    .await;
    assert_eq!((st, &again["sha256"]), (200, &stored["sha256"]));
    let mut bad: serde_json::Value = serde_json::from_str(&schema_text).unwrap();
    bad["fields"][7]["type"] = json!("integr");
    let (st, err) = send(
        put.clone(),
        "/v1/schemas/leads",
        &acme,
        Some(bad.to_string().into_bytes()),
    )
    .await;
    assert_eq!(st, 400, "{err}");
    assert_eq!(err["error"]["code"], "invalid_schema");
    assert_eq!(err["error"]["pointer"], "/fields/7/type", "{err}");
    let (st, err) = send(put.clone(), "/v1/schemas/leads", &acme, Some(b"{".to_vec())).await;
    assert_eq!(
        (st, err["error"]["code"].as_str()),
        (400, Some("invalid_schema"))
    );
    let (st, err) = send(
        put.clone(),
        "/v1/schemas/a%20b",
        &acme,
        Some(schema_text.clone().into_bytes()),
    )
    .await;
    assert_eq!(
        (st, err["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (_, list) = send(get.clone(), "/v1/schemas", &acme, None).await;
    assert_eq!(list["schemas"].as_array().unwrap().len(), 1, "{list}");
    let (st, one) = send(get.clone(), "/v1/schemas/leads", &acme, None).await;
    assert_eq!(st, 200);
    assert_eq!(
        one["schema"],
        serde_json::from_str::<serde_json::Value>(&schema_text).unwrap()
    );

    // Another tenant: an empty list, and acme's schema is a 404 like a random id's.
    let (_, list) = send(get.clone(), "/v1/schemas", &globex, None).await;
    assert_eq!(list["schemas"], json!([]));
    let (st, theirs) = send(get.clone(), "/v1/schemas/leads", &globex, None).await;
    let (st2, random) = send(get.clone(), "/v1/schemas/nothing-here", &globex, None).await;
    assert_eq!((st, st2), (404, 404));
    assert_eq!(theirs["error"]["message"], random["error"]["message"]);
    let (st, _) = send(reqwest::Method::DELETE, "/v1/schemas/leads", &globex, None).await;
    assert_eq!(st, 404);

    // Jobs: the default applies; `none` turns it off; an unknown id is refused before upload.
    let csv = std::fs::read(fixture("schema/leads.csv")).unwrap();
    let post = |path: &str, key: &str| {
        client
            .post(format!("{}{path}", s.base))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "text/csv")
            .body(csv.clone())
            .send()
    };
    let job_of = |res: reqwest::Response| async move {
        let status = res.status().as_u16();
        let v: serde_json::Value = res.json().await.unwrap();
        (status, v)
    };
    let (st, with_default) = job_of(post("/v1/jobs", &acme).await.unwrap()).await;
    assert_eq!(st, 202, "{with_default}");
    assert_eq!(
        (
            with_default["has_schema"].as_bool(),
            with_default["schema_id"].as_str()
        ),
        (Some(true), Some("leads"))
    );
    let (_, without) = job_of(post("/v1/jobs?schema=none", &acme).await.unwrap()).await;
    assert_eq!(without["has_schema"], false, "{without}");
    let (st, unknown) = job_of(post("/v1/jobs?schema=nope", &acme).await.unwrap()).await;
    assert_eq!(
        (st, unknown["error"]["code"].as_str()),
        (400, Some("unknown_schema"))
    );
    // globex has no default: no schema.
    let (_, theirs) = job_of(post("/v1/jobs", &globex).await.unwrap()).await;
    assert_eq!(theirs["has_schema"], false);
    let (st, _) = job_of(post("/v1/jobs?schema=leads", &globex).await.unwrap()).await;
    assert_eq!(st, 400, "globex used acme's schema");

    // The CLI: a schema file given with the job, and the stored ones.
    let file = fixture("schema/leads.csv");
    let schema_file = fixture("schema/leads.schema.json");
    let inline = s.ok(&[
        "submit",
        "--tenant",
        "globex",
        "--schema",
        schema_file.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    let listed: serde_json::Value =
        serde_json::from_str(&s.ok(&["schema", "list", "--tenant", "acme"])).unwrap();
    assert_eq!(listed[0]["id"], "leads");
    let got: serde_json::Value =
        serde_json::from_str(&s.ok(&["schema", "get", "leads", "--tenant", "acme"])).unwrap();
    assert_eq!(got["fields"][0]["name"], "email");
    let out = s.cli(&["schema", "get", "leads", "--tenant", "globex"]);
    assert_eq!(out.status.code(), Some(1));
    let dir = tempfile::tempdir().unwrap();
    let bad_file = write_temp(dir.path(), "bad.json", bad.to_string().as_bytes());
    let out = s.cli(&[
        "schema",
        "put",
        "other",
        "--tenant",
        "acme",
        bad_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/fields/7/type"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.cli(&[
        "submit",
        "--tenant",
        "acme",
        "--schema-id",
        "nope",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));

    // Deleting the schema leaves queued jobs their copy.
    let (st, _) = send(reqwest::Method::DELETE, "/v1/schemas/leads", &acme, None).await;
    assert_eq!(st, 204);
    let (_, list) = send(get.clone(), "/v1/schemas", &acme, None).await;
    assert_eq!(list["schemas"], json!([]));
    let out = s.cli(&["supervise", "--until-idle", "-c", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = |id: &str, key: &str| {
        let id = id.to_string();
        let key = key.to_string();
        let s = &s;
        async move {
            let (_, _, job) = s.get(&format!("/v1/jobs/{id}"), Some(&key)).await;
            assert_eq!(job["state"], "succeeded", "{job}");
            (
                job["report"]["rows"]["rejected"].as_u64().unwrap(),
                job["report"]["issue_counts"].clone(),
            )
        }
    };
    let checked = rows(with_default["id"].as_str().unwrap(), &acme).await;
    assert_eq!(checked, (2, json!({"type_error": 1, "unique_error": 1})));
    assert_eq!(rows(without["id"].as_str().unwrap(), &acme).await.0, 0);
    assert_eq!(rows(&inline, &globex).await.0, 2);

    // The audit trail has each change, and still verifies.
    let export = s.ok(&["audit", "export", "--tenant", "acme"]);
    let actions: Vec<String> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| r["body"].as_str().map(String::from))
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .filter_map(|b| b["action"].as_str().map(String::from))
        .filter(|a| a.starts_with("schema."))
        .collect();
    assert_eq!(
        actions,
        ["schema.put", "schema.put", "schema.deleted"],
        "{export}"
    );
    assert!(
        !export.contains("\"fields\""),
        "the audit trail holds no schema JSON"
    );
    let theirs = s.ok(&["audit", "export", "--tenant", "globex"]);
    assert!(!theirs.contains("schema."), "{theirs}");
    s.ok(&["audit", "verify"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_schemas_per_tenant() {
    stored_schemas_suite(crate::api::Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_schemas_per_tenant_on_postgres_and_s3() {
    stored_schemas_suite(crate::api::Backend::Production).await;
}

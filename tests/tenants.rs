//! Tenants and API keys through the real CLI: a key is shown once and stored only as its
//! SHA-256, listings never show it, revocation takes effect on the next authentication, and a
//! key identifies exactly its own tenant.

use serde_json::Value;

use crate::common::airlock;

struct Registry {
    dir: tempfile::TempDir,
}

impl Registry {
    fn new() -> Self {
        let r = Registry {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = r.run(&["migrate"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        r
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("airlock.db")
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        airlock()
            .args(args)
            .env(
                "AIRLOCK_DATABASE_URL",
                format!("sqlite://{}", self.db().display()),
            )
            .env(
                "AIRLOCK_STORAGE_URL",
                format!("file://{}/storage", self.dir.path().display()),
            )
            .env("AIRLOCK_LOG", "debug")
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[tokio::test]
async fn keys_are_shown_once_stored_hashed_listed_without_secrets_and_revocable() {
    let r = Registry::new();
    let t = r.json(&["tenant", "create", "acme"]);
    assert_eq!(
        (t["tenant"].as_str(), t["plan"].as_str()),
        (Some("acme"), Some("default"))
    );
    assert_eq!(
        r.run(&["tenant", "create", "acme"]).status.code(),
        Some(1),
        "exists"
    );
    assert_eq!(
        r.run(&["tenant", "create", "acme", "--plan", "nope"])
            .status
            .code(),
        Some(2),
        "unknown plan"
    );
    assert_eq!(r.run(&["tenant", "create", "a b"]).status.code(), Some(2));
    assert_eq!(
        r.run(&["key", "create", "--tenant", "nobody"])
            .status
            .code(),
        Some(1),
        "keys only for registered tenants"
    );
    r.json(&["tenant", "create", "globex"]);

    let out = r.run(&["key", "create", "--tenant", "acme", "--name", "pipeline"]);
    assert!(out.status.success());
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("al_live_") && key.len() == 8 + 43, "{key}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&key),
        "the key reached the log"
    );
    let other = r.json(&["key", "create", "--tenant", "globex"])["key"]
        .as_str()
        .unwrap()
        .to_string();

    // Listed by prefix, never in full.
    let out = r.run(&["key", "list", "--tenant", "acme"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains(&key) && !text.contains(&key[12..]), "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "pipeline");
    assert_eq!(list[0]["prefix"].as_str(), Some(&key[..12]));
    assert!(list[0]["revoked_at_ms"].is_null());

    // Stored only as its hash: the database file does not hold the key. Read before this
    // process opens the database: closing any descriptor of a file drops every POSIX lock this
    // process holds on it, SQLite's included, and a `key revoke` process could then take this
    // process's connections for gone, checkpoint and reset the WAL under them (its commit then
    // lost to them).
    let bytes = std::fs::read(r.db()).unwrap();
    let wal = std::fs::read(r.db().with_extension("db-wal")).unwrap_or_default();
    for b in [&bytes, &wal] {
        assert!(
            !b.windows(key.len() - 8).any(|w| w == &key.as_bytes()[8..]),
            "the key is stored in the clear"
        );
    }
    let store = airlock::jobs::sqlite::open(&r.db()).await.unwrap();

    // A key identifies its own tenant only; unknown and malformed keys identify nobody.
    use airlock::tenants::ApiKey;
    let who = store
        .authenticate(&ApiKey::parse(&key).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who.tenant, "acme");
    let who = store
        .authenticate(&ApiKey::parse(&other).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who.tenant, "globex");
    let mut forged = key.clone();
    forged.replace_range(20..21, if &key[20..21] == "A" { "B" } else { "A" });
    assert!(store
        .authenticate(&ApiKey::parse(&forged).unwrap())
        .await
        .unwrap()
        .is_none());
    assert!(ApiKey::parse("al_live_short").is_none());
    let listed = r.json(&["key", "list", "--tenant", "acme"]);
    assert!(
        listed[0]["last_used_at_ms"].as_i64().is_some(),
        "last use recorded"
    );

    // Revoked: refused from the next authentication on.
    let id = created["id"].as_str().unwrap();
    let revoked = r.json(&["key", "revoke", id]);
    assert!(revoked["revoked_at_ms"].as_i64().is_some());
    assert!(store
        .authenticate(&ApiKey::parse(&key).unwrap())
        .await
        .unwrap()
        .is_none());
    assert!(store
        .authenticate(&ApiKey::parse(&other).unwrap())
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        r.run(&["key", "revoke", &uuid::Uuid::new_v4().to_string()])
            .status
            .code(),
        Some(1)
    );
}

//! A real browser: a presigned download opened in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver) is saved under the right name with the right bytes
//! and never rendered. The CSV's cells hold HTML and script that set the page's title when they
//! run; the control shows they do run once the same bytes are rendered as a page.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{Backend, Server};

struct Driver {
    child: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium outlives its driver: end the browser of this profile too.
        let _ = Command::new("pkill")
            .args([
                "-f",
                "--",
                &format!("--user-data-dir={}", self.profile.display()),
            ])
            .status();
    }
}

impl Driver {
    async fn start(downloads: &Path, profile: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver is required (apt-get install chromium chromium-driver; .ci/test installs them): {e}")
            });
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let mut driver = Driver {
            child,
            base,
            session: String::new(),
            client,
            profile: profile.to_path_buf(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         format!("--user-data-dir={}", profile.display())],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(res) = driver
                .client
                .post(format!("{}/session", driver.base))
                .json(&caps)
                .send()
                .await
            {
                let v: Value = res.json().await.unwrap();
                driver.session = v["value"]["sessionId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
                    .to_string();
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let mut req = self.client.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "url", Some(json!({ "url": url })))
            .await;
    }

    async fn title(&self) -> String {
        self.call(reqwest::Method::GET, "title", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "url", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }
}

const HOSTILE: &str = "email,company,notes\n\
a@acme.example,\"<script>document.title='pwned'</script>\",\"<img src=x onerror=\"\"document.title='pwned'\"\">\"\n\
b@acme.example,Globex,plain\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_presigned_download_is_saved_never_rendered() {
    browser_suite(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_presigned_download_from_s3_is_saved_never_rendered() {
    browser_suite(Backend::Production).await;
}

async fn browser_suite(backend: Backend) {
    use base64::Engine;
    let s = Server::on(backend, &["--supervise", "0"]).await;
    s.ok(&["tenant", "create", "acme"]);
    let (key, _) = s.key("acme");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client
        .post(format!("{}/v1/jobs", s.base))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "text/csv")
        .header("x-file-name", "Q3 leads.csv")
        .body(HOSTILE)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job: Value = res.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let out = s.cli(&["supervise", "--until-idle", "-c", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, done) = s.get(&format!("/v1/jobs/{id}"), Some(&key)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let link = || async {
        let res = client
            .get(format!("{}/v1/jobs/{id}/output", s.base))
            .header("authorization", format!("Bearer {key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 303);
        res.headers()["location"].to_str().unwrap().to_string()
    };
    let expected = reqwest::get(link().await)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&expected);
    assert!(
        text.contains("<script>document.title='pwned'</script>"),
        "the clean file keeps the cells: {text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let driver = Driver::start(&downloads, &dir.path().join("profile")).await;

    // Control: the same bytes rendered as a page run their script.
    let as_page = format!(
        "data:text/html;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&expected)
    );
    driver.open(&as_page).await;
    assert_eq!(
        driver.title().await,
        "pwned",
        "the payload runs when rendered"
    );

    // The download: the page stays, its title unchanged; the file is saved, with its name.
    let page = "data:text/html,<title>untouched</title>";
    driver.open(page).await;
    assert_eq!(driver.title().await, "untouched");
    driver.open(&link().await).await;
    let saved = downloads.join("Q3 leads.clean.csv");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !saved.exists() {
        assert!(
            Instant::now() < deadline,
            "nothing saved: {:?}",
            std::fs::read_dir(&downloads)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read(&saved).unwrap(), expected.to_vec());
    assert_eq!(driver.title().await, "untouched", "never rendered");
    assert_eq!(driver.url().await, page, "the page was not replaced");
    let names: Vec<_> = std::fs::read_dir(&downloads)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["Q3 leads.clean.csv".to_string()]);
    // Quit the browser (DELETE /session/{id}).
    let _ = driver
        .client
        .delete(format!("{}/session/{}", driver.base, driver.session))
        .send()
        .await;
}

//! The command line (DESIGN §3.1). Exit codes: 0 accepted, 1 rejected, 2 usage or configuration
//! error, 70 failed.

use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::policy::Policies;
use crate::process::{self, Dest, Destinations};

const EXIT_USAGE: u8 = 2;
const EXIT_FAILED: u8 = 70;

const EXAMPLES: &str = "\
Examples:
  airlock process leads.csv --output clean.csv --rejects rejects.csv --report report.json
  airlock submit --tenant acme --idempotency-key upload-42 leads.csv   # prints the job id
  airlock supervise --until-idle                 # run queued jobs, exit when none are left
  airlock status JOB                             # state and report summary, JSON
  airlock link JOB --artifact output             # presigned download link (5 min)
  airlock process leads.csv                      # report JSON on stdout, outputs discarded
  airlock process leads.csv --output - --report r.json | head   # clean CSV on stdout
  airlock process export.csv --plan legacy-excel # windows-1252 fallback for old spreadsheets

Exit status: 0 accepted, 1 rejected (the report says why), 2 usage or configuration error,
70 failed (worker crash, limit, timeout or sandbox violation).";

#[derive(Debug, Parser)]
#[command(name = "airlock", version = crate::build_info::LONG, about = "Sandboxed validation of untrusted CSV uploads", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate one file through the sandboxed worker; no services needed.
    #[command(after_help = EXAMPLES)]
    Process(ProcessArgs),
    /// Show which sandbox layers this host supports and prove the active policy runs here.
    #[command(
        after_help = "Exit status: 0 the policy runs here, 1 it cannot (see \"problems\"), 2 usage error.\n\nExample:\n  airlock doctor --policy-dir /etc/airlock/policies"
    )]
    Doctor(DoctorArgs),
    /// Queue a file as a job for a tenant; prints the job id.
    #[command(
        after_help = "The file is uploaded under a new random key; its size is checked against the plan first.\nWith --idempotency-key, a second submit with the same key returns the first job's id.\nThe job is checked against the tenant's default schema, if it has one, unless --schema or --schema-id says otherwise.\n\nExamples:\n  airlock submit --tenant acme --idempotency-key upload-42 leads.csv\n  airlock submit --tenant acme --schema-id leads leads.csv\n  airlock submit --tenant acme --schema leads.schema.json leads.csv"
    )]
    Submit(SubmitCli),
    /// A tenant's stored schemas (Frictionless Table Schema): put, list, get, delete.
    #[command(
        subcommand,
        after_help = "A schema is checked when stored (a bad one is refused with a JSON pointer to the bad part). A job\ntakes a copy of its schema when submitted: `submit --schema-id ID`, `POST /v1/jobs?schema=ID`, or the\ntenant's default (put --default) when it names none.\n\nExamples:\n  airlock schema put leads --tenant acme --default leads.schema.json\n  airlock schema list --tenant acme\n  airlock schema get leads --tenant acme > leads.schema.json\n  airlock schema delete leads --tenant acme"
    )]
    Schema(SchemaCmd),
    /// Run queued jobs through sandboxed workers.
    #[command(
        after_help = "SIGTERM/SIGINT: stop claiming, let in-flight jobs finish within --grace-seconds, then give the rest back.\n\nExamples:\n  airlock supervise                        # run until stopped\n  airlock supervise --until-idle -c 4      # drain the queue and exit"
    )]
    Supervise(SuperviseCli),
    /// A job's state and report summary, as JSON.
    Status(JobCli),
    /// A fresh presigned link to a finished job's output, rejects or report.
    #[command(
        after_help = "Example:\n  curl -o clean.csv \"$(airlock link JOB --artifact output --ttl 60)\""
    )]
    Link(LinkCli),
    /// Cancel a queued job.
    Cancel(JobCli),
    /// Retention sweep: delete every file whose job completed longer ago than its plan's
    /// retention (30 days by default), and old orphans; prints a JSON summary. For cron.
    #[command(
        after_help = "Exit status: 0 all done, 1 something failed (the next run retries it), 2 usage, 70 a service failed.\n\nExamples:\n  airlock sweep --dry-run     # counts, bytes and the oldest overdue completion; deletes nothing\n  17 3 * * * airlock sweep    # crontab: every night at 03:17"
    )]
    Sweep(SweepCli),
    /// Erase one tenant's inputs and outputs now, with receipts.
    Purge(PurgeCli),
    /// A tenant's deletion receipts, as JSON.
    Receipts(ReceiptsCli),
    /// Apply the schema migrations this build has and the database lacks. Only this command
    /// changes the schema; the others refuse to run until it has (exit 2).
    #[command(
        after_help = "Run it once after installing or upgrading, before starting supervisors. On PostgreSQL it waits\nat most 10 s for a lock, so it fails instead of stalling the queue behind a long transaction.\n\nExample:\n  AIRLOCK_DATABASE_URL=postgres://airlock@db/airlock airlock migrate"
    )]
    Migrate(MigrateCli),
    /// Register tenants (`tenant create NAME [--plan P]`).
    #[command(
        subcommand,
        after_help = "Example:\n  airlock tenant create acme --plan default"
    )]
    Tenant(TenantCmd),
    /// A tenant's API keys: create (shown once), list, revoke.
    #[command(
        subcommand,
        after_help = "Examples:\n  airlock key create --tenant acme --name pipeline   # prints the key once\n  airlock key list --tenant acme\n  airlock key revoke KEY_ID                          # refused from the next request on"
    )]
    Key(KeyCmd),
    /// A tenant's webhook endpoints: add (the secret is shown once), list, remove, rotate.
    #[command(
        subcommand,
        after_help = "Secrets are stored encrypted under the key-encryption key in --kek-file / AIRLOCK_WEBHOOK_KEK_FILE (or AIRLOCK_WEBHOOK_KEK), 32 bytes, base64.\n\nExamples:\n  head -c 32 /dev/urandom | base64 > /etc/airlock/webhook.kek\n  airlock webhook add --tenant acme --url https://hooks.acme.example/airlock --events job.succeeded,job.rejected\n  airlock webhook list --tenant acme\n  airlock webhook rotate ENDPOINT_ID --tenant acme   # the old secret signs beside the new one for 24 h\n  airlock webhook remove ENDPOINT_ID --tenant acme"
    )]
    Webhook(WebhookCmd),
    /// The tamper-evident audit trail: verify the chains, export a tenant's, sign checkpoints.
    #[command(
        subcommand,
        after_help = "Examples:\n  airlock audit keygen /etc/airlock/audit.key     # prints the public key; keep the file secret\n  AIRLOCK_AUDIT_KEY_FILE=/etc/airlock/audit.key airlock supervise   # signs chain heads every minute\n  airlock audit verify --public-key PUBKEY        # every chain; exit 1 and where, if tampered\n  airlock audit export --tenant acme > acme-audit.jsonl"
    )]
    Audit(AuditCmd),
    /// Serve the tenant API (and the local backend's downloads) over HTTP, 127.0.0.1:8787 by
    /// default; on the embedded default it also runs the jobs.
    #[command(
        after_help = "On the embedded default (SQLite + ./airlock-data) the first start creates the database, a tenant \"demo\" and its API key (printed once), and a supervisor runs in the same process, so this is the whole quickstart:\n  airlock serve\n  curl -H \"Authorization: Bearer $KEY\" -H 'Content-Type: text/csv' --data-binary @leads.csv http://127.0.0.1:8787/v1/jobs\n\nProduction (PostgreSQL, S3; supervisors run elsewhere, TLS terminated in front):\n  AIRLOCK_DATABASE_URL=postgres://airlock@db/airlock AIRLOCK_STORAGE_URL=s3://uploads airlock serve --listen 0.0.0.0:8787\n\nSIGTERM stops accepting, lets requests finish (30 s) and in-process jobs finish (--grace-seconds)."
    )]
    Serve(ServeArgs),
}

#[derive(Debug, Subcommand)]
enum TenantCmd {
    /// Register a tenant with its plan; prints it as JSON.
    Create {
        /// The tenant's name: 1-128 characters of A-Z a-z 0-9 - _ .
        name: String,
        /// The plan of limits in policies/limits.toml.
        #[arg(long, value_name = "NAME", default_value = "default")]
        plan: String,
        /// A directory whose policy files replace the built-in ones.
        #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
        policy_dir: Option<PathBuf>,
        #[command(flatten)]
        service: ServiceOpts,
    },
}

#[derive(Debug, Args)]
struct KekOpts {
    /// A file holding the webhook key-encryption key (32 bytes, base64).
    #[arg(long, value_name = "FILE", env = "AIRLOCK_WEBHOOK_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// The key itself, base64 (prefer the file).
    #[arg(
        long,
        value_name = "BASE64",
        env = "AIRLOCK_WEBHOOK_KEK",
        hide_env_values = true,
        hide = true
    )]
    kek: Option<String>,
}

/// The audit checkpoint key (`serve`, `supervise`, `audit checkpoint`, `audit verify`).
#[derive(Debug, Args)]
struct AuditKeyOpts {
    /// A file holding the Ed25519 key that signs audit checkpoints (make one with `airlock
    /// audit keygen`); with it, chain heads are signed every minute.
    #[arg(long, value_name = "FILE", env = "AIRLOCK_AUDIT_KEY_FILE")]
    audit_key_file: Option<PathBuf>,
}

impl AuditKeyOpts {
    fn load(&self) -> Result<Option<crate::audit::AuditKey>, crate::service::CommandError> {
        self.audit_key_file
            .as_deref()
            .map(crate::audit::AuditKey::load)
            .transpose()
            .map_err(crate::service::CommandError::Usage)
    }
}

/// The webhook dispatcher's settings (`serve`, `supervise`): it runs when a key-encryption key
/// is given.
#[derive(Debug, Args)]
struct WebhookOpts {
    #[command(flatten)]
    kek: KekOpts,
    /// Hosts webhooks may reach although private or plain http (comma-separated).
    #[arg(
        long = "webhook-allow",
        value_name = "HOSTS",
        env = "AIRLOCK_WEBHOOK_ALLOW",
        default_value = ""
    )]
    allow: String,
}

impl WebhookOpts {
    fn load(&self) -> Result<Option<crate::service::Webhooks>, crate::service::CommandError> {
        if self.kek.kek_file.is_none() && self.kek.kek.is_none() {
            return Ok(None);
        }
        Ok(Some(crate::service::Webhooks {
            kek: crate::service::load_kek(self.kek.kek_file.as_deref(), self.kek.kek.as_deref())?,
            allow: crate::webhooks::Allowlist::parse(&self.allow),
        }))
    }
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Recompute every chain (or one tenant's) and check it against its signed checkpoints;
    /// prints what it found as JSON, exits 1 when anything is wrong.
    Verify {
        #[arg(long)]
        tenant: Option<String>,
        /// The checkpoint key's public half, base64 (as `keygen` printed it); or give the key
        /// file itself with --audit-key-file.
        #[arg(long, value_name = "BASE64", env = "AIRLOCK_AUDIT_PUBLIC_KEY")]
        public_key: Option<String>,
        #[command(flatten)]
        audit: AuditKeyOpts,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// A tenant's chain as JSON lines (one record each), then its signed checkpoints.
    Export {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// Sign the head of every chain that grew since its last checkpoint, now.
    Checkpoint {
        #[command(flatten)]
        audit: AuditKeyOpts,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// Make a new checkpoint key in FILE (refused if it exists); prints its public key.
    Keygen { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum SchemaCmd {
    /// Store FILE as the tenant's schema ID (replacing one of that id); prints it as JSON.
    Put {
        /// 1-64 characters of A-Z a-z 0-9 - _ .
        id: String,
        #[arg(long)]
        tenant: String,
        /// Make it the tenant's default: jobs submitted without a schema use it.
        #[arg(long)]
        default: bool,
        /// The schema, JSON (at most 64 KiB).
        file: PathBuf,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// The tenant's schemas: id, SHA-256, default, field count, times.
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// Print the tenant's schema ID (its JSON).
    Get {
        id: String,
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// Delete the tenant's schema ID; jobs already submitted keep their copy.
    Delete {
        id: String,
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        service: ServiceOpts,
    },
}

#[derive(Debug, Subcommand)]
enum WebhookCmd {
    /// Add an endpoint for a tenant; prints it with its secret, this once.
    Add {
        #[arg(long)]
        tenant: String,
        /// https://… (plain http only for hosts in AIRLOCK_WEBHOOK_ALLOW).
        #[arg(long)]
        url: String,
        /// Comma-separated: job.succeeded, job.rejected, job.failed, job.cancelled, job.purged.
        #[arg(long, default_value = "all")]
        events: String,
        /// Hosts allowed although plain http or private (comma-separated).
        #[arg(
            long,
            value_name = "HOSTS",
            env = "AIRLOCK_WEBHOOK_ALLOW",
            default_value = ""
        )]
        allow: String,
        #[command(flatten)]
        kek: KekOpts,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// A tenant's endpoints: URL, events, times, disabled state. Never a secret.
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// Remove an endpoint (its pending deliveries go with it).
    Remove {
        id: String,
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// A new secret, shown once; the old one keeps signing beside it for 24 h.
    Rotate {
        id: String,
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        kek: KekOpts,
        #[command(flatten)]
        service: ServiceOpts,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCmd {
    /// Create a key for a tenant and print it, this once (only its SHA-256 is stored).
    Create {
        #[arg(long)]
        tenant: String,
        /// A name to tell the key apart in listings.
        #[arg(long, default_value = "default")]
        name: String,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// A tenant's keys: id, name, prefix, creation, last use and revocation times. Never a key.
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        service: ServiceOpts,
    },
    /// Revoke a key by its id; the next request with it is refused.
    Revoke {
        /// The key's id (from `key create` or `key list`).
        id: String,
        #[command(flatten)]
        service: ServiceOpts,
    },
}

/// Where the job store and the object store are (DESIGN §3.1): read here, once.
#[derive(Debug, Clone, Args)]
struct ServiceOpts {
    /// The job store: postgres://… or sqlite://PATH.
    #[arg(long, value_name = "URL", env = "AIRLOCK_DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL, hide_env_values = true)]
    database_url: String,
    /// The object store: s3://BUCKET or file:///PATH.
    #[arg(long, value_name = "URL", env = "AIRLOCK_STORAGE_URL", default_value = crate::config::DEFAULT_STORAGE_URL, value_parser = parse_storage_url)]
    storage_url: crate::config::StorageUrl,
    /// Base of the local backend's download links.
    #[arg(long, value_name = "URL", env = "AIRLOCK_PUBLIC_URL", default_value = crate::config::DEFAULT_PUBLIC_URL)]
    public_url: String,
    /// S3 path-style addressing, for self-hosted stores (SeaweedFS, MinIO, Garage, Ceph).
    #[arg(long, value_name = "BOOL", env = "AIRLOCK_S3_PATH_STYLE", default_value = "false", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    s3_path_style: bool,
    /// Server-side encryption requested on every S3 put: aes256, or none for stores without SSE-S3.
    #[arg(long, value_name = "MODE", env = "AIRLOCK_S3_SSE", default_value = "aes256", value_parser = ["aes256", "none"])]
    s3_sse: String,
}

impl ServiceOpts {
    fn config(self) -> crate::config::ServiceConfig {
        crate::config::ServiceConfig {
            database_url: self.database_url,
            storage: self.storage_url,
            public_url: self.public_url,
            s3: crate::config::S3Options {
                path_style: self.s3_path_style,
                encrypt: self.s3_sse != "none",
            },
        }
    }
}

fn parse_storage_url(s: &str) -> Result<crate::config::StorageUrl, String> {
    crate::config::StorageUrl::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
struct MigrateCli {
    #[command(flatten)]
    service: ServiceOpts,
}

#[derive(Debug, Args)]
struct SubmitCli {
    #[command(flatten)]
    service: ServiceOpts,
    /// The tenant the upload belongs to.
    #[arg(long)]
    tenant: String,
    /// A key unique per tenant: resubmitting with it returns the existing job.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// The plan of limits in policies/limits.toml.
    #[arg(long, value_name = "NAME", default_value = "default")]
    plan: String,
    /// A directory whose policy files replace the built-in ones.
    #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// Read the file through a symbolic link (refused by default).
    #[arg(long)]
    follow_symlinks: bool,
    /// Check every row against this Frictionless Table Schema (JSON; README, "Schemas").
    #[arg(long, value_name = "FILE", conflicts_with = "schema_id")]
    schema: Option<PathBuf>,
    /// Check every row against the tenant's stored schema ID (`none`: no schema, even when the
    /// tenant has a default) [default: the tenant's default schema, if any].
    #[arg(long, value_name = "ID")]
    schema_id: Option<String>,
    /// The file to queue.
    file: PathBuf,
}

#[derive(Debug, Args)]
struct SuperviseCli {
    #[command(flatten)]
    service: ServiceOpts,
    /// Jobs run at once [default: number of cores].
    #[arg(long, short = 'c', value_name = "N")]
    concurrency: Option<usize>,
    /// Exit when no job is queued or running.
    #[arg(long)]
    until_idle: bool,
    /// Lease length; heartbeats renew it every third of this.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    lease_seconds: u64,
    /// How long in-flight jobs may run on after SIGTERM before they are given back.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    grace_seconds: u64,
    /// How long a job may keep meeting storage or host failures (which spend none of its
    /// attempts) before it fails with outage_budget_spent.
    #[arg(long, value_name = "HOURS", default_value_t = 24)]
    outage_budget_hours: u64,
    /// Where a private (0700, random-named) directory for staged inputs is created; leftovers of
    /// supervisors killed on this host are removed from here on start [default: the system temp
    /// directory].
    #[arg(long, value_name = "DIR", env = "AIRLOCK_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// A directory whose policy files replace the built-in ones.
    #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    #[command(flatten)]
    webhooks: WebhookOpts,
    #[command(flatten)]
    audit: AuditKeyOpts,
}

#[derive(Debug, Args)]
struct JobCli {
    #[command(flatten)]
    service: ServiceOpts,
    /// The job id.
    job: String,
    /// Only succeed if the job belongs to this tenant.
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Debug, Args)]
struct LinkCli {
    #[command(flatten)]
    service: ServiceOpts,
    /// The job id.
    job: String,
    /// Which file.
    #[arg(long, value_name = "WHICH", default_value = "output", value_parser = ["output", "rejects", "report"])]
    artifact: String,
    /// Link lifetime (at most the presign policy's maximum, 300 s).
    #[arg(long, value_name = "SECONDS")]
    ttl: Option<u64>,
    /// Only succeed if the job belongs to this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// A directory whose policy files replace the built-in ones.
    #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SweepCli {
    #[command(flatten)]
    service: ServiceOpts,
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// A directory whose policy files replace the built-in ones.
    #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PurgeCli {
    #[command(flatten)]
    service: ServiceOpts,
    /// The tenant whose data is erased.
    #[arg(long)]
    tenant: String,
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// A directory whose policy files replace the built-in ones.
    #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReceiptsCli {
    #[command(flatten)]
    service: ServiceOpts,
    /// The tenant.
    #[arg(long)]
    tenant: String,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    service: ServiceOpts,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", env = "AIRLOCK_LISTEN", default_value = crate::config::DEFAULT_LISTEN)]
    listen: String,
    /// Open connections at most; more wait until one closes.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a client has to send a request's headers; idle keep-alive connections are closed
    /// after the same time.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    header_timeout: u64,
    /// Where a private (0700, random-named) directory for staging uploads is created [default:
    /// the system temp directory].
    #[arg(long, value_name = "DIR", env = "AIRLOCK_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// A directory whose policy files replace the built-in ones.
    #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// Run a supervisor in this process with N jobs at once; 0 for none [default: the number of
    /// cores on SQLite (the embedded default), 0 on PostgreSQL, where `airlock supervise` runs
    /// on its own hosts].
    #[arg(long, value_name = "N")]
    supervise: Option<usize>,
    /// The in-process supervisor's lease; heartbeats renew it every third of this.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    lease_seconds: u64,
    /// How long in-flight jobs may run on after SIGTERM before they are given back.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    grace_seconds: u64,
    /// Requests per second per API key (bursts of twice that); 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = 50)]
    rate_per_key: u32,
    /// Requests per second per client IP address (bursts of twice that); 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = 100)]
    rate_per_ip: u32,
    /// A bearer token that opens `/metrics` to any client; without one, only loopback clients
    /// that came through no proxy get it.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "AIRLOCK_METRICS_TOKEN",
        hide_env_values = true
    )]
    metrics_token: Option<String>,
    #[command(flatten)]
    webhooks: WebhookOpts,
    #[command(flatten)]
    audit: AuditKeyOpts,
}

#[derive(Debug, Args)]
struct DoctorArgs {
    /// A directory whose policy files replace the built-in ones.
    #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// The plan whose limits the check worker runs with.
    #[arg(long, value_name = "NAME", default_value = "default")]
    plan: String,
}

#[derive(Debug, Args)]
struct ProcessArgs {
    /// The uploaded file (a regular file; never opened by this process beyond a size check).
    input: PathBuf,
    /// Where to write the clean CSV (only when the file is accepted); - for stdout. An existing
    /// destination must be a regular file: a symlink or device is refused, never replaced.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Where to write the rejected rows, as CSV: record,line,code,message,raw; - for stdout.
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Where to write the JSON report [default: stdout].
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Read INPUT through a symbolic link (refused by default).
    #[arg(long)]
    follow_symlinks: bool,
    /// The plan of limits in policies/limits.toml.
    #[arg(long, value_name = "NAME", default_value = "default")]
    plan: String,
    /// A directory whose policy files replace the built-in ones.
    #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// The delimiter: `,` `;` `|` or `tab` [default: sniffed].
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    delimiter: Option<u8>,
    /// Check every row against this Frictionless Table Schema (JSON; README, "Schemas").
    #[arg(long, value_name = "FILE")]
    schema: Option<PathBuf>,
}

fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "," | "comma" => Ok(b','),
        ";" | "semicolon" => Ok(b';'),
        "\t" | "tab" | "\\t" => Ok(b'\t'),
        "|" | "pipe" => Ok(b'|'),
        _ => Err("use one of , ; | tab".into()),
    }
}

fn init_logging() {
    let command = std::env::args_os().nth(1);
    let default = match command.as_ref().and_then(|c| c.to_str()) {
        Some("supervise" | "serve" | "sweep" | "purge") => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

/// Who this process acts as in the audit trail, outside any API request.
fn process_actor(command: &Command) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let pid = std::process::id();
    match command {
        Command::Serve(_) => format!("serve:{host}:{pid}"),
        Command::Supervise(_) => format!("supervisor:{host}:{pid}"),
        Command::Sweep(_) => format!("sweeper:{host}:{pid}"),
        _ => {
            let user = std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "root".into());
            format!("operator:{user}@{host}")
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    crate::jobs::request::set_process_actor(process_actor(&cli.command));
    match cli.command {
        Command::Process(args) => process_command(args),
        Command::Doctor(args) => doctor_command(args),
        Command::Serve(args) => serve_command(args),
        Command::Submit(args) => {
            let config = args.service.config();
            service_command(args.policy_dir.clone(), |p| {
                crate::jobs::request::maybe_as_tenant(Some(args.tenant.clone()), async move {
                    let choice = match (&args.schema, args.schema_id.as_deref()) {
                        (Some(file), _) => crate::schemas::Choice::Inline(
                            crate::schema::JobSchema::load(file).map_err(|e| {
                                crate::service::CommandError::Usage(format!("{e:#}"))
                            })?,
                        ),
                        (None, id) => crate::schemas::Choice::from_param(id)
                            .map_err(crate::service::CommandError::Usage)?,
                    };
                    let id = crate::service::submit(
                        &config,
                        &p,
                        crate::service::SubmitArgs {
                            tenant: &args.tenant,
                            idempotency_key: args.idempotency_key.as_deref(),
                            plan: &args.plan,
                            file: &args.file,
                            follow_symlinks: args.follow_symlinks,
                            file_name: None,
                            schema: None,
                        },
                        choice,
                    )
                    .await?;
                    Ok(id.to_string())
                })
            })
        }
        Command::Supervise(args) => {
            let config = args.service.config();
            service_command(args.policy_dir.clone(), |p| async move {
                let summary = crate::service::supervise(
                    &config,
                    p,
                    crate::service::SuperviseArgs {
                        concurrency: args.concurrency.unwrap_or_else(cores),
                        until_idle: args.until_idle,
                        lease: std::time::Duration::from_secs(args.lease_seconds.max(3)),
                        grace: std::time::Duration::from_secs(args.grace_seconds),
                        work_dir: args.work_dir,
                        outage_budget: std::time::Duration::from_secs(
                            args.outage_budget_hours.saturating_mul(3600),
                        ),
                        webhooks: args.webhooks.load()?,
                        audit_key: args.audit.load()?,
                    },
                )
                .await?;
                Ok(serde_json::to_string(&summary).unwrap_or_default())
            })
        }
        Command::Status(args) => {
            let config = args.service.config();
            service_command(None, |_| {
                crate::jobs::request::maybe_as_tenant(args.tenant.clone(), async move {
                    let v =
                        crate::service::status(&config, &args.job, args.tenant.as_deref()).await?;
                    Ok(serde_json::to_string_pretty(&v).unwrap_or_default())
                })
            })
        }
        Command::Link(args) => {
            let config = args.service.config();
            service_command(args.policy_dir.clone(), |p| {
                crate::jobs::request::maybe_as_tenant(args.tenant.clone(), async move {
                    crate::service::link(
                        &config,
                        &p,
                        &args.job,
                        &args.artifact,
                        args.ttl,
                        args.tenant.as_deref(),
                    )
                    .await
                })
            })
        }
        Command::Cancel(args) => {
            let config = args.service.config();
            service_command(None, |_| {
                crate::jobs::request::maybe_as_tenant(args.tenant.clone(), async move {
                    Ok(
                        crate::service::cancel(&config, &args.job, args.tenant.as_deref())
                            .await?
                            .to_string(),
                    )
                })
            })
        }
        Command::Sweep(args) => sweep_command(
            args.service.config(),
            args.policy_dir.clone(),
            None,
            args.dry_run,
        ),
        Command::Purge(args) => sweep_command(
            args.service.config(),
            args.policy_dir.clone(),
            Some(args.tenant),
            args.dry_run,
        ),
        Command::Receipts(args) => {
            let config = args.service.config();
            service_command(None, |_| {
                crate::jobs::request::maybe_as_tenant(Some(args.tenant.clone()), async move {
                    crate::service::receipts(&config, &args.tenant).await
                })
            })
        }
        Command::Tenant(TenantCmd::Create {
            name,
            plan,
            policy_dir,
            service,
        }) => {
            let config = service.config();
            service_command(policy_dir, |p| {
                crate::jobs::request::maybe_as_tenant(Some(name.clone()), async move {
                    crate::service::tenant_create(&config, &p, &name, &plan).await
                })
            })
        }
        Command::Key(KeyCmd::Create {
            tenant,
            name,
            service,
        }) => {
            let config = service.config();
            service_command(None, |_| {
                crate::jobs::request::maybe_as_tenant(Some(tenant.clone()), async move {
                    crate::service::key_create(&config, &tenant, &name).await
                })
            })
        }
        Command::Key(KeyCmd::List { tenant, service }) => {
            let config = service.config();
            service_command(None, |_| {
                crate::jobs::request::maybe_as_tenant(Some(tenant.clone()), async move {
                    crate::service::key_list(&config, &tenant).await
                })
            })
        }
        Command::Key(KeyCmd::Revoke { id, service }) => {
            let config = service.config();
            service_command(None, |_| async move {
                crate::service::key_revoke(&config, &id).await
            })
        }
        Command::Webhook(WebhookCmd::Add {
            tenant,
            url,
            events,
            allow,
            kek,
            service,
        }) => {
            let config = service.config();
            service_command(None, |_| {
                crate::jobs::request::maybe_as_tenant(Some(tenant.clone()), async move {
                    let kek =
                        crate::service::load_kek(kek.kek_file.as_deref(), kek.kek.as_deref())?;
                    let allow = crate::webhooks::Allowlist::parse(&allow);
                    crate::service::webhook_add(&config, &kek, &allow, &tenant, &url, &events).await
                })
            })
        }
        Command::Schema(cmd) => schema_command(cmd),
        Command::Webhook(WebhookCmd::List { tenant, service }) => {
            let config = service.config();
            service_command(None, |_| {
                crate::jobs::request::maybe_as_tenant(Some(tenant.clone()), async move {
                    crate::service::webhook_list(&config, &tenant).await
                })
            })
        }
        Command::Webhook(WebhookCmd::Remove {
            id,
            tenant,
            service,
        }) => {
            let config = service.config();
            service_command(None, |_| {
                crate::jobs::request::maybe_as_tenant(Some(tenant.clone()), async move {
                    crate::service::webhook_remove(&config, &tenant, &id).await
                })
            })
        }
        Command::Webhook(WebhookCmd::Rotate {
            id,
            tenant,
            kek,
            service,
        }) => {
            let config = service.config();
            service_command(None, |_| {
                crate::jobs::request::maybe_as_tenant(Some(tenant.clone()), async move {
                    let kek =
                        crate::service::load_kek(kek.kek_file.as_deref(), kek.kek.as_deref())?;
                    crate::service::webhook_rotate(&config, &kek, &tenant, &id).await
                })
            })
        }
        Command::Audit(AuditCmd::Verify {
            tenant,
            public_key,
            audit,
            service,
        }) => {
            let config = service.config();
            service_command(None, |_| async move {
                let key = match (public_key, audit.load()?) {
                    (Some(p), _) => Some(
                        crate::audit::checkpoint::PublicKey::parse(&p)
                            .map_err(crate::service::CommandError::Usage)?,
                    ),
                    (None, Some(k)) => Some(k.public()),
                    (None, None) => None,
                };
                crate::service::audit_verify(&config, tenant.as_deref(), key.as_ref()).await
            })
        }
        Command::Audit(AuditCmd::Export { tenant, service }) => {
            let config = service.config();
            service_command(None, |_| {
                crate::jobs::request::maybe_as_tenant(Some(tenant.clone()), async move {
                    crate::service::audit_export(&config, &tenant).await
                })
            })
        }
        Command::Audit(AuditCmd::Checkpoint { audit, service }) => {
            let config = service.config();
            service_command(None, |_| async move {
                let key = audit.load()?.ok_or_else(|| {
                    crate::service::CommandError::Usage(
                        "no checkpoint key: give --audit-key-file or AIRLOCK_AUDIT_KEY_FILE".into(),
                    )
                })?;
                crate::service::audit_checkpoint(&config, &key).await
            })
        }
        Command::Audit(AuditCmd::Keygen { file }) => {
            let key = crate::audit::AuditKey::generate();
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .and_then(|mut f| std::io::Write::write_all(&mut f, key.to_file_text().as_bytes()));
            match written {
                Ok(()) => {
                    println!("{}", key.public().to_base64());
                    ExitCode::SUCCESS
                }
                Err(e) => usage(format!("writing {}: {e}", file.display())),
            }
        }
        Command::Migrate(args) => {
            let config = args.service.config();
            service_command(
                None,
                |_| async move { crate::service::migrate(&config).await },
            )
        }
    }
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("airlock: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// `anyhow` chains, one line.
fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn sweep_command(
    config: crate::config::ServiceConfig,
    policy_dir: Option<PathBuf>,
    tenant: Option<String>,
    dry_run: bool,
) -> ExitCode {
    let failed = std::sync::atomic::AtomicBool::new(false);
    let failed_ref = &failed;
    let code = service_command(policy_dir, |p| {
        crate::jobs::request::maybe_as_tenant(tenant.clone(), async move {
            let (json, any_failed) =
                crate::service::sweep(&config, &p, tenant.as_deref(), dry_run).await?;
            failed_ref.store(any_failed, std::sync::atomic::Ordering::Relaxed);
            Ok(json)
        })
    });
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        ExitCode::from(1)
    } else {
        code
    }
}

/// Run an async service command: print its output, map its error to an exit status.
fn schema_command(cmd: SchemaCmd) -> ExitCode {
    use crate::service::CommandError;
    let (tenant, service) = match &cmd {
        SchemaCmd::Put {
            tenant, service, ..
        }
        | SchemaCmd::List { tenant, service }
        | SchemaCmd::Get {
            tenant, service, ..
        }
        | SchemaCmd::Delete {
            tenant, service, ..
        } => (tenant.clone(), service.clone().config()),
    };
    service_command(None, |_| {
        crate::jobs::request::maybe_as_tenant(Some(tenant.clone()), async move {
            match cmd {
                SchemaCmd::Put {
                    id, default, file, ..
                } => {
                    let schema = crate::schema::JobSchema::load(&file)
                        .map_err(|e| CommandError::Usage(format!("{e:#}")))?;
                    crate::service::schema_put(&service, &tenant, &id, &schema, default).await
                }
                SchemaCmd::List { .. } => crate::service::schema_list(&service, &tenant).await,
                SchemaCmd::Get { id, .. } => {
                    crate::service::schema_get(&service, &tenant, &id).await
                }
                SchemaCmd::Delete { id, .. } => {
                    crate::service::schema_delete(&service, &tenant, &id).await
                }
            }
        })
    })
}

fn service_command<F, Fut>(policy_dir: Option<PathBuf>, f: F) -> ExitCode
where
    F: FnOnce(Policies) -> Fut,
    Fut: std::future::Future<Output = Result<String, crate::service::CommandError>>,
{
    use crate::service::CommandError;
    let policies = match Policies::load(policy_dir.as_deref()) {
        Ok(p) => p,
        Err(e) => return usage(chain(&e.into())),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return usage(format!("starting the runtime: {e}")),
    };
    match rt.block_on(f(policies)) {
        Ok(out) => {
            // A command that streamed its own output (an export) returns nothing more.
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("airlock: {e}");
            match e {
                CommandError::Usage(_) => ExitCode::from(EXIT_USAGE),
                CommandError::Refused(_) => ExitCode::from(1),
                CommandError::Failed(_) => ExitCode::from(EXIT_FAILED),
            }
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn serve_command(args: ServeArgs) -> ExitCode {
    let config = args.service.config();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return usage(format!("starting the runtime: {e}")),
    };
    let limits = crate::serve::Limits {
        max_connections: args.max_connections,
        header_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
        ..crate::serve::Limits::default()
    };
    let policies = match Policies::load(args.policy_dir.as_deref()) {
        Ok(p) => std::sync::Arc::new(p),
        Err(e) => return usage(chain(&e.into())),
    };
    let webhooks = match args.webhooks.load() {
        Ok(w) => w,
        Err(e) => return usage(e),
    };
    let audit_key = match args.audit.load() {
        Ok(k) => k,
        Err(e) => return usage(e),
    };
    let embedded = config.database_url.starts_with("sqlite:");
    let concurrency = args
        .supervise
        .unwrap_or_else(|| if embedded { cores() } else { 0 });
    let served = rt.block_on(crate::service::serve(
        &config,
        policies,
        crate::service::ServeArgs {
            listen: args.listen,
            limits,
            rates: crate::ratelimit::Rates {
                per_key: args.rate_per_key,
                per_ip: args.rate_per_ip,
            },
            metrics_token: args.metrics_token,
            work_dir: args.work_dir.clone(),
            supervise: crate::service::SuperviseArgs {
                concurrency,
                until_idle: false,
                lease: std::time::Duration::from_secs(args.lease_seconds.max(3)),
                grace: std::time::Duration::from_secs(args.grace_seconds),
                work_dir: args.work_dir,
                outage_budget: std::time::Duration::from_secs(24 * 3600),
                webhooks,
                audit_key,
            },
        },
    ));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock: {e}");
            match e {
                crate::service::CommandError::Usage(_) => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::from(EXIT_FAILED),
            }
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

fn doctor_command(args: DoctorArgs) -> ExitCode {
    let policies = match Policies::load(args.policy_dir.as_deref()) {
        Ok(p) => p,
        Err(e) => return usage(chain(&e.into())),
    };
    match crate::doctor::run(&policies, &args.plan) {
        Ok(code) => code,
        Err(e) => usage(chain(&e)),
    }
}

fn process_command(args: ProcessArgs) -> ExitCode {
    let policies = match Policies::load(args.policy_dir.as_deref()) {
        Ok(p) => p,
        Err(e) => return usage(chain(&e.into())),
    };
    let plan = match policies.limits.plan(&args.plan) {
        Ok(plan) => plan,
        Err(e) => return usage(e),
    };
    let dest = Destinations {
        output: Dest::from_arg(args.output),
        rejects: Dest::from_arg(args.rejects),
        report: args
            .report
            .map_or(Dest::Stdout, |p| Dest::from_arg(Some(p))),
    };
    if let Err(e) = dest.check() {
        return usage(e);
    }
    let schema = match args.schema.as_deref().map(crate::schema::JobSchema::load) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return usage(chain(&e)),
    };
    let (input, size) = match process::open_input(&args.input, args.follow_symlinks) {
        Ok(opened) => opened,
        Err(e) => return usage(e),
    };
    match process::run(
        input,
        size,
        plan,
        &policies.sandbox,
        process::Reading {
            delimiter: args.delimiter,
            schema: schema.as_ref(),
        },
        &dest,
        &process::Cancel::default(),
    ) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            tracing::error!(error = %chain(&e), "processing failed");
            eprintln!("airlock: {}", chain(&e));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

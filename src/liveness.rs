//! Liveness for `GET /healthz`: the answer comes from things that stop when the process is
//! wedged, not from a handler that would answer "ok" regardless. A ticker task on the runtime
//! beats every second; a supervisor running in the process beats on every turn of its claim
//! loop. `/healthz` fails (503, naming the part) when a beat is older than its limit, and it
//! cannot answer at all when the runtime is blocked — either way the probe fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The runtime's ticker must have beaten within this.
pub const RUNTIME_LIMIT: Duration = Duration::from_secs(5);
/// A supervisor's claim loop must have turned within this. A turn can wait out a database
/// outage's backoff (≤ 30 s) plus a connection attempt (≤ 30 s), so the limit is well above.
pub const SUPERVISOR_LIMIT: Duration = Duration::from_secs(120);

const NEVER: u64 = u64::MAX;

/// Heartbeats, shared by the server and the supervisor of one process.
#[derive(Debug, Clone)]
pub struct Liveness(Arc<Beats>);

#[derive(Debug)]
struct Beats {
    origin: Instant,
    runtime: AtomicU64,
    supervisor: AtomicU64,
    runtime_limit: Duration,
    supervisor_limit: Duration,
}

/// Which part stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    Runtime,
    Supervisor,
}

impl Stalled {
    pub fn as_str(self) -> &'static str {
        match self {
            Stalled::Runtime => "runtime",
            Stalled::Supervisor => "supervisor",
        }
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::with_limits(RUNTIME_LIMIT, SUPERVISOR_LIMIT)
    }
}

impl Liveness {
    /// Heartbeats with other limits (tests shorten them).
    pub fn with_limits(runtime: Duration, supervisor: Duration) -> Self {
        Liveness(Arc::new(Beats {
            origin: Instant::now(),
            runtime: AtomicU64::new(0),
            supervisor: AtomicU64::new(NEVER),
            runtime_limit: runtime,
            supervisor_limit: supervisor,
        }))
    }

    /// Beats with the runtime's ticker running (call inside a tokio runtime).
    pub fn start() -> Self {
        Self::default().ticking()
    }

    /// Start the runtime's ticker on these heartbeats.
    pub fn ticking(self) -> Self {
        let me = self;
        let ticker = me.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                ticker.beat_runtime();
            }
        });
        me
    }

    fn elapsed_ms(&self) -> u64 {
        self.0.origin.elapsed().as_millis() as u64
    }

    pub fn beat_runtime(&self) {
        self.0.runtime.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// A supervisor's claim loop turned (it is watched from its first beat on).
    pub fn beat_supervisor(&self) {
        self.0
            .supervisor
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// A supervisor that stopped on purpose (shutdown) is no longer watched.
    pub fn supervisor_stopped(&self) {
        self.0.supervisor.store(NEVER, Ordering::Relaxed);
    }

    /// The first part whose beat is older than its limit.
    pub fn check(&self) -> Result<(), Stalled> {
        let now = self.elapsed_ms();
        let stale = |beat: u64, limit: Duration| {
            beat != NEVER && now.saturating_sub(beat) > limit.as_millis() as u64
        };
        if stale(self.0.runtime.load(Ordering::Relaxed), self.0.runtime_limit) {
            return Err(Stalled::Runtime);
        }
        if stale(
            self.0.supervisor.load(Ordering::Relaxed),
            self.0.supervisor_limit,
        ) {
            return Err(Stalled::Supervisor);
        }
        Ok(())
    }
}

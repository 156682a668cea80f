//! Streams the HTTP/2 layer (h2, under hyper and tonic) resets before the ALS service sees them.
//!
//! h2 refuses a request whose pseudo-headers it cannot turn into an `http::Request` (a missing
//! `:method` or `:scheme`, a bad `:path`, ...) by resetting the stream with PROTOCOL_ERROR; the
//! only trace is a `debug` event of target `h2::server` ("malformed headers: ..."). Envoy then
//! shows only `upstream_rq_502` / `rx_reset` on the collector's cluster and every entry of the
//! stream is lost. [`layer`] is a `tracing` layer that listens to exactly that target (its
//! debug callsites are all on refusal paths, none per frame), counts each refusal by reason
//! (`meshaudit_als_streams_refused_total{reason}` in /metrics) and logs a warning with the fix
//! the first time each reason occurs.
//!
//! The one refusal a real Envoy triggers, an `:authority` that is not a URI authority (an Istio
//! cluster name such as `outbound|9000||meshaudit.meshaudit.svc.cluster.local`), is accepted by
//! the patched h2 in vendor/h2 (see ARCHITECTURE.md); if a build ever runs without that patch,
//! it is counted here as `malformed_authority`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer};

/// Why h2 reset a stream, from its "malformed headers: ..." message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MalformedAuthority,
    MalformedPath,
    MalformedScheme,
    MissingPseudoHeader,
    /// Any other request h2 could not build (counted so nothing is silent).
    Other,
}

const ALL: [Refusal; 5] = [
    Refusal::MalformedAuthority,
    Refusal::MalformedPath,
    Refusal::MalformedScheme,
    Refusal::MissingPseudoHeader,
    Refusal::Other,
];

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MalformedAuthority => "malformed_authority",
            Refusal::MalformedPath => "malformed_path",
            Refusal::MalformedScheme => "malformed_scheme",
            Refusal::MissingPseudoHeader => "missing_pseudo_header",
            Refusal::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn fix(self) -> &'static str {
        match self {
            Refusal::MalformedAuthority => {
                "this build lacks the h2 patch in vendor/h2 (Istio cluster names as :authority); \
                 build with it, or set `authority` on the logger's envoy_grpc service \
                 (Istio's Telemetry API providers do)"
            }
            _ => {
                "the client is not a conforming gRPC client; Envoy's access loggers are. Check \
                 what connects to the ALS port"
            }
        }
    }

    /// Classifies h2's message ("malformed headers: malformed authority (...)", ...).
    pub fn from_message(msg: &str) -> Option<Refusal> {
        if msg.starts_with("malformed headers: malformed authority") {
            Some(Refusal::MalformedAuthority)
        } else if msg.starts_with("malformed headers: malformed path") {
            Some(Refusal::MalformedPath)
        } else if msg.starts_with("malformed headers: malformed scheme") {
            Some(Refusal::MalformedScheme)
        } else if msg.starts_with("malformed headers: missing") {
            Some(Refusal::MissingPseudoHeader)
        } else if msg.starts_with("malformed headers:")
            || msg.starts_with("stream error PROTOCOL_ERROR -- error building request")
        {
            Some(Refusal::Other)
        } else {
            None
        }
    }
}

static COUNTS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static LOGGED: [AtomicBool; 5] = [const { AtomicBool::new(false) }; 5];

/// Counts one refusal; the first of each reason is logged with its fix.
pub fn record(why: Refusal) {
    COUNTS[why.index()].fetch_add(1, Relaxed);
    if !LOGGED[why.index()].swap(true, Relaxed) {
        tracing::warn!(
            reason = why.as_str(),
            fix = why.fix(),
            "the HTTP/2 layer reset an ALS stream before the collector saw it: every entry \
             on it is lost (Envoy shows upstream_rq_502 / rx_reset); counted in \
             meshaudit_als_streams_refused_total, logged once per reason"
        );
    }
}

pub fn count(why: Refusal) -> u64 {
    COUNTS[why.index()].load(Relaxed)
}

/// Appends `meshaudit_als_streams_refused_total{reason}` (Prometheus text).
pub fn render(out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP meshaudit_als_streams_refused_total ALS streams the HTTP/2 layer reset before the \
         collector saw them, by reason\n# TYPE meshaudit_als_streams_refused_total counter"
    );
    for r in ALL {
        let _ = writeln!(
            out,
            "meshaudit_als_streams_refused_total{{reason=\"{}\"}} {}",
            r.as_str(),
            count(r)
        );
    }
}

struct Message(Option<String>);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

struct Counting;

impl<S: Subscriber> Layer<S> for Counting {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut m = Message(None);
        event.record(&mut m);
        if let Some(why) = m.0.as_deref().and_then(Refusal::from_message) {
            record(why);
        }
    }
}

/// The counting layer, filtered to h2's server module at debug (whatever `RUST_LOG` says).
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let only_h2_server: Targets = Targets::new().with_target("h2::server", LevelFilter::DEBUG);
    Counting.with_filter(only_h2_server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_h2_messages() {
        let cases = [
            (
                "malformed headers: malformed authority (\"outbound|9000||x\"): invalid uri character",
                Some(Refusal::MalformedAuthority),
            ),
            ("malformed headers: missing method", Some(Refusal::MissingPseudoHeader)),
            ("malformed headers: missing scheme", Some(Refusal::MissingPseudoHeader)),
            ("malformed headers: malformed path (\"x\"): bad", Some(Refusal::MalformedPath)),
            ("malformed headers: :status field on request", Some(Refusal::Other)),
            (
                "stream error PROTOCOL_ERROR -- error building request: x; stream=1",
                Some(Refusal::Other),
            ),
            ("accepted :authority that is not a URI authority (\"a|b\"): x", None),
            ("connection error PROTOCOL_ERROR -- read_preface: invalid preface;", None),
        ];
        for (msg, want) in cases {
            assert_eq!(Refusal::from_message(msg), want, "{msg}");
        }
    }

    #[test]
    fn an_h2_server_debug_event_is_counted_whatever_the_log_filter() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry()
            .with(layer())
            .with(tracing_subscriber::fmt::layer().with_filter(LevelFilter::ERROR));
        let before = count(Refusal::MalformedScheme);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "h2::server", "malformed headers: malformed scheme (\"x\"): y");
            // Other targets and other messages are not refusals.
            tracing::debug!(target: "h2::codec", "malformed headers: malformed scheme (\"x\"): y");
            tracing::debug!(target: "h2::server", "Connection::poll; IO error");
        });
        assert_eq!(count(Refusal::MalformedScheme), before + 1);
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("meshaudit_als_streams_refused_total{reason=\"malformed_scheme\"}"));
    }
}

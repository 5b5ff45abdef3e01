//! Rules: which requests (method, path, query), which of them (the Nth,
//! every Nth…), and what happens to them; and the pure decision of what a
//! request gets, given the rules in force and their counts.

use std::sync::Arc;
use std::time::Duration;

use super::http::RequestHead;

/// A rule added to a [`FaultProxy`](super::FaultProxy), to read its counts
/// or clear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(pub(super) usize);

/// What a rule does to the requests it picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fault {
    /// Answer with this status and body, without forwarding.
    Respond { status: u16, body: Arc<[u8]> },
    /// Reset the connection as soon as the request head has arrived.
    Reset,
    /// Forward the head and this many body bytes, then reset.
    ResetRequestAfter(u64),
    /// Forward the request, then the response head and this many body
    /// bytes, then reset.
    ResetResponseAfter(u64),
    /// Hold the request this long (`None`: until the rule is cleared),
    /// then forward it.
    Stall(Option<Duration>),
    /// Forward at most this many bytes per second each way.
    Throttle(u64),
}

/// Which of the matching requests a rule picks, counted from 1 in the order
/// the proxy read their heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    Nth(u64),
    Every(u64),
    First(u64),
    After(u64),
}

impl When {
    // `u64::is_multiple_of` is newer than the workspace's rust-version, 1.85.
    #[allow(clippy::manual_is_multiple_of)]
    fn picks(self, count: u64) -> bool {
        match self {
            When::Always => true,
            When::Nth(n) => count == n,
            When::Every(n) => count % n == 0,
            When::First(n) => count <= n,
            When::After(n) => count > n,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Method(String),
    Path(String),
    PathStartsWith(String),
    PathEndsWith(String),
    PathContains(String),
    QueryContains(String),
}

impl Test {
    fn passes(&self, request: &RequestHead) -> bool {
        match self {
            Test::Method(m) => request.method.eq_ignore_ascii_case(m),
            Test::Path(p) => request.path() == p,
            Test::PathStartsWith(p) => request.path().starts_with(p.as_str()),
            Test::PathEndsWith(p) => request.path().ends_with(p.as_str()),
            Test::PathContains(p) => request.path().contains(p.as_str()),
            Test::QueryContains(q) => request.query().contains(q.as_str()),
        }
    }
}

/// A fault-proxy rule, built in three parts: which requests match (every
/// test must pass; none: every request), which matching requests it picks
/// (default: all), and what it does to them (default: nothing, the rule
/// only counts).
///
/// Paths and queries are compared as sent, percent-encoding included; with
/// path-style addressing the path starts with the bucket
/// (`/bucket/prefix/key`). The AWS SDK names most operations in the query:
/// `x-id=PutObject`, `x-id=GetObject`, `x-id=UploadPart&partNumber=3…`;
/// CreateMultipartUpload is `POST …?uploads`, CompleteMultipartUpload
/// `POST …?uploadId=…`, ListObjectsV2 `GET /bucket?list-type=2…`.
///
/// ```
/// use std::time::Duration;
/// use refugio_testkit::fault_proxy::{Rule, SLOW_DOWN_XML};
///
/// // Every 5th UploadPart is answered 503 SlowDown.
/// let throttled = Rule::new()
///     .method("PUT")
///     .query_contains("partNumber=")
///     .every(5)
///     .respond(503, SLOW_DOWN_XML);
/// // The first download of a dump is cut after 64 KiB of its body.
/// let cut = Rule::new()
///     .method("GET")
///     .path_ends_with("/database.dump.zst")
///     .nth(1)
///     .reset_response_after(64 * 1024);
/// // Every DELETE waits 2 s.
/// let slow = Rule::new().method("DELETE").stall(Duration::from_secs(2));
/// # let _ = (throttled, cut, slow);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Rule {
    tests: Vec<Test>,
    when: When,
    pub(super) fault: Option<Fault>,
}

impl Default for Rule {
    fn default() -> Self {
        Rule::new()
    }
}

impl Rule {
    /// Matches every request, picks all, does nothing (counts only).
    pub fn new() -> Rule {
        Rule {
            tests: Vec::new(),
            when: When::Always,
            fault: None,
        }
    }

    fn test(mut self, test: Test) -> Rule {
        self.tests.push(test);
        self
    }

    /// Requests with this method (`"PUT"`, `"GET"`…; case-insensitive).
    pub fn method(self, method: &str) -> Rule {
        self.test(Test::Method(method.to_string()))
    }

    /// Requests for exactly this path (without the query).
    pub fn path(self, path: &str) -> Rule {
        self.test(Test::Path(path.to_string()))
    }

    /// Requests whose path starts with `prefix` (`/bucket/prefix/`).
    pub fn path_starts_with(self, prefix: &str) -> Rule {
        self.test(Test::PathStartsWith(prefix.to_string()))
    }

    /// Requests whose path ends with `suffix` (a key's last part).
    pub fn path_ends_with(self, suffix: &str) -> Rule {
        self.test(Test::PathEndsWith(suffix.to_string()))
    }

    /// Requests whose path contains `part`.
    pub fn path_contains(self, part: &str) -> Rule {
        self.test(Test::PathContains(part.to_string()))
    }

    /// Requests whose query contains `part` (`"partNumber="`, `"uploads"`).
    pub fn query_contains(self, part: &str) -> Rule {
        self.test(Test::QueryContains(part.to_string()))
    }

    /// Picks only the `n`th matching request (from 1).
    pub fn nth(self, n: u64) -> Rule {
        self.when(When::Nth(positive(n, "nth")))
    }

    /// Picks the `n`th, `2n`th, `3n`th… matching request.
    pub fn every(self, n: u64) -> Rule {
        self.when(When::Every(positive(n, "every")))
    }

    /// Picks the first `n` matching requests.
    pub fn first(self, n: u64) -> Rule {
        self.when(When::First(n))
    }

    /// Picks every matching request after the first `n`.
    pub fn after(self, n: u64) -> Rule {
        self.when(When::After(n))
    }

    fn when(mut self, when: When) -> Rule {
        self.when = when;
        self
    }

    fn fault(mut self, fault: Fault) -> Rule {
        self.fault = Some(fault);
        self
    }

    /// Answers `status` with `body` (sent as `application/xml`, e.g.
    /// [`SLOW_DOWN_XML`](super::SLOW_DOWN_XML)) instead of forwarding; the
    /// request's body is read and dropped, and the connection stays usable.
    pub fn respond(self, status: u16, body: impl Into<Vec<u8>>) -> Rule {
        let body: Vec<u8> = body.into();
        self.fault(Fault::Respond {
            status,
            body: body.into(),
        })
    }

    /// Resets the connection (TCP RST) as soon as the request head has
    /// arrived; nothing reaches the server.
    pub fn reset(self) -> Rule {
        self.fault(Fault::Reset)
    }

    /// Forwards the request head and the first `bytes` bytes of its body
    /// (as sent, chunk framing included), then resets the connection to the
    /// client and closes the one to the server. A body of `bytes` or fewer
    /// reaches the server whole, and the reset comes before any response.
    pub fn reset_request_after(self, bytes: u64) -> Rule {
        self.fault(Fault::ResetRequestAfter(bytes))
    }

    /// Forwards the request, then the response head and the first `bytes`
    /// bytes of the response body, then resets the connection to the client.
    /// A body of `bytes` or fewer arrives whole before the reset.
    pub fn reset_response_after(self, bytes: u64) -> Rule {
        self.fault(Fault::ResetResponseAfter(bytes))
    }

    /// Holds the request for `time` (or until the rule is cleared, if
    /// sooner) before forwarding it; the client sees nothing meanwhile.
    pub fn stall(self, time: Duration) -> Rule {
        self.fault(Fault::Stall(Some(time)))
    }

    /// Holds the request until the rule is cleared (or the proxy dropped).
    pub fn stall_forever(self) -> Rule {
        self.fault(Fault::Stall(None))
    }

    /// Forwards the request and its response at most `bytes_per_second` each
    /// way (at least 1), while the rule is in force: clearing it lifts the
    /// limit at once, also mid-transfer. Unlike the other faults a throttle
    /// combines with another rule's fault on the same request.
    pub fn throttle(self, bytes_per_second: u64) -> Rule {
        self.fault(Fault::Throttle(bytes_per_second.max(1)))
    }

    pub(super) fn matches(&self, request: &RequestHead) -> bool {
        self.tests.iter().all(|t| t.passes(request))
    }
}

fn positive(n: u64, what: &str) -> u64 {
    assert!(n >= 1, "Rule::{what}({n}): counts start at 1");
    n
}

/// Counts of one rule, kept after it is cleared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Requests that matched the rule's method, path and query while it was
    /// in force (whether or not it picked them).
    pub matched: u64,
    /// Requests the rule's fault was applied to. A rule without a fault
    /// never injects; a picked request already taken by an earlier rule's
    /// fault (other than a throttle) is not counted.
    pub injected: u64,
}

/// A rule in force.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) id: RuleId,
    pub(super) rule: Rule,
}

/// What one request gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// The first picking rule's fault other than a throttle.
    pub(super) fault: Option<(RuleId, Fault)>,
    /// Throttling rules that picked the request, with their rates.
    pub(super) throttles: Vec<(RuleId, u64)>,
}

impl Plan {
    /// Every rule whose fault the request got.
    pub(super) fn rules(&self) -> Vec<RuleId> {
        let mut rules: Vec<RuleId> = self.fault.iter().map(|(id, _)| *id).collect();
        rules.extend(self.throttles.iter().map(|(id, _)| *id));
        rules.sort_by_key(|id| id.0);
        rules
    }
}

/// Counts `request` against every rule in force (in the order they were
/// added) and says what it gets: the first picking rule's fault, and every
/// picking throttle.
pub(super) fn decide(rules: &[Active], stats: &mut [RuleStats], request: &RequestHead) -> Plan {
    let mut plan = Plan::default();
    for active in rules {
        if !active.rule.matches(request) {
            continue;
        }
        let stats = &mut stats[active.id.0];
        stats.matched += 1;
        if !active.rule.when.picks(stats.matched) {
            continue;
        }
        match &active.rule.fault {
            None => {}
            Some(Fault::Throttle(rate)) => {
                plan.throttles.push((active.id, *rate));
                stats.injected += 1;
            }
            Some(fault) if plan.fault.is_none() => {
                plan.fault = Some((active.id, fault.clone()));
                stats.injected += 1;
            }
            Some(_) => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::super::http::Framing;
    use super::*;

    fn request(method: &str, target: &str) -> RequestHead {
        RequestHead {
            method: method.into(),
            target: target.into(),
            framing: Framing::Empty,
            expects_continue: false,
            close: false,
        }
    }

    fn run(rules: Vec<Rule>, requests: &[(&str, &str)]) -> (Vec<Plan>, Vec<RuleStats>) {
        let active: Vec<Active> = rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| Active {
                id: RuleId(i),
                rule,
            })
            .collect();
        let mut stats = vec![RuleStats::default(); active.len()];
        let plans = requests
            .iter()
            .map(|(m, t)| decide(&active, &mut stats, &request(m, t)))
            .collect();
        (plans, stats)
    }

    #[test]
    fn tests_compare_method_path_and_query() {
        let part = request("PUT", "/b/p/k.zst?x-id=UploadPart&partNumber=2&uploadId=u");
        let get = request("GET", "/b/p/k.zst?x-id=GetObject");
        let cases = [
            (Rule::new(), true, true),
            (Rule::new().method("put"), true, false),
            (Rule::new().path("/b/p/k.zst"), true, true),
            (Rule::new().path("/b/p"), false, false),
            (Rule::new().path_starts_with("/b/p/"), true, true),
            (Rule::new().path_ends_with(".zst"), true, true),
            (Rule::new().path_ends_with("?x-id=GetObject"), false, false),
            (Rule::new().path_contains("/p/"), true, true),
            (Rule::new().query_contains("partNumber="), true, false),
            (
                Rule::new().method("GET").query_contains("x-id"),
                false,
                true,
            ),
        ];
        for (rule, on_part, on_get) in cases {
            assert_eq!(rule.matches(&part), on_part, "{rule:?} on UploadPart");
            assert_eq!(rule.matches(&get), on_get, "{rule:?} on GetObject");
        }
    }

    #[test]
    fn picks_by_count_of_matching_requests() {
        let count = |rule: Rule| {
            let requests = [("PUT", "/b/k?partNumber=1"), ("GET", "/b/k")].repeat(6);
            let (plans, stats) = run(vec![rule.method("PUT").reset()], &requests);
            let picked: Vec<usize> = plans
                .iter()
                .enumerate()
                .filter(|(_, p)| p.fault.is_some())
                .map(|(i, _)| i / 2 + 1)
                .collect();
            assert_eq!(stats[0].matched, 6);
            assert_eq!(stats[0].injected, picked.len() as u64);
            picked
        };
        assert_eq!(count(Rule::new()), [1, 2, 3, 4, 5, 6]);
        assert_eq!(count(Rule::new().nth(2)), [2]);
        assert_eq!(count(Rule::new().nth(9)), [0usize; 0]);
        assert_eq!(count(Rule::new().every(3)), [3, 6]);
        assert_eq!(count(Rule::new().first(2)), [1, 2]);
        assert_eq!(count(Rule::new().after(4)), [5, 6]);
    }

    #[test]
    fn the_first_picking_fault_wins_and_throttles_add_up() {
        let rules = vec![
            Rule::new().method("GET"),
            Rule::new().nth(2).respond(503, "slow"),
            Rule::new().reset(),
            Rule::new().throttle(1000),
            Rule::new().method("GET").throttle(10),
        ];
        let (plans, stats) = run(rules, &[("GET", "/a"), ("GET", "/b"), ("PUT", "/c")]);
        assert_eq!(plans[0].fault, Some((RuleId(2), Fault::Reset)));
        assert!(matches!(
            plans[1].fault,
            Some((RuleId(1), Fault::Respond { status: 503, .. }))
        ));
        assert_eq!(plans[1].throttles, [(RuleId(3), 1000), (RuleId(4), 10)]);
        assert_eq!(
            plans[1].rules(),
            [RuleId(1), RuleId(3), RuleId(4)],
            "the reset rule matched but another fault took the request"
        );
        assert_eq!(plans[2].throttles, [(RuleId(3), 1000)]);
        let counts: Vec<(u64, u64)> = stats.iter().map(|s| (s.matched, s.injected)).collect();
        assert_eq!(counts, [(2, 0), (3, 1), (3, 2), (3, 3), (2, 2)]);
    }

    #[test]
    #[should_panic(expected = "counts start at 1")]
    fn nth_zero_is_a_mistake() {
        let _ = Rule::new().nth(0);
    }
}

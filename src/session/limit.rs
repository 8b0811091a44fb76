//! Per-connection token bucket (rate N/s, burst 2N) and the strike counter
//! that turns sustained abuse into a 1008 close.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket refilled continuously.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    strikes: u32,
    window_start: Instant,
}

/// Outcome of [`TokenBucket::take`].
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The command may run.
    Allow,
    /// Refused; retry after this long.
    Limited(Duration),
    /// Refused too often: close the connection (1008).
    Abuse,
}

/// Window over which refusals are counted towards abuse.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);

impl TokenBucket {
    /// A full bucket with `rate` tokens per second and a burst of `2 × rate`.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        let now = Instant::now();
        TokenBucket {
            rate,
            burst: rate * 2.0,
            tokens: rate * 2.0,
            last: now,
            strikes: 0,
            window_start: now,
        }
    }

    /// Takes one token. A client refused more than `5 × rate` times within
    /// 10 seconds is abusive.
    pub fn take(&mut self) -> Verdict {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.duration_since(self.window_start) > STRIKE_WINDOW {
            self.window_start = now;
            self.strikes = 0;
        }
        self.strikes += 1;
        if f64::from(self.strikes) > self.rate * 5.0 {
            return Verdict::Abuse;
        }
        let wait = (1.0 - self.tokens) / self.rate;
        Verdict::Limited(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let mut b = TokenBucket::new(10);
        for _ in 0..20 {
            assert_eq!(b.take(), Verdict::Allow);
        }
        match b.take() {
            Verdict::Limited(d) => assert!(d <= Duration::from_millis(100) && !d.is_zero()),
            v => panic!("{v:?}"),
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(b.take(), Verdict::Allow);
        assert!(matches!(b.take(), Verdict::Limited(_)));
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..20 {
            assert_eq!(
                b.take(),
                Verdict::Allow,
                "refilled to the burst, not beyond"
            );
        }
        assert!(matches!(b.take(), Verdict::Limited(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn sustained_abuse_is_detected() {
        let mut b = TokenBucket::new(2);
        for _ in 0..4 {
            b.take();
        }
        let mut verdicts = Vec::new();
        for _ in 0..11 {
            verdicts.push(b.take());
        }
        assert!(verdicts[..10]
            .iter()
            .all(|v| matches!(v, Verdict::Limited(_))));
        assert_eq!(verdicts[10], Verdict::Abuse);
    }
}

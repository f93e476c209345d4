//! Test support: a small seeded generator, so property tests are reproducible without a crate.

/// SplitMix64: tiny, fast and good enough to draw test inputs.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (slight modulo bias is irrelevant for tests).
    pub(crate) fn range(&mut self, low: i64, high: i64) -> i64 {
        assert!(low <= high);
        let span = (high - low) as u64 + 1;
        low + (self.next_u64() % span) as i64
    }

    /// True with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// The schema the model must fit.
pub(crate) const MIGRATION: &str = include_str!("../../../../migrations/12_render_jobs.sql");

/// The quoted values of the CHECK constraint `name` in [`MIGRATION`], in order of appearance
/// (e.g. the state list of `render_jobs_state_check`).
pub(crate) fn check_values(name: &str) -> Vec<String> {
    let marker = format!("CONSTRAINT {name} CHECK");
    let at = MIGRATION.find(&marker).unwrap_or_else(|| panic!("no constraint {name}"));
    let body = &MIGRATION[at + marker.len()..];
    let end = body.find("CONSTRAINT ").into_iter().chain(body.find("\n);")).min().unwrap_or(body.len());
    body[..end].split('\'').skip(1).step_by(2).map(str::to_owned).collect()
}

//! The benchmarks' figures: nearest-rank percentiles, printed one way.

/// Nearest-rank percentile of `v` (sorted here).
pub fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

pub fn report(name: &str, v: &[f64]) {
    if v.is_empty() {
        println!("BENCH {name} n=0");
        return;
    }
    println!(
        "BENCH {name} n={} median={:.0} p90={:.0} p99={:.0} max={:.0} ms",
        v.len(),
        pct(v, 50.0),
        pct(v, 90.0),
        pct(v, 99.0),
        pct(v, 100.0)
    );
}

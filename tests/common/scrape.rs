//! Reading groxy's /metrics text (the Prometheus exposition format) into samples keyed
//! by series, so that tests compare counters across a scrape before and after.

/// A series name with its labels in sorted order: `name{a="x",b="y"}`.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    l.sort();
    if l.is_empty() {
        name.into()
    } else {
        format!("{name}{{{}}}", l.join(","))
    }
}

/// One sample line (not a comment, not empty): its series as [`series`] names it, and its
/// value; None if the line is not `series value`.
pub fn sample(line: &str) -> Option<(String, f64)> {
    let (s, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let key = match s.split_once('{') {
        Some((name, rest)) => {
            let labels: Vec<(&str, &str)> = rest
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
                .collect::<Option<_>>()?;
            series(name, &labels)
        }
        None => s.to_string(),
    };
    Some((key, value))
}

/// The sample lines of a scrape (comments and empty lines left out).
pub fn sample_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
}

//! A parser for the Prometheus text format (what `/metrics` serves).

use std::collections::BTreeMap;

/// One sample line: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The metric name.
    pub name: String,
    /// The labels.
    pub labels: BTreeMap<String, String>,
    /// The value (`+Inf`/`-Inf` included).
    pub value: f64,
}

/// A parsed `/metrics` scrape.
pub struct Metrics {
    /// The scrape as received.
    pub text: String,
    /// Every sample line, in order.
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses a scrape; comment lines and lines that are not samples are skipped.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = parse_sample(line) {
                samples.push(s);
            }
        }
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum over matching samples (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name_labels, rest) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..=close], &line[close + 1..])
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], &line[sp..])
        }
    };
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match name_labels.find('{') {
        Some(open) => {
            let inner = &name_labels[open + 1..name_labels.len() - 1];
            (&name_labels[..open], parse_labels(inner)?)
        }
        None => (name_labels, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(inner: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].trim_start();
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.insert(key, value);
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parser() {
        let m = Metrics::parse(
            "# TYPE edgeplane_requests_total counter\n\
             edgeplane_requests_total{status=\"200\"} 3\n\
             edgeplane_requests_total{status=\"206\",tier=\"flash\"} 5\n\
             edgeplane_requests_total{status=\"206\",tier=\"storage\"} 2 1700000000\n\
             edgeplane_open_connections 1\n\
             edgeplane_ttfb_seconds{quantile=\"0.99\"} 1.5e-3\n",
        );
        assert_eq!(m.sum("edgeplane_requests_total", &[("status", "206")]), 7.0);
        assert_eq!(m.sum("edgeplane_requests_total", &[]), 10.0);
        assert_eq!(m.sum("edgeplane_open_connections", &[]), 1.0);
        assert!(m.has("edgeplane_ttfb_seconds"));
        assert_eq!(
            m.sum("edgeplane_ttfb_seconds", &[("quantile", "0.99")]),
            1.5e-3
        );
    }
}

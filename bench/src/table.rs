//! `kvmesh-bench table`: JSON reports in, Markdown comparison tables out.
//!
//! Load runs become one row per workload (operation mix and pipeline) and one column group per
//! label (throughput, p99, server CPU per request, errors), followed by each later label's
//! ratio to the first. A workload run several times per label (rounds, as `bench/compare.sh`
//! makes them) shows the median of each figure, the sum of the errors, and for each ratio the
//! median of the rounds' own ratios (the i-th run of a label against the i-th run of its
//! base), with their range. Prefill-only runs become a memory table.

use std::io::Read;

use anyhow::Context;

use crate::args::TableArgs;
use crate::report::Report;

pub fn run(args: TableArgs) -> anyhow::Result<()> {
    let mut text = String::new();
    if args.files.is_empty() {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
    }
    for file in &args.files {
        text.push_str(
            &std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?,
        );
        text.push('\n');
    }
    let reports = parse_lines(&text);
    let mut ratios = Vec::new();
    for text in &args.ratios {
        match text.split_once('/') {
            Some((label, base)) if !label.is_empty() && !base.is_empty() => {
                ratios.push((label.to_string(), base.to_string()))
            }
            _ => anyhow::bail!("--ratio {text:?} is not LABEL/BASE"),
        }
    }
    print!("{}", render(&reports, args.title.as_deref(), &ratios));
    Ok(())
}

/// Every line that is a JSON object, as a report; other lines are skipped.
pub fn parse_lines(text: &str) -> Vec<Report> {
    let objects = text.lines().map(str::trim).filter(|l| l.starts_with('{'));
    objects
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(report) => Some(report),
            Err(e) => {
                eprintln!("skipping a line that is not a report: {e}");
                None
            }
        })
        .collect()
}

/// The tables for `reports`. `ratios` names the (label, base) pairs whose ratios are shown;
/// empty: every later label over the first.
pub fn render(reports: &[Report], title: Option<&str>, ratios: &[(String, String)]) -> String {
    let mut out = String::new();
    if let Some(title) = title {
        out.push_str(&format!("### {title}\n\n"));
    }
    let loads: Vec<&Report> = reports
        .iter()
        .filter(|r| r.mode != "prefill-only")
        .collect();
    let memory: Vec<&Report> = reports
        .iter()
        .filter(|r| r.mode == "prefill-only")
        .collect();
    if !loads.is_empty() {
        out.push_str(&load_table(&loads, ratios));
    }
    if !memory.is_empty() {
        if !loads.is_empty() {
            out.push('\n');
        }
        out.push_str(&memory_table(&memory));
    }
    out
}

fn workload(r: &Report) -> String {
    match r.read_ratio {
        x if x >= 1.0 => "GET".into(),
        x if x <= 0.0 => "SET".into(),
        x => format!("{:.0}% GET", x * 100.0),
    }
}

fn row_key(r: &Report) -> (String, usize, usize, usize, u32, String, Option<u64>) {
    (
        workload(r),
        r.pipeline,
        r.connections,
        r.value_size,
        r.keys,
        r.key_dist.clone(),
        r.rate.map(f64::to_bits),
    )
}

fn load_table(loads: &[&Report], ratios: &[(String, String)]) -> String {
    let labels = unique(loads.iter().map(|r| r.label.clone()));
    let ratios: Vec<(String, String)> = if ratios.is_empty() {
        let base = &labels[0];
        labels
            .iter()
            .skip(1)
            .map(|l| (l.clone(), base.clone()))
            .collect()
    } else {
        ratios.to_vec()
    };
    let rows = unique(loads.iter().map(|r| row_key(r)));
    let first = loads[0];
    let mut caption = format!(
        "{} connections, {} keys ({}), {}-byte values, {} loop",
        first.connections, first.keys, first.key_dist, first.value_size, first.mode
    );
    if rows
        .iter()
        .any(|k| k.2 != first.connections || k.3 != first.value_size || k.4 != first.keys)
    {
        caption.push_str(" (first row; others differ)");
    }
    let most_runs = rows
        .iter()
        .flat_map(|key| labels.iter().map(move |l| (key, l)))
        .map(|(key, l)| {
            loads
                .iter()
                .filter(|r| &r.label == l && row_key(r) == *key)
                .count()
        })
        .max()
        .unwrap_or(0);
    if most_runs > 1 {
        caption.push_str(&format!(
            "; each figure the median of {most_runs} rounds (errors: their sum), each ratio the \
             median of the rounds' own ratios (range in brackets)"
        ));
    }
    let mut header = vec!["workload".to_string(), "pipeline".to_string()];
    for label in &labels {
        header.extend([
            format!("{label} ops/s"),
            format!("{label} p99 us"),
            format!("{label} CPU us/req"),
            format!("{label} errors"),
        ]);
    }
    for (label, base) in &ratios {
        header.push(format!("{label}/{base} ops/s"));
        header.push(format!("{label}/{base} CPU/req"));
    }
    let mut body = Vec::new();
    for key in &rows {
        // Every run of `label` for this row, in the order they were made: one per round. Runs
        // pair with their base's by that order (the i-th with the i-th), so every label must
        // have run in every round, as compare.sh, which stops at a failed run, makes sure.
        let runs = |label: &String| -> Vec<&Report> {
            loads
                .iter()
                .copied()
                .filter(|r| &r.label == label && row_key(r) == *key)
                .collect()
        };
        let mut row = vec![key.0.clone(), key.1.to_string()];
        for label in &labels {
            let runs = runs(label);
            if runs.is_empty() {
                row.extend(["-".to_string(), "-".into(), "-".into(), "-".into()]);
                continue;
            }
            let of = |f: fn(&Report) -> Option<f64>| median(runs.iter().filter_map(|r| f(r)));
            row.extend([
                of(|r| Some(r.ops_per_sec)).map_or("-".into(), thousands),
                of(|r| Some(r.p99_us)).map_or("-".into(), |p| format!("{p:.0}")),
                of(|r| r.server_cpu_us_per_req).map_or("-".into(), |c| format!("{c:.2}")),
                runs.iter().map(|r| r.errors).sum::<u64>().to_string(),
            ]);
        }
        for (label, base) in &ratios {
            let (others, bases) = (runs(label), runs(base));
            let ratio = |f: fn(&Report) -> Option<f64>| {
                let paired: Vec<f64> = others
                    .iter()
                    .zip(&bases)
                    .filter_map(|(o, b)| match (f(o), f(b)) {
                        (Some(o), Some(b)) if b > 0.0 => Some(o / b),
                        _ => None,
                    })
                    .collect();
                ratio_cell(&paired)
            };
            row.push(ratio(|r| Some(r.ops_per_sec)));
            row.push(ratio(|r| r.server_cpu_us_per_req));
        }
        body.push(row);
    }
    format!("{caption}\n\n{}", markdown(&header, &body, 2))
}

fn memory_table(memory: &[&Report]) -> String {
    let header: Vec<String> = [
        "system",
        "keys",
        "value bytes",
        "RSS before MiB",
        "RSS after MiB",
        "bytes per key",
    ]
    .map(String::from)
    .to_vec();
    let mib = |b: Option<u64>| {
        b.map_or("-".into(), |b| {
            format!("{:.1}", b as f64 / (1 << 20) as f64)
        })
    };
    let body: Vec<Vec<String>> = memory
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                r.prefill_keys.to_string(),
                r.value_size.to_string(),
                mib(r.server_rss_before),
                mib(r.server_rss_after),
                r.rss_bytes_per_key
                    .map_or("-".into(), |b| format!("{b:.1}")),
            ]
        })
        .collect();
    format!(
        "Resident memory after loading the keys\n\n{}",
        markdown(&header, &body, 1)
    )
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// A ratio cell: `1.05x` for one round, `1.05x (0.98–1.12)` (median, then range) for several.
fn ratio_cell(rounds: &[f64]) -> String {
    let Some(mid) = median(rounds.iter().copied()) else {
        return "-".into();
    };
    if rounds.len() == 1 {
        return format!("{mid:.2}x");
    }
    let lo = rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{mid:.2}x ({lo:.2}–{hi:.2})")
}

fn unique<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

/// `1234567.4` → `1,234,567`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A padded Markdown table; the first `left` columns are left-aligned, the rest right-aligned.
fn markdown(header: &[String], rows: &[Vec<String>], left: usize) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len(), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let cell = |c: usize, text: &str| {
        if c < left {
            format!(" {text:<w$} |", w = widths[c])
        } else {
            format!(" {text:>w$} |", w = widths[c])
        }
    };
    let mut out = String::from("|");
    header
        .iter()
        .enumerate()
        .for_each(|(c, h)| out.push_str(&cell(c, h)));
    out.push_str("\n|");
    for (c, w) in widths.iter().enumerate() {
        let dashes = "-".repeat(*w);
        out.push_str(&if c < left {
            format!(" {dashes} |")
        } else {
            format!(" {}: |", &dashes[1..])
        });
    }
    out.push('\n');
    for row in rows {
        out.push('|');
        row.iter()
            .enumerate()
            .for_each(|(c, text)| out.push_str(&cell(c, text)));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(label: &str, read_ratio: f64, pipeline: usize, ops: f64, cpu: f64) -> Report {
        Report {
            label: label.into(),
            mode: "closed".into(),
            connections: 50,
            keys: 100_000,
            key_dist: "uniform".into(),
            value_size: 100,
            read_ratio,
            pipeline,
            ops_per_sec: ops,
            p99_us: 250.0,
            server_cpu_us_per_req: Some(cpu),
            ..Report::default()
        }
    }

    #[test]
    fn load_rows_pair_labels_and_show_ratios() {
        let reports = [
            load("redis", 1.0, 1, 100_000.0, 4.0),
            load("kvmesh", 1.0, 1, 150_000.0, 2.0),
            load("redis", 0.0, 16, 400_000.0, 1.0),
        ];
        let text = render(&reports, Some("per core"), &[]);
        assert!(text.starts_with(
            "### per core\n\n50 connections, 100000 keys (uniform), 100-byte values, closed loop"
        ));
        let lines: Vec<&str> = text.lines().collect();
        let get = lines.iter().find(|l| l.starts_with("| GET")).unwrap();
        assert!(get.contains("100,000") && get.contains("150,000"), "{get}");
        assert!(get.contains("1.50x") && get.contains("0.50x"), "{get}");
        let set = lines.iter().find(|l| l.starts_with("| SET")).unwrap();
        assert!(set.contains("400,000") && set.contains(" - |"), "{set}");
        // Every line of the table has the same number of cells.
        let cells: Vec<usize> = lines
            .iter()
            .filter(|l| l.starts_with('|'))
            .map(|l| l.matches('|').count())
            .collect();
        assert!(cells.windows(2).all(|w| w[0] == w[1]), "{cells:?}");
    }

    #[test]
    fn rounds_give_medians_and_the_median_of_paired_ratios() {
        let reports = [
            load("redis", 1.0, 1, 100_000.0, 4.0),
            load("kvmesh", 1.0, 1, 90_000.0, 4.0),
            load("redis", 1.0, 1, 200_000.0, 2.0),
            load("kvmesh", 1.0, 1, 220_000.0, 2.2),
            load("redis", 1.0, 1, 150_000.0, 3.0),
            load("kvmesh", 1.0, 1, 165_000.0, 2.4),
        ];
        let text = render(&reports, None, &[]);
        assert!(text.contains("median of 3 rounds"), "{text}");
        let get = text.lines().find(|l| l.starts_with("| GET")).unwrap();
        // Medians of each label's runs: 150,000 and 165,000 ops/s, 3.00 and 2.40 us.
        assert!(get.contains("150,000") && get.contains("165,000"), "{get}");
        assert!(get.contains(" 3.00 ") && get.contains(" 2.40 "), "{get}");
        // Paired ratios 0.90, 1.10, 1.10 (ops) and 1.00, 1.10, 0.80 (CPU). The CPU cell tells
        // the two ways apart: the ratio of the medians would be 0.80 (the ops cell's 1.10
        // would be the same either way; its range shows the pairing).
        assert!(get.contains("1.10x (0.90–1.10)"), "{get}");
        assert!(get.contains("1.00x (0.80–1.10)"), "{get}");
    }

    #[test]
    fn medians_of_even_and_odd_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn chosen_ratios() {
        let reports = [
            load("redis", 1.0, 1, 100_000.0, 4.0),
            load("kvmesh", 1.0, 1, 150_000.0, 2.0),
            load("probe", 1.0, 1, 300_000.0, 1.0),
        ];
        let pairs = [
            ("kvmesh".to_string(), "redis".to_string()),
            ("kvmesh".to_string(), "probe".to_string()),
        ];
        let text = render(&reports, None, &pairs);
        let header = text.lines().find(|l| l.starts_with("| workload")).unwrap();
        assert!(header.ends_with(
            "kvmesh/redis ops/s | kvmesh/redis CPU/req | kvmesh/probe ops/s | kvmesh/probe CPU/req |"
        ), "{header}");
        let get = text.lines().find(|l| l.starts_with("| GET")).unwrap();
        let cells: Vec<&str> = get.split('|').map(str::trim).collect();
        assert_eq!(
            cells[cells.len() - 5..],
            ["1.50x", "0.50x", "0.50x", "2.00x", ""]
        );
    }

    #[test]
    fn memory_rows_and_junk_lines() {
        let text = "prefill: 3 keys\n{\"label\":\"redis\",\"mode\":\"prefill-only\",\"prefill_keys\":1000000,\
                    \"value_size\":100,\"server_rss_before\":1048576,\"server_rss_after\":2097152,\
                    \"rss_bytes_per_key\":1.05}\nnot json {\n";
        let reports = parse_lines(text);
        assert_eq!(reports.len(), 1);
        let table = render(&reports, None, &[]);
        assert!(table.contains("| redis  | 1000000 |"), "{table}");
        assert!(
            table.contains("1.0 |") && table.contains("2.0 |") && table.contains("1.1 |"),
            "{table}"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.4), "1,234,567");
    }
}

//! `kvmesh node --config FILE`: settings from a TOML file, and `--print-config`.
//!
//! The file holds the node's flags by their long names, without the dashes:
//!
//! ```toml
//! listen = "0.0.0.0:7000"
//! max-memory = "2GiB"       # sizes and durations take the same units as the flags
//! cpus = [0, 1]             # a list is the flag's comma-separated value
//! ```
//!
//! [`expand`] turns each key into the flag it names (`--max-memory 2GiB`) and places those
//! arguments before the ones from the command line, which clap then parses with
//! `args_override_self`: a flag given on the command line overrides the file, and every flag
//! the node has, including ones added later, works in the file with no change here. A key
//! that is not a flag, or a value its flag refuses, is reported with the file's name, one
//! message per problem. Pure apart from reading the file.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use clap::{ArgAction, ArgMatches, Command};

/// Flags that make no sense inside the file.
const NOT_IN_FILE: [&str; 4] = ["config", "print-config", "help", "version"];

/// Returns `argv` with the settings of `node --config FILE` inserted right after `node`, or
/// `argv` unchanged when it is not `kvmesh node … --config FILE …`. `cli` is the whole
/// command line's definition. The error lists every problem, one per line.
pub fn expand(argv: Vec<OsString>, cli: &Command) -> Result<Vec<OsString>, String> {
    let Some(node) = cli.find_subcommand("node") else {
        return Ok(argv);
    };
    if argv.get(1).and_then(|a| a.to_str()) != Some("node") {
        return Ok(argv);
    }
    let Some(path) = config_path(&argv[2..]) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let settings = to_args(&text, node).map_err(|problems| {
        problems
            .iter()
            .map(|p| format!("{}: {p}", path.display()))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    // A flag the command line gives replaces the file's setting. args_override_self does
    // that for single values; dropping the setting here also covers lists (`--cpus`).
    let given: Vec<&str> = argv[2..]
        .iter()
        .filter_map(|a| a.to_str()?.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    let mut out = argv[..2].to_vec();
    for (long, args) in settings {
        if !given.contains(&long.as_str()) {
            out.extend(args.into_iter().map(OsString::from));
        }
    }
    out.extend_from_slice(&argv[2..]);
    Ok(out)
}

/// The value of the last `--config FILE` or `--config=FILE` among the node's arguments.
fn config_path(args: &[OsString]) -> Option<std::path::PathBuf> {
    let mut path = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        } else if arg == "--config" {
            path = args.next().map(|p| Path::new(p).to_path_buf());
        } else if let Some(p) = arg.strip_prefix("--config=") {
            path = Some(Path::new(p).to_path_buf());
        }
    }
    path
}

/// The flags a config file's text stands for, by flag name, in the order of the keys; or every
/// problem found.
pub fn to_args(text: &str, node: &Command) -> Result<Vec<(String, Vec<String>)>, Vec<String>> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| vec![format!("not valid TOML: {}", e.to_string().trim())])?;
    let mut args = Vec::new();
    let mut problems = Vec::new();
    for (key, value) in &table {
        match setting(key, value, node) {
            Ok(flag) => args.push((key.replace('_', "-"), flag)),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(args)
    } else {
        Err(problems)
    }
}

/// One key of the file as flag arguments, checked by parsing it alone.
fn setting(key: &str, value: &toml::Value, node: &Command) -> Result<Vec<String>, String> {
    let long = key.replace('_', "-");
    let arg = node
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()) && !NOT_IN_FILE.contains(&long.as_str()))
        .ok_or_else(|| {
            let known: Vec<_> = node
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| !NOT_IN_FILE.contains(l))
                .collect();
            format!(
                "unknown setting `{key}`; the settings are the `kvmesh node` flags without \
                 their dashes: {}",
                known.join(", ")
            )
        })?;
    let flag = format!("--{long}");
    let is_switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    let args = match (value, is_switch) {
        (toml::Value::Boolean(true), true) => vec![flag],
        (toml::Value::Boolean(false), true) => vec![],
        (_, true) => {
            return Err(format!(
                "`{key}` is a switch: write `{key} = true` or `false`"
            ))
        }
        (toml::Value::Array(items), false) => {
            let items: Option<Vec<String>> = items.iter().map(scalar).collect();
            let items = items
                .ok_or_else(|| format!("`{key}`: a list may hold only strings and numbers"))?;
            vec![flag, items.join(",")]
        }
        (value, false) => vec![
            flag,
            scalar(value).ok_or_else(|| {
                format!("`{key}` must be a string, a number or a list, not a table")
            })?,
        ],
    };
    node.clone()
        .no_binary_name(true)
        .try_get_matches_from(&args)
        .map_err(|e| {
            // clap's message up to its usage hint, on one line.
            let message = e.render().to_string();
            let lines: Vec<&str> = message
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            format!("`{key}`: {}", lines.join(" ").trim_start_matches("error: "))
        })?;
    Ok(args)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The effective node configuration as TOML that `--config` reads back: each flag's value
/// from the command line, the file or its default; a flag without a value is a comment.
pub fn render(matches: &ArgMatches, node: &Command) -> String {
    let mut out = String::from(
        "# kvmesh node: effective configuration (command line, then --config file, then \
         defaults)\n",
    );
    for arg in node.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            let on = matches.get_flag(id);
            let _ = writeln!(out, "{long} = {on}");
            continue;
        }
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if values.is_empty() {
            let _ = writeln!(out, "# {long} = (not set)");
        } else {
            let _ = writeln!(out, "{long} = {}", toml_value(&values.join(",")));
        }
    }
    out
}

/// A bare integer where the value is one, else a quoted TOML string.
fn toml_value(value: &str) -> String {
    match value.parse::<i64>() {
        Ok(n) if n.to_string() == value => value.to_string(),
        _ => toml::Value::String(value.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::Cli;

    fn node() -> Command {
        Cli::command().find_subcommand("node").unwrap().clone()
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn keys_become_flags() {
        let text = "listen = \"127.0.0.1:9000\"\nmax_memory = \"2GiB\"\ncpus = [0, 1]\n\
                    shards = 2\nforward-timeout = \"1s\"\n";
        let args: Vec<String> = to_args(text, &node())
            .unwrap()
            .into_iter()
            .flat_map(|(_, args)| args)
            .collect();
        assert_eq!(
            args,
            [
                "--cpus",
                "0,1",
                "--forward-timeout",
                "1s",
                "--listen",
                "127.0.0.1:9000",
                "--max-memory",
                "2GiB",
                "--shards",
                "2",
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_once() {
        let text = "listen = \"nowhere\"\nmax-memory = \"2 parsecs\"\nbogus = 1\n\
                    shards = 2\nconfig = \"other.toml\"\ncpus = { a = 1 }\n";
        let problems = to_args(text, &node()).unwrap_err();
        // In the order of the keys.
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(
            problems[0].contains("unknown setting `bogus`"),
            "{}",
            problems[0]
        );
        assert!(problems[1].contains("unknown setting `config`"));
        assert!(problems[2].contains("`cpus`"));
        assert!(problems[3].starts_with("`listen`"), "{}", problems[3]);
        assert!(problems[4].contains("parsecs"), "{}", problems[4]);
    }

    #[test]
    fn malformed_toml() {
        let problems = to_args("listen = ", &node()).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("not valid TOML"), "{}", problems[0]);
    }

    #[test]
    fn the_command_line_overrides_the_file_and_print_config_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kvmesh.toml");
        std::fs::write(
            &file,
            "max-memory = \"2GiB\"\nshards = 3\ncpus = [0, 1, 2]\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let cmd = crate::cli::command();
        let expanded = expand(
            argv(&[
                "kvmesh", "node", "--shards", "1", "--config", file, "--cpus", "1",
            ]),
            &cmd,
        )
        .unwrap();
        let matches = cmd.clone().try_get_matches_from(&expanded).unwrap();
        let node_matches = matches.subcommand_matches("node").unwrap();
        let printed = render(node_matches, &node());
        assert!(printed.contains("\nmax-memory = \"2GiB\"\n"), "{printed}");
        assert!(printed.contains("\nshards = 1\n"), "{printed}");
        assert!(printed.contains("\ncpus = 1\n"), "{printed}");
        assert!(printed.contains("\n# data-dir = (not set)\n"), "{printed}");
        assert!(
            printed.contains("\nlisten = \"127.0.0.1:7000\"\n"),
            "{printed}"
        );
        // What it prints is a config file that gives the same configuration.
        let again = dir.path().join("again.toml");
        std::fs::write(&again, &printed).unwrap();
        let reparsed = expand(
            argv(&["kvmesh", "node", "--config", again.to_str().unwrap()]),
            &cmd,
        )
        .unwrap();
        let matches = cmd.clone().try_get_matches_from(&reparsed).unwrap();
        let node_again = matches.subcommand_matches("node").unwrap();
        assert_eq!(printed, render(node_again, &node()));
        Cli::from_arg_matches(&matches).unwrap();
    }

    #[test]
    fn no_config_leaves_argv_alone() {
        let cmd = crate::cli::command();
        let args = argv(&["kvmesh", "get", "--config", "x"]);
        assert_eq!(expand(args.clone(), &cmd).unwrap(), args);
        let missing = expand(argv(&["kvmesh", "node", "--config=/no/such.toml"]), &cmd);
        assert!(missing
            .unwrap_err()
            .contains("cannot read the config file /no/such.toml"));
    }

    #[test]
    fn the_sample_config_parses() {
        let text = include_str!("../kvmesh.toml.example");
        let args = to_args(text, &node()).unwrap();
        let mut full = vec!["node".to_string()];
        full.extend(args.into_iter().flat_map(|(_, args)| args));
        crate::cli::command()
            .try_get_matches_from(std::iter::once("kvmesh".to_string()).chain(full))
            .unwrap();
    }
}

//! What the services' tests check on their settings, from the declarations
//! themselves so that a new setting is checked without being listed: each
//! one is set by its file key, its environment variable and its flag;
//! `--help` shows the default the settings really have; secrets load but are
//! never printed; the README's tables are the declarations'.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Debug;
use std::fmt::Write as _;
use std::path::Path;

use clap::{Arg, ArgAction, Args, Command};
use serde::de::DeserializeOwned;

use super::{declared, is_list, Cli, CONFIG};

/// The secret every sample value of a hidden setting carries; it must never
/// be printed.
pub const SECRET: &str = "hunter2";

/// Environment variable that makes [`readme_section`] rewrite the README.
pub const UPDATE_README: &str = "UPDATE_README";

/// `args` parsed by `command` as a test's command line (the program's name
/// is the command's).
///
/// # Panics
/// When clap refuses the arguments.
pub fn cli(command: Command, args: &[&str]) -> Cli {
    let name = command.get_name().to_owned();
    match Cli::try_parse_from(
        command,
        std::iter::once(name.as_str()).chain(args.iter().copied()),
    ) {
        Ok(cli) => cli,
        Err(err) => panic!("{args:?} do not parse: {err}"),
    }
}

/// Writes `toml` into a config file in a new temporary folder, for a test
/// that passes it as `--config`; the folder goes with the returned guard.
///
/// # Panics
/// When the file cannot be written.
pub fn config_file(toml: &str) -> (tempfile::TempDir, String) {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(err) => panic!("no temporary folder: {err}"),
    };
    let file = dir.path().join("settings.toml");
    if let Err(err) = std::fs::write(&file, toml) {
        panic!("cannot write {}: {err}", file.display());
    }
    let path = file.to_string_lossy().into_owned();
    (dir, path)
}

/// The error loading `S` from a config file holding `toml` gives, as text.
///
/// # Panics
/// When the settings load: the test expected them refused.
pub fn file_error<S: super::ServiceSettings + Debug>(command: Command, toml: &str) -> String {
    let (_dir, path) = config_file(toml);
    match S::load(&cli(command, &["--config", &path])) {
        Ok(settings) => panic!("{toml:?} loaded: {settings:?}"),
        Err(err) => err.to_string(),
    }
}

/// The example config file `name` in `monitor-data/`, for a test that loads it.
pub fn example(name: &str) -> String {
    format!("{}/../../monitor-data/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Every check of this module on the settings `S` of a service whose
/// command line `command` makes: [`every_setting`] (in a temporary folder)
/// and [`readme_section`] for the README's table `section`. The problems
/// found, one a line.
///
/// Like [`every_setting`], call it from a test binary of its own.
pub fn service<S>(
    command: fn() -> Command,
    expose: fn(&S) -> String,
    section: &str,
) -> Result<(), String>
where
    S: Args + DeserializeOwned + Default + Debug,
{
    let dir = std::env::temp_dir().join(format!("sitewatch-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut problems = every_setting(command, expose, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    problems.extend(readme_section(&readme, section, &table::<S>(&command())).err());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Problems found setting every setting of `S` in turn, each to a value
/// other than its default, from the file (written in `dir`), its environment
/// variable, its flag and its short flag: each way must give the same
/// settings, and settings other than the defaults. `expose` returns the
/// secrets in the clear (the rest is compared by `Debug`).
///
/// It also checks that the default `--help` shows for a setting, given as
/// its flag, gives `S::default()`, and that the value of a secret (a
/// setting hiding its variable's value, or one whose value name says
/// PASSWORD, URL...) appears neither in `Debug` nor in `--help`.
///
/// It sets and removes environment variables: call it from a test binary of
/// its own, where no other test reads them at the same time.
pub fn every_setting<S>(
    command: fn() -> Command,
    expose: fn(&S) -> String,
    dir: &Path,
) -> Vec<String>
where
    S: Args + DeserializeOwned + Default + Debug,
{
    for arg in command().get_arguments() {
        if let Some(env) = arg.get_env() {
            std::env::remove_var(env);
        }
    }
    let name = command().get_name().to_owned();
    let print = |settings: &S| format!("{settings:?}\n{}", expose(settings));
    let default = print(&S::default());
    let help = command().term_width(0).render_long_help().to_string();
    let mut problems = Vec::new();
    for (n, arg) in declared::<S>().get_arguments().enumerate() {
        let id = arg.get_id().as_str();
        let sample = match Sample::of(arg) {
            Ok(sample) => sample,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        // A value name such as PASSWORD gives a secret sample.
        let secret = arg.is_hide_env_values_set() || sample.env.contains(SECRET);
        let file = dir.join(format!("{n}.toml"));
        if let Err(err) = std::fs::write(&file, &sample.toml) {
            problems.push(format!("cannot write {}: {err}", file.display()));
            continue;
        }
        let mut ways = vec![
            (
                "file",
                command(),
                vec![format!("--{CONFIG}").into(), file.into()],
            ),
            ("flag", command(), sample.flag.clone()),
        ];
        if let Some(short) = &sample.short {
            ways.push(("short flag", command(), short.clone()));
        }
        let env = env_of(&command(), id);
        if let Some(env) = &env {
            std::env::set_var(env, &sample.env);
            // clap reads the environment when the command is built.
            ways.push(("environment", command(), Vec::new()));
            let help = command().render_long_help().to_string();
            if secret && help.contains(SECRET) {
                problems.push(format!("`{id}`: --help shows the value of its variable"));
            }
            std::env::remove_var(env);
        } else {
            problems.push(format!("`{id}` has no environment variable"));
        }
        let mut seen = BTreeMap::new();
        for (way, command, args) in ways {
            match load::<S>(command, &name, args) {
                Ok(settings) => {
                    let printed = print(&settings);
                    if printed == default {
                        problems.push(format!("`{id}` from the {way} left the defaults"));
                    }
                    if secret {
                        if format!("{settings:?}").contains(SECRET) {
                            problems.push(format!("`{id}` is printed by Debug"));
                        }
                        if !printed.contains(SECRET) {
                            problems.push(format!("`{id}` is a secret `expose` does not show"));
                        }
                    }
                    let _ = seen.entry(printed).or_insert(way);
                }
                Err(err) => problems.push(format!("`{id}` from the {way}: {err}")),
            }
        }
        if seen.len() > 1 {
            let ways: Vec<&str> = seen.into_values().collect();
            problems.push(format!("`{id}` differs between {}", ways.join(", ")));
        }
        problems.extend(help_shows(command, &name, arg, &help, &|s: &S| {
            print(s) == default
        }));
    }
    problems
}

/// Checks that `--help` names the key of `arg`, and that the default it
/// shows, given as the flag, gives `S::default()`.
fn help_shows<S>(
    command: fn() -> Command,
    name: &str,
    arg: &Arg,
    help: &str,
    is_default: &dyn Fn(&S) -> bool,
) -> Option<String>
where
    S: Args + DeserializeOwned + Debug,
{
    let id = arg.get_id();
    let long = arg.get_long()?;
    let Some(text) = help_of(help, long) else {
        return Some(format!("`{id}`: --help does not show --{long}"));
    };
    if !text.contains(&format!("[setting: {id}]")) {
        return Some(format!("`{id}`: --help does not name its key"));
    }
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return None;
    }
    let shown = text
        .split_once("[default: ")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(value, _)| value.to_owned());
    match (shown, arg.get_default_values().is_empty()) {
        (None, true) => None,
        (None, false) => Some(format!("`{id}`: --help shows no default")),
        (Some(shown), _) => {
            let given = load::<S>(command(), name, vec![format!("--{long}={shown}").into()]);
            match given {
                Ok(settings) if is_default(&settings) => None,
                Ok(_) => Some(format!(
                    "`{id}`: --help says the default is {shown}, the settings say otherwise"
                )),
                Err(err) => Some(format!("`{id}`: the default --help shows fails: {err}")),
            }
        }
    }
}

/// The part of `--help` about the flag `--long`: from its line to the next flag's.
fn help_of<'h>(help: &'h str, long: &str) -> Option<&'h str> {
    let head = format!("--{long}");
    // Flags start a line, indented less than the help under them.
    let is_flag = |line: &str| {
        let text = line.trim_start();
        text.starts_with('-') && line.len() - text.len() <= 6
    };
    let mut from = None;
    let mut offset = 0;
    for line in help.split_inclusive('\n') {
        if is_flag(line) {
            if from.is_some() {
                return from.map(|from| &help[from..offset]);
            }
            if line
                .trim_end()
                .split([',', ' ', '='])
                .any(|word| word == head)
            {
                from = Some(offset);
            }
        }
        offset += line.len();
    }
    from.map(|from| &help[from..])
}

fn load<S: Args + DeserializeOwned>(
    command: Command,
    name: &str,
    args: Vec<OsString>,
) -> Result<S, String> {
    let argv = std::iter::once(OsString::from(name)).chain(args);
    let cli = Cli::try_parse_from(command, argv).map_err(|e| e.to_string())?;
    cli.read().map_err(|e| e.to_string())
}

/// A value other than the default for one setting, written three ways.
#[derive(Debug)]
struct Sample {
    /// Arguments giving it as the long flag.
    flag: Vec<OsString>,
    /// The same with the short flag, if there is one.
    short: Option<Vec<OsString>>,
    /// The environment variable's value.
    env: String,
    /// A config file setting it.
    toml: String,
}

impl Sample {
    fn of(arg: &Arg) -> Result<Sample, String> {
        let id = arg.get_id().as_str();
        let long = arg.get_long().ok_or(format!("`{id}` has no flag"))?;
        let default = arg
            .get_default_values()
            .first()
            .and_then(|value| value.to_str());
        let flag = |value: Option<&str>| -> Vec<OsString> {
            match value {
                Some(value) => vec![format!("--{long}={value}").into()],
                None => vec![format!("--{long}").into()],
            }
        };
        let short = |value: Option<&str>| -> Option<Vec<OsString>> {
            let short = arg.get_short()?;
            let mut args = vec![OsString::from(format!("-{short}"))];
            args.extend(value.map(OsString::from));
            Some(args)
        };
        if let Some(value) = match arg.get_action() {
            ArgAction::SetTrue => Some(true),
            ArgAction::SetFalse => Some(false),
            _ => None,
        } {
            return Ok(Sample {
                flag: flag(None),
                short: short(None),
                env: value.to_string(),
                toml: format!("{id} = {value}\n"),
            });
        }
        let value = Self::value(arg, default)?;
        let toml = match value.split_once('=') {
            Some((name, entry)) if arg.get_value_names() == Some(&["NAME=VALUE".into()]) => {
                format!("{id}.{name:?} = {entry:?}\n")
            }
            _ if value.parse::<u64>().is_ok() => format!("{id} = {value}\n"),
            _ if is_list(arg) => format!("{id} = [{value:?}]\n"),
            _ => format!("{id} = {value:?}\n"),
        };
        Ok(Sample {
            flag: flag(Some(&value)),
            short: short(Some(&value)),
            env: value,
            toml,
        })
    }

    /// A value of the setting's type other than `default`, chosen by the
    /// value's name (a new name needs a sample here).
    fn value(arg: &Arg, default: Option<&str>) -> Result<String, String> {
        if let Some(other) = arg
            .get_possible_values()
            .into_iter()
            .map(|value| value.get_name().to_owned())
            .find(|value| Some(value.as_str()) != default)
        {
            return Ok(other);
        }
        let name = arg
            .get_value_names()
            .and_then(|names| names.first())
            .map(|name| name.as_str())
            .unwrap_or_default();
        let value = match name {
            "N" | "BYTES" | "PORT" => {
                let number = default.and_then(|d| d.parse::<u64>().ok()).unwrap_or(2);
                (number + 1).to_string()
            }
            "DURATION" => "7s".into(),
            "FILE" | "DIR" => "/sample/path".into(),
            "HOST:PORT" => "kafka.example:9093".into(),
            "IP:PORT" => "127.0.0.1:9464".into(),
            "HOST" => "db.example".into(),
            "NAME" | "USER" | "ID|hostname" => "sample".into(),
            "FILTER" => "debug".into(),
            "TEXT" => "sample-agent/1.0".into(),
            "URL" | "FILE|URL" => format!("postgres://sample:{SECRET}@db.example/sample"),
            "ADDRESS" => "https://status.example/".into(),
            "KIND:URL,..." => format!("slack:https://hooks.example/services/{SECRET}"),
            "PASSWORD" => SECRET.into(),
            "NAME=VALUE" => format!("sasl.password={SECRET}"),
            other => {
                return Err(format!(
                    "`{}`: no sample value for <{other}>; add one to sitewatch_service::settings::check",
                    arg.get_id()
                ))
            }
        };
        Ok(value)
    }
}

/// The environment variable of setting `id` in the service's `command`
/// (which names some of them, [`super::command`]).
fn env_of(command: &Command, id: &str) -> Option<OsString> {
    command
        .get_arguments()
        .find(|arg| arg.get_id() == id)
        .and_then(Arg::get_env)
        .map(ToOwned::to_owned)
}

/// The settings of `S` as a Markdown table: key, flag, environment
/// variable (as `command` names it), default, and the help.
pub fn table<S: Args>(command: &Command) -> String {
    let mut table = String::from(
        "| setting | flag | environment | default | what it does |\n|---|---|---|---|---|\n",
    );
    for arg in declared::<S>().get_arguments() {
        let mut flag = String::new();
        if let Some(short) = arg.get_short() {
            let _ = write!(flag, "-{short}, ");
        }
        if let Some(long) = arg.get_long() {
            let _ = write!(flag, "--{long}");
        }
        if !matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            for name in arg.get_value_names().unwrap_or_default() {
                let _ = write!(flag, " <{name}>");
            }
        }
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        let cells = [
            code(arg.get_id().as_str()),
            code(&flag),
            env_of(command, arg.get_id().as_str())
                .map(|env| code(&env.to_string_lossy()))
                .unwrap_or_default(),
            code(&default.join(",")),
            arg.get_help().map(ToString::to_string).unwrap_or_default(),
        ];
        // A `|` in a cell, even in code, would end the cell.
        let cells: Vec<String> = cells.iter().map(|cell| cell.replace('|', "\\|")).collect();
        let _ = writeln!(table, "| {} |", cells.join(" | "));
    }
    table
}

/// `text` as inline code, or nothing for no text.
fn code(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!("`{text}`")
    }
}

/// Compares the part of `readme` between `<!-- settings:NAME -->` and
/// `<!-- /settings:NAME -->` with `table`; with `UPDATE_README=1` in the
/// environment it writes `table` there instead.
pub fn readme_section(readme: &Path, name: &str, table: &str) -> Result<(), String> {
    let start = format!("<!-- settings:{name} -->\n");
    let end = format!("<!-- /settings:{name} -->");
    let update = std::env::var_os(UPDATE_README).is_some_and(|v| v == "1");
    // Two crates' tests may rewrite their sections at once: read again after
    // writing until this section holds.
    for _ in 0..5 {
        let text = std::fs::read_to_string(readme)
            .map_err(|e| format!("cannot read {}: {e}", readme.display()))?;
        let (Some(from), Some(to)) = (text.find(&start), text.find(&end)) else {
            return Err(format!(
                "{} has no section between {start:?} and {end:?}",
                readme.display()
            ));
        };
        let from = from + start.len();
        if text.get(from..to) == Some(table) {
            return Ok(());
        }
        if !update {
            return Err(format!(
                "the settings table `{name}` in {} is not what the settings declare; \
                 rewrite it with {UPDATE_README}=1 and this test. It should be:\n{table}",
                readme.display()
            ));
        }
        let written = format!("{}{table}{}", &text[..from], &text[to..]);
        let temporary = readme.with_extension(format!("md.{name}.tmp"));
        std::fs::write(&temporary, written)
            .and_then(|()| std::fs::rename(&temporary, readme))
            .map_err(|e| format!("cannot write {}: {e}", readme.display()))?;
    }
    Err(format!(
        "{} keeps changing under this test",
        readme.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::LogSettings;

    #[test]
    fn a_table_row_per_setting() {
        let table = table::<LogSettings>(&declared::<LogSettings>());
        assert!(
            table.contains(
                "| `log.level` | `--log-level <FILTER>` | `SITEWATCH_LOG_LEVEL` | `info` | Log filter"
            ),
            "{table}"
        );
        assert_eq!(table.lines().count(), 4, "{table}");
    }

    /// A key serde does not know and a secret `Debug` prints.
    #[derive(Debug, serde::Deserialize, clap::Args)]
    struct Flawed {
        /// A number
        #[arg(
            id = "count",
            long = "count",
            env = "SITEWATCH_TEST_FLAWED_COUNT",
            value_name = "N",
            default_value = "3"
        )]
        #[serde(rename = "other", default)]
        count: usize,
        /// A password
        #[arg(
            id = "password",
            long = "password",
            env = "SITEWATCH_TEST_FLAWED_PASSWORD",
            value_name = "PASSWORD",
            hide_env_values = true
        )]
        password: Option<String>,
    }

    impl Default for Flawed {
        fn default() -> Self {
            crate::settings::defaults()
        }
    }

    #[test]
    fn the_walk_finds_a_setting_that_does_not_load_and_a_printed_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let command = || crate::settings::command::<Flawed>(Command::new("flawed"), "FLAWED");
        let problems = every_setting(
            command,
            |s: &Flawed| format!("{:?}", s.password),
            dir.path(),
        );
        let all = problems.join("\n");
        for way in ["file", "flag", "environment"] {
            let left = format!("`count` from the {way} left the defaults");
            assert!(problems.contains(&left), "{all}");
        }
        assert!(
            problems.contains(&"`password` is printed by Debug".to_owned()),
            "{all}"
        );
        assert_eq!(problems.len(), 6, "{all}");
    }

    #[test]
    fn help_of_one_flag() {
        let help = "  -a, --alpha <X>\n          first\n\n      --beta\n          second\n";
        assert_eq!(
            help_of(help, "alpha"),
            Some("  -a, --alpha <X>\n          first\n\n")
        );
        assert_eq!(
            help_of(help, "beta"),
            Some("      --beta\n          second\n")
        );
        assert_eq!(help_of(help, "gamma"), None);
    }

    #[test]
    fn a_readme_section_is_compared_and_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let readme = dir.path().join("README.md");
        let text = "intro\n<!-- settings:x -->\nold\n<!-- /settings:x -->\nend\n";
        std::fs::write(&readme, text).expect("write");
        let err = readme_section(&readme, "x", "new\n").expect_err("differs");
        assert!(err.contains(UPDATE_README), "{err}");
        assert!(readme_section(&readme, "x", "old\n").is_ok());
        assert!(readme_section(&readme, "y", "old\n").is_err());
    }
}

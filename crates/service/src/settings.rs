//! Settings declared once and read in layers.
//!
//! A setting is a field of a struct deriving both `clap::Args` and
//! `serde::Deserialize`: its `#[arg(...)]` gives the flag, the environment
//! variable and the default, its doc comment the help, and the argument's
//! id is its key in the config file (the field's name at the top of the
//! file, written out as `id = "kafka.brokers"` in a table). [`Cli::read`]
//! lays, lowest to highest, the declared defaults, the TOML file
//! (`--config`), environment variables and flags, and the `config` crate
//! turns the result into the struct.
//!
//! The structs' derived `FromArgMatches` is not used for them: some fields
//! (the librdkafka properties) are built from several values and the file,
//! which clap alone cannot do.

#[cfg(feature = "check")]
pub mod check;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{Resettable, StyledStr};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command};
use config::builder::DefaultState;
use config::{Config, ConfigBuilder, ConfigError, Value};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::telemetry::LogFormat;

/// Id of `--config`, the one argument that names a file rather than a setting.
pub const CONFIG: &str = "config";
/// Id of `--check-health`, which a service with a `health_file` setting gets.
pub const CHECK_HEALTH: &str = "check_health";
/// The setting whose presence brings `--check-health`.
pub const HEALTH_FILE: &str = "health_file";
/// The settings every service has ([`crate::health::HealthSettings`]),
/// whose environment variables take the service's prefix.
const SERVICE_SCOPED: [&str; 3] = [HEALTH_FILE, "unhealthy_after", "http_listen"];

/// Logging settings, shared by every binary (and so by one `.env`).
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Log format: text for people, JSON for collectors
    #[arg(
        id = "log.format",
        long = "log-format",
        env = "SITEWATCH_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub format: LogFormat,
    /// Log filter, e.g. `info` or `debug,rdkafka=info`; RUST_LOG wins
    #[arg(
        id = "log.level",
        long = "log-level",
        env = "SITEWATCH_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        defaults()
    }
}

/// A duration as people write it (`500ms`, `10s`, `2m`), in a flag, an
/// environment variable or the config file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct TimeSpan(#[serde(with = "humantime_serde")] Duration);

impl TimeSpan {
    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl std::ops::Deref for TimeSpan {
    type Target = Duration;

    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl From<Duration> for TimeSpan {
    fn from(duration: Duration) -> Self {
        TimeSpan(duration)
    }
}

impl std::str::FromStr for TimeSpan {
    type Err = humantime::DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text).map(TimeSpan)
    }
}

impl fmt::Display for TimeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

/// A config file that cannot be read or does not fit the settings.
#[derive(Debug, thiserror::Error)]
#[error("config file {path}: {source}")]
pub struct ConfigFileError {
    /// The file.
    pub path: PathBuf,
    /// What config/serde said, naming the key.
    #[source]
    pub source: Box<ConfigError>,
}

/// A setting that cannot be used, named as in the config file.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file is unreadable or does not fit the settings.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A value out of its range.
    #[error("setting `{setting}`: {reason}")]
    Invalid {
        /// The setting's name in the config file.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A flag or environment variable that is not UTF-8 (clap checked the rest).
    #[error("setting `{setting}`: the value given is not valid UTF-8")]
    NotUtf8 {
        /// The setting's name in the config file.
        setting: String,
    },
    /// The declarations themselves do not load (a default that does not fit
    /// its type): a bug, which the settings' tests catch.
    #[error("settings as declared do not load: {0}")]
    Declared(#[source] Box<ConfigError>),
}

impl SettingsError {
    /// `setting` holds a value that cannot be used, for `reason`.
    pub fn invalid(setting: &'static str, reason: impl Into<String>) -> SettingsError {
        SettingsError::Invalid {
            setting,
            reason: reason.into(),
        }
    }
}

/// The settings of a service binary.
pub trait ServiceSettings: Args + DeserializeOwned {
    /// Checks what the types let through but the service cannot use.
    fn validate(&self) -> Result<(), SettingsError>;

    /// Every layer read, then validated.
    fn load(cli: &Cli) -> Result<Self, SettingsError> {
        let settings: Self = cli.read()?;
        settings.validate()?;
        Ok(settings)
    }
}

/// What a service says about itself at the top and bottom of `--help`.
#[derive(Debug, Clone, Copy)]
pub struct About {
    /// The binary's name.
    pub name: &'static str,
    /// Its version.
    pub version: &'static str,
    /// What it does, in a sentence or two.
    pub summary: &'static str,
    /// How it behaves as a service (signals, groups), after the layers.
    pub lifecycle: &'static str,
    /// Its exit codes, one line.
    pub exit_codes: &'static str,
    /// Its example config file.
    pub example: &'static str,
}

impl About {
    /// The command `about` describes, before its arguments.
    pub fn command(self) -> Command {
        const LAYERS: &str = "Every setting can come from a TOML file (--config), an environment\n\
            variable (shown below), or a flag; a flag beats the environment, which\n\
            beats the file, which beats the default.";
        Command::new(self.name)
            .version(self.version)
            .about(self.summary.to_owned())
            .long_about(format!("{}\n\n{LAYERS} {}", self.summary, self.lifecycle))
            .after_help(format!(
                "Exit codes: {}\nDurations are written like 500ms, 10s, 2m. Example config: {}",
                self.exit_codes, self.example
            ))
    }
}

/// The command line of a service: `base` (name, about, version), `--config`
/// read from `config_env`, every setting of `S` with its config-file key
/// added to its help, and `--check-health` when `S` has a `health_file`.
/// The settings every service has get their environment variable from
/// `config_env`'s prefix (`MONITOR_CONFIG`: `MONITOR_HEALTH_FILE`).
pub fn command<S: Args>(base: Command, config_env: &'static str) -> Command {
    let prefix = config_env.strip_suffix("CONFIG").unwrap_or(config_env);
    let keys: Vec<String> = declared::<S>()
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect();
    let config = Arg::new(CONFIG)
        .short('c')
        .long("config")
        .env(config_env)
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help("TOML file with settings; its keys are the names in `setting` below");
    let health = format!(
        "Exit 0 if the {} is ready, 1 if not (a container health check): asks its /readyz at --http-listen when set, else reads --health-file",
        base.get_name()
    );
    // `augment_args` makes the settings struct's doc comment the command's
    // about; the service's own is what `--help` should say.
    let keep =
        |text: Option<&StyledStr>| text.cloned().map_or(Resettable::Reset, Resettable::Value);
    let (about, long_about) = (keep(base.get_about()), keep(base.get_long_about()));
    let mut command = S::augment_args(base.arg(config))
        .about(about)
        .long_about(long_about);
    if keys.iter().any(|key| key == HEALTH_FILE) {
        command = command.arg(
            Arg::new(CHECK_HEALTH)
                .long("check-health")
                .action(ArgAction::SetTrue)
                .help(health),
        );
    }
    command.mut_args(|arg| {
        let id = arg.get_id().as_str();
        if !keys.iter().any(|key| key == id) {
            return arg;
        }
        let arg = if SERVICE_SCOPED.contains(&id) {
            let env = format!("{prefix}{}", id.to_ascii_uppercase());
            arg.env(env)
        } else {
            arg
        };
        with_key(arg)
    })
}

/// Appends "[setting: KEY]" to the help, so that `--help` tells the file key.
fn with_key(arg: Arg) -> Arg {
    let key = format!("[setting: {}]", arg.get_id());
    let help = match arg.get_help() {
        Some(help) => format!("{help} {key}"),
        None => key.clone(),
    };
    let long = arg.get_long_help().map(|long| format!("{long} {key}"));
    let arg = arg.help(help);
    match long {
        Some(long) => arg.long_help(long),
        None => arg,
    }
}

/// The arguments `S` declares, alone and built (flags get their implied
/// defaults only when built).
pub fn declared<S: Args>() -> Command {
    let mut command = S::augment_args(
        Command::new("settings")
            .disable_help_flag(true)
            .disable_version_flag(true),
    );
    command.build();
    command
}

/// `S` as declared: each field's default, nothing read from a file or the
/// environment. What `Default` of a settings struct returns.
///
/// # Panics
/// When a declared default does not fit its field; every settings struct
/// has a test that loads its defaults.
pub fn defaults<S: Args + DeserializeOwned>() -> S {
    match read_layers(None, None) {
        Ok(settings) => settings,
        Err(err) => panic!("{err}"),
    }
}

/// A parsed command line: the settings given as flags or environment
/// variables, and the arguments that are not settings.
#[derive(Clone)]
pub struct Cli {
    matches: ArgMatches,
}

impl fmt::Debug for Cli {
    // The values may be passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cli { .. }")
    }
}

impl Cli {
    /// Parses the process's arguments; on a bad one clap prints what is
    /// wrong, naming the flag, and exits with code 2.
    pub fn parse(command: Command) -> Cli {
        Cli {
            matches: command.get_matches(),
        }
    }

    /// Parses `args`, the first being the program's name.
    pub fn try_parse_from<I, T>(command: Command, args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        command
            .try_get_matches_from(args)
            .map(|matches| Cli { matches })
    }

    /// Whether the flag `id` (such as `check_health`) was given.
    pub fn flag(&self, id: &str) -> bool {
        matches!(self.matches.try_get_one::<bool>(id), Ok(Some(true)))
    }

    /// The path `id` given as flag or environment variable; the config file
    /// is not read for it.
    pub fn path(&self, id: &str) -> Option<&Path> {
        match self.matches.try_get_one::<PathBuf>(id) {
            Ok(path) => path.map(PathBuf::as_path),
            Err(_) => None,
        }
    }

    /// The settings `S` from every layer, not validated.
    pub fn read<S: Args + DeserializeOwned>(&self) -> Result<S, SettingsError> {
        read_layers(Some(&self.matches), self.path(CONFIG))
    }
}

/// Lays the declared defaults, the file, then what `given` holds from the
/// environment or the command line, and deserializes `S` from the result.
fn read_layers<S: Args + DeserializeOwned>(
    given: Option<&ArgMatches>,
    file: Option<&Path>,
) -> Result<S, SettingsError> {
    let fail = |source: ConfigError| match file {
        Some(path) => SettingsError::File(ConfigFileError {
            path: path.to_owned(),
            source: Box::new(source),
        }),
        None => SettingsError::Declared(Box::new(source)),
    };
    let declared = declared::<S>();
    let mut builder = Config::builder();
    for arg in declared.get_arguments() {
        let defaults = arg.get_default_values();
        if !defaults.is_empty() {
            let mut values = utf8(arg, defaults.iter().map(AsRef::as_ref))?;
            if let Some(delimiter) = arg.get_value_delimiter() {
                // clap splits a default such as "kafka,stdout" only when parsing.
                values = values
                    .iter()
                    .flat_map(|value| value.split(delimiter).map(str::to_owned))
                    .collect();
            }
            builder = builder
                .set_default(arg.get_id().as_str(), one_or_list(arg, values))
                .map_err(|e| SettingsError::Declared(Box::new(e)))?;
        }
    }
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    if let Some(matches) = given {
        builder = overrides(builder, &declared, matches).map_err(|err| match err {
            Layer::Config(source) => fail(source),
            Layer::Settings(err) => err,
        })?;
    }
    let config = builder.build().map_err(fail)?;
    match group(&declared) {
        Some(group) => config.get(&group),
        None => config.try_deserialize(),
    }
    .map_err(fail)
}

/// Why a layer could not be laid.
enum Layer {
    Config(ConfigError),
    Settings(SettingsError),
}

/// Every setting given in the environment or on the command line, over the
/// lower layers in `builder`.
///
/// A setting of several values replaces a list from the lower layers but
/// adds to a table (`-X` to `[kafka.properties]`): the table then comes as
/// the first item of a list, and the field's type merges the items.
fn overrides(
    mut builder: ConfigBuilder<DefaultState>,
    declared: &Command,
    matches: &ArgMatches,
) -> Result<ConfigBuilder<DefaultState>, Layer> {
    let mut lower: Option<Config> = None;
    for arg in declared.get_arguments() {
        let id = arg.get_id().as_str();
        if !matches!(
            matches.value_source(id),
            Some(ValueSource::EnvVariable | ValueSource::CommandLine)
        ) {
            continue;
        }
        let raw = matches.get_raw(id).into_iter().flatten();
        let values = utf8(arg, raw).map_err(Layer::Settings)?;
        let mut value = one_or_list(arg, values);
        if is_list(arg) {
            let lower = match &mut lower {
                Some(lower) => lower,
                None => lower.insert(builder.build_cloned().map_err(Layer::Config)?),
            };
            if let Ok(
                table @ Value {
                    kind: config::ValueKind::Table(_),
                    ..
                },
            ) = lower.get::<Value>(id)
            {
                if let config::ValueKind::Array(items) = &mut value.kind {
                    items.insert(0, table);
                }
            }
        }
        builder = builder.set_override(id, value).map_err(Layer::Config)?;
    }
    Ok(builder)
}

/// The values as strings, which `config` turns into numbers, booleans and
/// durations as the field needs.
fn utf8<'a>(
    arg: &Arg,
    values: impl IntoIterator<Item = &'a OsStr>,
) -> Result<Vec<String>, SettingsError> {
    values
        .into_iter()
        .map(|value| {
            value
                .to_str()
                .map(str::to_owned)
                .ok_or_else(|| SettingsError::NotUtf8 {
                    setting: arg.get_id().to_string(),
                })
        })
        .collect()
}

/// Whether `arg` holds several values (a list, or entries of a table).
fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
}

fn one_or_list(arg: &Arg, mut values: Vec<String>) -> Value {
    if is_list(arg) {
        Value::from(values)
    } else {
        Value::from(values.pop().unwrap_or_default())
    }
}

/// The table the settings of `declared` live in (`kafka` for `kafka.brokers`
/// and `kafka.topic`), or `None` for the top of the file.
fn group(declared: &Command) -> Option<String> {
    let mut common: Option<Vec<&str>> = None;
    for arg in declared.get_arguments() {
        let mut path: Vec<&str> = arg.get_id().as_str().split('.').collect();
        let _ = path.pop();
        common = Some(match common {
            None => path,
            Some(common) => common
                .iter()
                .zip(&path)
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    common
        .filter(|path| !path.is_empty())
        .map(|path| path.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings of every kind the services use, in a group and at the top.
    #[derive(Debug, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    struct Top {
        /// A number
        #[arg(
            long,
            env = "SITEWATCH_TEST_COUNT",
            value_name = "N",
            default_value = "3"
        )]
        count: usize,
        /// Names
        #[arg(
            long,
            value_name = "NAME",
            value_delimiter = ',',
            default_value = "a,b"
        )]
        names: Vec<String>,
        /// A flag whose default is true
        #[arg(long = "no-watch", action = ArgAction::SetFalse)]
        watch: bool,
        /// A file
        #[arg(long, value_name = "FILE")]
        health_file: Option<PathBuf>,
        #[command(flatten)]
        log: LogSettings,
    }

    fn read_top(args: &[&str]) -> Result<Top, SettingsError> {
        let command = command::<Top>(Command::new("top"), "SITEWATCH_TEST_CONFIG");
        let cli = Cli::try_parse_from(command, std::iter::once("top").chain(args.iter().copied()))
            .expect("flags parse");
        cli.read()
    }

    #[test]
    fn defaults_come_from_the_declaration() {
        let log = LogSettings::default();
        assert_eq!((log.format, log.level.as_str()), (LogFormat::Text, "info"));
        let top: Top = defaults();
        assert_eq!(top.count, 3);
        assert_eq!(top.names, ["a", "b"]);
        assert!(top.watch, "a SetFalse flag defaults to true");
        assert_eq!(top.health_file, None);
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("top.toml");
        std::fs::write(
            &file,
            "count = 7\nnames = [\"x\"]\nwatch = false\n[log]\nlevel = \"debug\"\n",
        )
        .expect("write");
        let config = file.to_string_lossy().into_owned();
        let top = read_top(&["-c", &config]).expect("file");
        assert_eq!(
            (top.count, top.names.as_slice()),
            (7, &["x".to_owned()][..])
        );
        assert!(!top.watch);
        assert_eq!(
            (top.log.level.as_str(), top.log.format),
            ("debug", LogFormat::Text)
        );

        let top = read_top(&[
            "-c",
            &config,
            "--count",
            "9",
            "--names",
            "y,z",
            "--log-format",
            "json",
        ])
        .expect("flags");
        assert_eq!(top.count, 9);
        assert_eq!(
            top.names,
            ["y", "z"],
            "a list from a flag replaces the file's"
        );
        assert_eq!(
            (top.log.level.as_str(), top.log.format),
            ("debug", LogFormat::Json)
        );
        assert!(!read_top(&["--no-watch"]).expect("flag").watch);
    }

    #[test]
    fn help_tells_the_key_the_default_and_the_variable() {
        let mut top = command::<Top>(Command::new("top"), "SITEWATCH_TEST_CONFIG");
        let help = top.render_help().to_string();
        assert!(help.contains("[setting: count]"), "{help}");
        assert!(help.contains("[setting: log.level]"), "{help}");
        assert!(help.contains("[default: 3]"), "{help}");
        assert!(help.contains("SITEWATCH_TEST_COUNT"), "{help}");
        assert!(
            help.contains("--check-health"),
            "a health file brings the check: {help}"
        );
        assert!(!help.contains("[setting: config]"), "{help}");
        let about = Command::new("top").about("What top does");
        let help = command::<Top>(about, "SITEWATCH_TEST_CONFIG").render_long_help();
        assert!(help.to_string().starts_with("What top does"), "{help}");
    }

    #[test]
    fn a_bad_file_names_the_file_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("top.toml");
        std::fs::write(&file, "count = \"many\"\n").expect("write");
        let config = file.to_string_lossy().into_owned();
        let err = read_top(&["--config", &config]).expect_err("not a number");
        let text = err.to_string();
        assert!(
            text.contains("top.toml") && text.contains("count"),
            "{text}"
        );
    }

    #[test]
    fn the_group_is_the_common_table() {
        assert_eq!(group(&declared::<LogSettings>()).as_deref(), Some("log"));
        assert_eq!(group(&declared::<Top>()), None);
    }
}

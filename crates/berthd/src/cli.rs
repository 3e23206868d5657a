//! berthd's command line: six flags and one subcommand, parsed by hand. A daemon's argument parser
//! runs once, and every page of code it links stays mapped for the daemon's life.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::LogFormat;

pub(crate) const HELP: &str = "\
Berth container supervisor daemon

Usage: berthd [OPTIONS] [COMMAND]

Commands:
  config default  Print the default configuration, with comments
  config dump     Print the configuration the daemon would run with (file + flags), validated
  help            Print this message

Options:
  -c, --config <CONFIG>          Configuration file (default: /etc/berth/config.toml if it exists,
                                 else built-in defaults) [env: BERTH_CONFIG=]
      --root <ROOT>              Persistent data directory (overrides `root`)
      --state <STATE>            Runtime state directory (overrides `state`)
  -a, --address <ADDRESS>        gRPC unix socket path (overrides `grpc.address`)
  -l, --log-level <LOG_LEVEL>    Log level or per-module levels (overrides `log.level`)
      --log-format <LOG_FORMAT>  Log format (overrides `log.format`) [possible values: text, json]
  -h, --help                     Print help
  -V, --version                  Print version
";

#[derive(Debug, Default, PartialEq)]
pub(crate) struct Cli {
    pub(crate) config: Option<PathBuf>,
    pub(crate) root: Option<PathBuf>,
    pub(crate) state: Option<PathBuf>,
    pub(crate) address: Option<PathBuf>,
    pub(crate) log_level: Option<String>,
    pub(crate) log_format: Option<LogFormat>,
    pub(crate) command: Option<ConfigAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigAction {
    Default,
    Dump,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Parsed {
    Run(Cli),
    Help,
    Version,
}

/// Parses the arguments after the program name; `env_config` is `$BERTH_CONFIG`, used when
/// `--config` is not given. Errors are one line naming the argument.
pub(crate) fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_config: Option<OsString>,
) -> Result<Parsed, String> {
    let mut cli = Cli::default();
    let mut words = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(s) = arg.to_str() else {
            // Only values may be non-UTF-8 (paths); they are taken below, never seen here.
            return Err(format!("unexpected argument {arg:?}"));
        };
        if s == "--" || !s.starts_with('-') || s == "-" {
            words.push(s.to_owned());
            continue;
        }
        let (name, inline) = match s.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(OsString::from(v))),
            _ if !s.starts_with("--") => match s.char_indices().nth(2) {
                // `-ldebug` and `-l=debug`, as clap reads them; the flag is one character,
                // which need not be one byte.
                Some((at, _)) => {
                    let v = &s[at..];
                    (
                        &s[..at],
                        Some(OsString::from(v.strip_prefix('=').unwrap_or(v))),
                    )
                }
                None => (s, None),
            },
            _ => (s, None),
        };
        let mut value = |flag: &str| -> Result<OsString, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("a value is required for '{flag}'"))
        };
        match name {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "-c" | "--config" => cli.config = Some(value("--config")?.into()),
            "--root" => cli.root = Some(value("--root")?.into()),
            "--state" => cli.state = Some(value("--state")?.into()),
            "-a" | "--address" => cli.address = Some(value("--address")?.into()),
            "-l" | "--log-level" => {
                let v = value("--log-level")?;
                let v = v
                    .into_string()
                    .map_err(|v| format!("invalid value {v:?} for '--log-level': not UTF-8"))?;
                cli.log_level = Some(v);
            }
            "--log-format" => {
                let v = value("--log-format")?;
                cli.log_format = Some(match v.to_str() {
                    Some("text") => LogFormat::Text,
                    Some("json") => LogFormat::Json,
                    _ => {
                        return Err(format!(
                            "invalid value {v:?} for '--log-format': possible values: text, json"
                        ));
                    }
                });
            }
            other => return Err(format!("unexpected argument '{other}'")),
        }
    }
    match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => {}
        ["help", ..] => return Ok(Parsed::Help),
        ["config", "default"] => cli.command = Some(ConfigAction::Default),
        ["config", "dump"] => cli.command = Some(ConfigAction::Dump),
        ["config"] => return Err("'config' needs a subcommand: default or dump".into()),
        ["config", other, ..] => {
            return Err(format!(
                "unrecognized subcommand 'config {other}' (default or dump)"
            ));
        }
        [other, ..] => return Err(format!("unexpected argument '{other}'")),
    }
    if cli.config.is_none() {
        cli.config = env_config.filter(|c| !c.is_empty()).map(PathBuf::from);
    }
    Ok(Parsed::Run(cli))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(args.iter().map(OsString::from), None)
    }

    #[test]
    fn flags_in_every_spelling() {
        let Parsed::Run(c) = p(&[
            "--root",
            "/r",
            "--state=/s",
            "-a",
            "/a.sock",
            "-ldebug",
            "--log-format",
            "json",
            "-c=/c.toml",
        ])
        .unwrap() else {
            panic!("not a run");
        };
        assert_eq!(c.root, Some("/r".into()));
        assert_eq!(c.state, Some("/s".into()));
        assert_eq!(c.address, Some("/a.sock".into()));
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert_eq!(c.log_format, Some(LogFormat::Json));
        assert_eq!(c.config, Some("/c.toml".into()));
        assert_eq!(p(&[]).unwrap(), Parsed::Run(Cli::default()));
    }

    #[test]
    fn subcommands_help_version_and_env() {
        let Parsed::Run(c) = p(&["config", "default"]).unwrap() else {
            panic!()
        };
        assert_eq!(c.command, Some(ConfigAction::Default));
        let Parsed::Run(c) = p(&["--root", "/r", "config", "dump"]).unwrap() else {
            panic!()
        };
        assert_eq!(c.command, Some(ConfigAction::Dump));
        assert_eq!(p(&["--root", "/r", "--help"]).unwrap(), Parsed::Help);
        assert_eq!(p(&["help"]).unwrap(), Parsed::Help);
        assert_eq!(p(&["-V"]).unwrap(), Parsed::Version);
        let env = Some(OsString::from("/env.toml"));
        let Parsed::Run(c) = parse(Vec::<OsString>::new(), env.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(c.config, Some("/env.toml".into()));
        let args = ["--config", "/flag.toml"].map(OsString::from);
        let Parsed::Run(c) = parse(args, env).unwrap() else {
            panic!()
        };
        assert_eq!(c.config, Some("/flag.toml".into()));
    }

    #[test]
    fn bad_arguments_name_the_argument() {
        for (args, needle) in [
            (&["--rot", "/r"][..], "'--rot'"),
            (&["--root"][..], "value is required for '--root'"),
            (&["--log-format", "xml"][..], "\"xml\" for '--log-format'"),
            (&["config"][..], "needs a subcommand"),
            (&["config", "show"][..], "'config show'"),
            (&["serve"][..], "'serve'"),
            (&["-x"][..], "'-x'"),
            (&["-éx"][..], "'-é'"),
        ] {
            let e = p(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}

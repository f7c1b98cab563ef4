//! Admin policies by application type: a TOML file (`tiervisor run --policy FILE
//! --app-type NAME`) that says, per kind of application, a VM's priority in a RAM pool,
//! its paging advisor, and the probability thresholds that place its pages in tiers
//! (docs/policy.md). A `[defaults]` table applies to every type; `[app.NAME]` tables
//! override it field by field. Every error names the line and the field, as tier
//! files' do.
//!
//! ```toml
//! [defaults]
//! priority = 1
//! advisor = "gru"
//! thresholds = { ram = 0.5, nvme = 0.2, ssd = 0.05, hdd = 0.01 }
//!
//! [app.database]
//! priority = 4
//! thresholds = { ram = 0.4, nvme = 0.05, ssd = 0.01, hdd = 0.001 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::config::{field_at, line_of};
use crate::policy::TierThresholds;

/// Highest priority a policy (or `--priority`) may give.
pub const MAX_PRIORITY: u32 = 1000;

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AdminPolicyError {
    #[error("cannot read policy file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
    #[error("{file}: no application type {name:?}; the file has: {known}")]
    UnknownApp {
        file: String,
        name: String,
        known: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    defaults: Option<RawApp>,
    #[serde(default)]
    app: BTreeMap<String, Spanned<RawApp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    priority: Option<Spanned<i64>>,
    advisor: Option<Spanned<String>>,
    thresholds: Option<Spanned<RawThresholds>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThresholds {
    ram: f32,
    nvme: f32,
    ssd: f32,
    hdd: f32,
}

/// What a policy says of one application type (fields it leaves out: `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppPolicy {
    pub priority: Option<u32>,
    pub advisor: Option<String>,
    pub thresholds: Option<TierThresholds>,
}

impl AppPolicy {
    /// `self` where it says something, else `base`.
    fn over(&self, base: &AppPolicy) -> AppPolicy {
        AppPolicy {
            priority: self.priority.or(base.priority),
            advisor: self.advisor.clone().or_else(|| base.advisor.clone()),
            thresholds: self.thresholds.or(base.thresholds),
        }
    }
}

/// A checked policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminPolicy {
    file: String,
    defaults: AppPolicy,
    apps: BTreeMap<String, AppPolicy>,
}

impl AdminPolicy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, AdminPolicyError> {
        let source = std::fs::read_to_string(path).map_err(|e| AdminPolicyError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&path.display().to_string(), &source)
    }

    /// Checks policy file text; `file` names it in errors.
    pub fn parse(file: &str, source: &str) -> Result<Self, AdminPolicyError> {
        let err = |span: std::ops::Range<usize>, field: String, message: String| {
            AdminPolicyError::Invalid {
                file: file.to_string(),
                line: line_of(source, span.start),
                field,
                message,
            }
        };
        let raw: RawFile = toml::from_str(source).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let line = line_of(source, span.start);
            err(span, field_at(source, line), e.message().replace('\n', " "))
        })?;
        let check = |table: &str, app: RawApp| -> Result<AppPolicy, AdminPolicyError> {
            let priority = match app.priority {
                Some(p) => {
                    let value = *p.get_ref();
                    if !(1..=MAX_PRIORITY as i64).contains(&value) {
                        return Err(err(
                            p.span(),
                            format!("{table}.priority"),
                            format!("must be 1-{MAX_PRIORITY}, got {value}"),
                        ));
                    }
                    Some(value as u32)
                }
                None => None,
            };
            let advisor = match app.advisor {
                Some(a) if a.get_ref().trim().is_empty() => {
                    return Err(err(
                        a.span(),
                        format!("{table}.advisor"),
                        "must name an advisor".into(),
                    ))
                }
                Some(a) => Some(a.into_inner()),
                None => None,
            };
            let thresholds = match app.thresholds {
                Some(t) => {
                    let span = t.span();
                    let r = t.into_inner();
                    let th = TierThresholds {
                        ram: r.ram,
                        nvme: r.nvme,
                        ssd: r.ssd,
                        hdd: r.hdd,
                    };
                    if !th.is_valid() {
                        return Err(err(
                            span,
                            format!("{table}.thresholds"),
                            format!(
                                "each in [0, 1] and ram >= nvme >= ssd >= hdd, got ram = {}, nvme = {}, ssd = {}, hdd = {}",
                                r.ram, r.nvme, r.ssd, r.hdd
                            ),
                        ));
                    }
                    Some(th)
                }
                None => None,
            };
            Ok(AppPolicy {
                priority,
                advisor,
                thresholds,
            })
        };
        let defaults = match raw.defaults {
            Some(d) => check("defaults", d)?,
            None => AppPolicy::default(),
        };
        let mut apps = BTreeMap::new();
        for (name, app) in raw.app {
            let table = format!("app.{name}");
            apps.insert(name, check(&table, app.into_inner())?);
        }
        Ok(Self {
            file: file.to_string(),
            defaults,
            apps,
        })
    }

    /// The policy of application type `name`: its table over `[defaults]`.
    pub fn for_app(&self, name: &str) -> Result<AppPolicy, AdminPolicyError> {
        match self.apps.get(name) {
            Some(app) => Ok(app.over(&self.defaults)),
            None => Err(AdminPolicyError::UnknownApp {
                file: self.file.clone(),
                name: name.to_string(),
                known: if self.apps.is_empty() {
                    "none".into()
                } else {
                    self.apps.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            }),
        }
    }

    /// The `[defaults]` table alone (no `--app-type`).
    pub fn defaults(&self) -> &AppPolicy {
        &self.defaults
    }

    /// The application types the file names.
    pub fn app_types(&self) -> impl Iterator<Item = &str> {
        self.apps.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[defaults]
priority = 1
advisor = "gru"
thresholds = { ram = 0.5, nvme = 0.2, ssd = 0.05, hdd = 0.01 }

[app.database]
priority = 4
thresholds = { ram = 0.4, nvme = 0.05, ssd = 0.01, hdd = 0.001 }

[app.batch]
advisor = "stride"
"#;

    #[test]
    fn an_app_type_overrides_the_defaults_field_by_field() {
        let p = AdminPolicy::parse("p.toml", FILE).unwrap();
        let db = p.for_app("database").unwrap();
        assert_eq!(db.priority, Some(4));
        assert_eq!(db.advisor.as_deref(), Some("gru"));
        assert_eq!(db.thresholds.unwrap().nvme, 0.05);
        let batch = p.for_app("batch").unwrap();
        assert_eq!(batch.priority, Some(1));
        assert_eq!(batch.advisor.as_deref(), Some("stride"));
        assert_eq!(batch.thresholds, Some(TierThresholds::default()));
        assert_eq!(p.app_types().collect::<Vec<_>>(), ["batch", "database"]);
        let e = p.for_app("web").unwrap_err().to_string();
        assert_eq!(
            e,
            "p.toml: no application type \"web\"; the file has: batch, database"
        );
    }

    fn error(text: &str) -> String {
        AdminPolicy::parse("p.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        assert_eq!(
            error("[app.db]\npriority = 0\n"),
            "p.toml:2: app.db.priority: must be 1-1000, got 0"
        );
        assert!(error(
            "[defaults]\nthresholds = { ram = 0.1, nvme = 0.2, ssd = 0.05, hdd = 0.01 }\n"
        )
        .starts_with("p.toml:2: defaults.thresholds: each in [0, 1] and ram >= nvme"),);
        assert!(error("[app.db]\nprio = 2\n").starts_with("p.toml:2: app.db.prio: unknown field"));
        assert!(error("[app.db]\nthresholds = { ram = 0.5 }\n")
            .starts_with("p.toml:2: app.db.thresholds: missing field"));
        assert_eq!(
            error("[app.db]\nadvisor = \" \"\n"),
            "p.toml:2: app.db.advisor: must name an advisor"
        );
    }

    #[test]
    fn the_shipped_policy_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/policies/default.toml");
        let p = AdminPolicy::load(&path).unwrap();
        assert!(p.app_types().count() >= 3);
        for app in p.app_types() {
            let a = p.for_app(app).unwrap();
            assert!(a.priority.is_some() && a.advisor.is_some() && a.thresholds.is_some());
        }
    }
}

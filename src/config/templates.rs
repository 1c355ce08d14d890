//! `[templates]`: the folder of partials every connector's templates may use.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Validator};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplates {
    /// Partials folder; default `templates/partials` beside the config file, when it exists.
    partials: Option<String>,
}

impl Validator<'_> {
    pub(super) fn partials_dir(&self, raw: RawTemplates) -> Result<Option<PathBuf>, ConfigError> {
        match raw.partials {
            Some(dir) => {
                let resolved = self.resolve("templates.partials", &dir)?;
                if !resolved.is_dir() {
                    return Err(self.invalid(
                        "templates.partials",
                        format!("{} is not a folder", resolved.display()),
                    ));
                }
                Ok(Some(resolved))
            }
            None => Ok(Some(self.relative_to_config("templates/partials")).filter(|d| d.is_dir())),
        }
    }
}
